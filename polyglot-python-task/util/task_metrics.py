"""The task's metrics as Spring Cloud Task 2.4 records them, for Data Flow's task dashboard, pushed to a Pushgateway.

``spring.cloud.task.active``, a long task timer from the start, and ``spring.cloud.task``, a timer recorded at the
end, with Spring Cloud Task's tags (``task.name``, ``task.execution.id``, ...) and ``management.metrics.tags.*``
(Data Flow's ``application`` and ``service`` the defaults), rendered as Micrometer's Prometheus registry names
them (``spring_cloud_task_seconds_count``, ``spring_cloud_task_active_seconds_active_count``, ...). With
``management.prometheus.metrics.export.pushgateway.enabled`` (Boot 2: ``management.metrics.export.prometheus.
pushgateway.*``) they are pushed as Boot pushes them: at the push rate, and once when the run's end is recorded.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import Metric

from .arguments import ConfigError, Properties, Property
from .pushgateway import OPERATIONS, Gateway, Pusher

PREFIX = "management.prometheus.metrics.export.pushgateway"  # Boot 3
BOOT2_PREFIX = "management.metrics.export.prometheus.pushgateway"


def _pushgateway(key: str, kind: type, default: Any, description: str, **more: Any) -> Property:
    return Property(f"{PREFIX}.{key}", kind, default, description, aliases=(f"{BOOT2_PREFIX}.{key}",), **more)


ENABLED = _pushgateway("enabled", bool, False, "Push the task's metrics to a Prometheus Pushgateway.")
BASE_URL = _pushgateway("base-url", str, "http://localhost:9091",
                        "The Pushgateway's URL (`user:password@` in it is basic auth).")
ADDRESS = Property(f"{PREFIX}.address", str, None, "Boot 3.5's `host:port` of the Pushgateway, read when "
                   "`base-url` is not set.")
SCHEME = Property(f"{PREFIX}.scheme", str, "HTTP", "Boot 3.5's scheme for `address`: HTTP or HTTPS.",
                  choices=("HTTP", "HTTPS"))
JOB = _pushgateway("job", str, None, "Job of the pushed group; default `spring.application.name`, else `spring`.")
PUSH_RATE = _pushgateway("push-rate", str, "1m", "How often the metrics are pushed while the task runs: a "
                         "duration (`30s`, `1m`, `PT1M`; a bare number is milliseconds).")
SHUTDOWN = _pushgateway("shutdown-operation", str, "NONE", "What is done at the end, once the end is recorded: "
                        "POST (or PUSH, Boot 2's name) adds the final metrics, PUT replaces the group with them, "
                        "DELETE removes the group, NONE leaves the last periodic push.", choices=OPERATIONS)
GROUPING_KEY = _pushgateway("grouping-key", dict, None, "The group's labels beside `job`, `<key>=value` "
                            "(`${spring.cloud.task.executionid}` keeps each run's group).")
USERNAME = _pushgateway("username", str, None, "Basic auth user of the Pushgateway.")
PASSWORD = _pushgateway("password", str, None, "Basic auth password of the Pushgateway.", secret=True)
TOKEN = Property(f"{PREFIX}.token", str, None, "Bearer token of the Pushgateway (Boot 3.5; not with a username).",
                 secret=True)
TAGS = Property("management.metrics.tags", dict, None, "Tags on every metric, `<key>=value` (`application.name` is "
                "the label `application_name`); Data Flow's task tags `application` and `service` are the defaults.")
PROPERTIES = (ENABLED, BASE_URL, ADDRESS, SCHEME, JOB, PUSH_RATE, SHUTDOWN, GROUPING_KEY, USERNAME, PASSWORD,
              TOKEN, TAGS)
# Data Flow's common task tags (application-task-common-properties-defaults.yml).
DEFAULT_TAGS = {"application": "${spring.cloud.task.name:unknown}-${spring.cloud.task.executionid:unknown}",
                "service": "task-application"}
_NOT_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_SIMPLE = re.compile(r"([+-]?\d+)([a-zA-Z]{0,2})")
_ISO = re.compile(r"([-+]?)P(?:([-+]?\d+)D)?(?:T(?:([-+]?\d+)H)?(?:([-+]?\d+)M)?(?:([-+]?\d+(?:[.,]\d{0,9})?)S)?)?",
                  re.I)
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def label_name(key: str) -> str:
    """A tag key as Micrometer's PrometheusNamingConvention.tagKey writes it (``task.name``: ``task_name``): a
    name not starting with a letter gets ``m_`` before it (``_team``: ``m__team``, ``__x``, a name Prometheus
    reserves: ``m___x``)."""
    name = _NOT_LABEL.sub("_", key)
    return name if name[:1].isascii() and name[:1].isalpha() else f"m_{name}"


def parse_duration(text: str, name: str) -> float:
    """Seconds of a Spring Boot Duration: ``500ms``, ``30s``, ``1m`` (no unit: ms) or ISO-8601 ``PT1M``."""
    text = text.strip()
    simple = _SIMPLE.fullmatch(text)
    if simple and simple.group(2).lower() in ("", *_UNITS):
        return int(simple.group(1)) * _UNITS[simple.group(2).lower() or "ms"]
    iso = _ISO.fullmatch(text)
    if iso and len(text) > 1 and text[-1:].upper() != "T":
        days, hours, minutes, seconds = (float((part or "0").replace(",", ".")) for part in iso.groups()[1:])
        total = days * 86400 + hours * 3600 + minutes * 60 + seconds
        return -total if iso.group(1) == "-" else total
    raise ConfigError(f"Invalid value '{text[:100]}' for property '{name}': expected a duration such as 30s, 1m, "
                      "500ms or PT1M")


def common_tags(properties: Properties) -> dict[str, str]:
    """``management.metrics.tags.<key>``, Data Flow's task tags below them, resolved, by label name."""
    resolved = {key: properties.resolve(value) for key, value in DEFAULT_TAGS.items()}
    tags = {label_name(key): value for key, value in resolved.items() if value is not None}
    tags.update({label_name(key): value for key, value in properties.subtree(TAGS.name, as_written=True).items()})
    return tags


class TaskMeters:
    """The two meters of one run, collected in Micrometer's Prometheus form (a prometheus_client collector)."""

    def __init__(self, common: dict[str, str]) -> None:
        self.common = common
        self.tags: dict[str, str] = {}
        self.started: float | None = None  # time.monotonic() at the start
        self.duration: float | None = None  # seconds, once the end is recorded
        self.outcome: dict[str, str] = {}  # the timer's own tags: exit code, exception, status

    def start(self, execution_id: int, name: str, parent_id: int | None, external_id: str | None) -> None:
        """As TaskMetrics.onTaskStartup: an absent parent is "null", an absent external id "unknown"."""
        self.tags = {"task_name": name, "task_execution_id": str(execution_id),
                     "task_parent_execution_id": str(parent_id) if parent_id is not None else "null",
                     "task_external_execution_id": external_id if external_id is not None else "unknown"}
        self.started = time.monotonic()

    def end(self, exit_code: int, exception: BaseException | None) -> None:
        """As TaskMetrics.onTaskEnd: the timer recorded, the long task timer stopped."""
        if self.started is None or self.duration is not None:
            return
        self.duration = time.monotonic() - self.started
        failed = exception is not None or exit_code != 0
        self.outcome = {"task_exit_code": str(exit_code),
                        "task_exception": type(exception).__name__ if exception is not None else "none",
                        "task_status": "failure" if failed else "success"}

    def collect(self) -> Iterator[Metric]:
        if self.started is None:
            return
        labels = {**self.common, **self.tags}
        active = self.duration is None
        running = time.monotonic() - self.started if active else 0.0
        yield _single("spring_cloud_task_active_seconds_max", "Long task duration", "gauge", labels, running)
        timer = Metric("spring_cloud_task_active_seconds", "Long task duration", "unknown")
        timer.add_sample("spring_cloud_task_active_seconds_active_count", labels, 1.0 if active else 0.0)
        timer.add_sample("spring_cloud_task_active_seconds_duration_sum", labels, running)
        yield timer
        if self.duration is not None:
            ended = {**labels, **self.outcome}
            timer = Metric("spring_cloud_task_seconds", "Task duration", "summary")
            timer.add_sample("spring_cloud_task_seconds_count", ended, 1.0)
            timer.add_sample("spring_cloud_task_seconds_sum", ended, self.duration)
            yield timer
            yield _single("spring_cloud_task_seconds_max", "Task duration", "gauge", ended, self.duration)


def _single(name: str, documentation: str, kind: str, labels: dict[str, str], value: float) -> Metric:
    metric = Metric(name, documentation, kind)
    metric.add_sample(name, labels, value)
    return metric


class TaskMetrics:
    """What ``run_task`` calls: ``start``, ``watch`` (the body), ``end``, ``close``; pushes when enabled."""

    def __init__(self, meters: TaskMeters, pusher: Pusher | None = None) -> None:
        self.meters, self.pusher = meters, pusher
        self.exception: BaseException | None = None

    @classmethod
    def configure(cls, properties: Properties) -> TaskMetrics:
        """From the properties; ConfigError names a malformed one."""
        meters = TaskMeters(common_tags(properties))
        if not properties.get(ENABLED):
            return cls(meters)
        rate = parse_duration(properties.get(PUSH_RATE), PUSH_RATE.name)
        if rate <= 0:
            raise ConfigError(f"Invalid value for property '{PUSH_RATE.name}': the push rate must be positive")
        if properties.get(TOKEN) and properties.get(USERNAME):
            raise ConfigError(f"The properties '{TOKEN.name}' and '{USERNAME.name}' are mutually exclusive")
        url, source = properties.get(BASE_URL), BASE_URL.name
        if properties.raw(BASE_URL.name, *BASE_URL.aliases) is None and properties.get(ADDRESS):
            url, source = f"{properties.get(SCHEME).lower()}://{properties.get(ADDRESS)}", ADDRESS.name
        job = properties.get(JOB) or properties.raw("spring.application.name") or "spring"
        grouping = {**properties.subtree(f"{BOOT2_PREFIX}.grouping-key", as_written=True),
                    **properties.subtree(GROUPING_KEY.name, as_written=True)}
        try:  # Boot fails at the start on a malformed URL too; the message never shows it (it may hold a password)
            gateway = Gateway.of(url, job, grouping, properties.get(USERNAME), properties.get(PASSWORD),
                                 properties.get(TOKEN))
        except ValueError as error:
            raise ConfigError(f"Invalid value for property '{source}': {error}") from None
        return cls(meters, Pusher(gateway, meters, rate, properties.get(SHUTDOWN)))

    def start(self, execution_id: int, name: str, parent_id: int | None, external_id: str | None) -> None:
        """The run started (its row recorded): the long task timer runs, the periodic pushes begin."""
        self.meters.start(execution_id, name, parent_id, external_id)
        if self.pusher is not None:
            self.pusher.start()

    def watch(self, body: Any) -> Any:
        """``body``, noting the exception that ends it (its class is the ``task.exception`` tag)."""
        @functools.wraps(body)
        def watched(*args: Any, **kwargs: Any) -> Any:
            try:
                return body(*args, **kwargs)
            except SystemExit:  # the body's own exit code is the outcome, not an exception
                raise
            except BaseException as error:
                self.exception = error
                raise
        return watched

    def end(self, exit_code: int) -> None:
        """The body ended with ``exit_code``: the timer is recorded with the outcome's tags."""
        self.meters.end(exit_code, self.exception)

    def close(self) -> None:
        """The end is recorded: the periodic pushes stop, the shutdown operation runs (bounded by its timeout)."""
        if self.pusher is not None:
            self.pusher.close()
