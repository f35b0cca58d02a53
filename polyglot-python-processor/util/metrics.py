"""A stream app's Prometheus metrics: its own counters, the meters Micrometer gives a Spring app, common tags.

Data Flow's dashboards find apps by Micrometer's names (``spring_integration_send_seconds``,
``process_cpu_usage``, ...) and the common tags Data Flow sets (``management.metrics.tags.<key>``,
with placeholders): every sample carries those tags as labels, dots turned into underscores.
"""

from __future__ import annotations

import math
import os
import re
import resource
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from .arguments import Properties, Property

TAGS = Property("management.metrics.tags", dict, None,
                "Tags on every metric, `<key>=value` (`stream.name` is the label `stream_name`); Data Flow's "
                "stream tags are the defaults.")
ENABLE = Property("management.metrics.enable", dict, None,
                  "`<meter name or prefix>=false` turns a meter off, as Micrometer's filter (the longest prefix "
                  "set wins, then `all`); only `spring.cloud.stream.binder.kafka.offset` (the Kafka lag gauge) "
                  "honours it.")
PROPERTIES = (TAGS, ENABLE)
ERROR_CHANNEL = "errorChannel"
# Data Flow's common stream tags (application-stream-common-properties-defaults.yml); <type> is the app's shape.
DEFAULT_TAGS = {
    "stream.name": "${spring.cloud.dataflow.stream.name:unknown}",
    "application.name": "${vcap.application.application_name:${spring.cloud.dataflow.stream.app.label:unknown}}",
    "application.type": "${spring.cloud.dataflow.stream.app.type:<type>}",
    "instance.index": "${vcap.application.instance_index:${spring.cloud.stream.instanceIndex:0}}",
    "application.guid": "${spring.cloud.application.guid:unknown}",
    "application": "${spring.cloud.dataflow.stream.name:unknown}-${spring.cloud.dataflow.stream.app.label:unknown}-"
                   "${spring.cloud.dataflow.stream.app.type:<type>}",
}
_NOT_LABEL = re.compile(r"[^a-zA-Z0-9_]")

prometheus_client.disable_created_metrics()  # Micrometer exposes no *_created series


def label_name(key: str) -> str:
    """A tag key as Micrometer's Prometheus naming convention writes it."""
    name = _NOT_LABEL.sub("_", key)
    return f"m_{name}" if name[:1].isdigit() else name


def common_tags(properties: Properties, app_type: str) -> dict[str, str]:
    """Every ``management.metrics.tags.<key>`` (Data Flow's defaults below them), resolved, by label name."""
    tags: dict[str, str] = {}
    for key, value in DEFAULT_TAGS.items():
        resolved = properties.resolve(value.replace("<type>", app_type))
        if resolved is not None:
            tags[label_name(key)] = resolved
    for key, value in properties.subtree(TAGS.name, as_written=True).items():
        tags[label_name(key)] = value
    return tags


def meter_enabled(properties: Properties, name: str) -> bool:
    """Whether ``management.metrics.enable.<prefix>`` (the longest prefix of the dotted meter ``name`` that is set,
    else ``all``) lets the meter be registered, as Spring Boot's PropertiesMeterFilter does."""
    parts = name.split(".")
    for key in (*(".".join(parts[:n]) for n in range(len(parts), 0, -1)), "all"):
        prop = Property(f"{ENABLE.name}.{key}", bool, True)
        if properties.raw(prop.name) is not None:
            return properties.get(prop)
    return True


class Channels:
    """Micrometer's Spring Integration meters, counted once per batch (or per failure), read at scrape time.

    ``spring_integration_send_seconds``: a timer (count and sum) per channel, result and exception;
    ``spring_integration_receive_total``: a counter per message source (a polled source's function).
    """

    def __init__(self) -> None:
        self.sends: dict[tuple[str, str, str], list[float]] = {}  # (channel, result, exception): [count, seconds]
        self.receives: dict[tuple[str, str, str], list[float]] = {}  # (source, result, exception): [count]

    def send(self, channel: str, count: int, seconds: float, error: BaseException | None = None) -> None:
        key = (channel, "success", "none") if error is None else (channel, "failure", type(error).__name__)
        entry = self.sends.get(key)
        if entry is None:
            entry = self.sends[key] = [0, 0.0]
        entry[0] += count
        entry[1] += seconds

    def receive(self, source: str, count: int, error: BaseException | None = None) -> None:
        key = (source, "success", "none") if error is None else (source, "failure", type(error).__name__)
        entry = self.receives.get(key)
        if entry is None:
            entry = self.receives[key] = [0]
        entry[0] += count

    def collect(self) -> Iterator[Metric]:
        sends = SummaryMetricFamily("spring_integration_send_seconds", "Send processing time",
                                    labels=["type", "name", "result", "exception"])
        for (channel, result, exception), (count, seconds) in dict(self.sends).items():
            sends.add_metric(["channel", channel, result, exception], count, seconds)
        yield sends
        if self.receives:
            receives = CounterMetricFamily("spring_integration_receive", "Messages received",
                                           labels=["type", "name", "result", "exception"])
            for (source, result, exception), (count,) in dict(self.receives).items():
                receives.add_metric(["source", source, result, exception], count)
            yield receives


class Process:
    """Micrometer's process and system meters, with Micrometer's meanings (CPU usage is a fraction of one)."""

    def __init__(self) -> None:
        self.cpus = cpu_count()
        self.started = _start_time()
        self._last = (time.monotonic(), time.process_time(), _system_ticks())
        self._usage = (0.0, 0.0)

    def collect(self) -> Iterator[Metric]:
        process, system = self._cpu_usage()
        yield GaugeMetricFamily("process_cpu_usage", "The \"recent cpu usage\" for the process", process)
        if system is not None:
            yield GaugeMetricFamily("system_cpu_usage", "The \"recent cpu usage\" of the system", system)
        yield GaugeMetricFamily("system_cpu_count", "The number of processors available to the process", self.cpus)
        if hasattr(os, "getloadavg"):
            yield GaugeMetricFamily("system_load_average_1m", "The sum of runnable and waiting processes, averaged "
                                    "over a minute", os.getloadavg()[0])
        try:
            open_files = len(os.listdir("/proc/self/fd"))
        except OSError:
            open_files = None
        if open_files is not None:
            yield GaugeMetricFamily("process_files_open_files", "The open file descriptor count", open_files)
        yield GaugeMetricFamily("process_files_max_files", "The maximum file descriptor count",
                                resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        yield GaugeMetricFamily("process_start_time_seconds", "Start time of the process since unix epoch.",
                                self.started)
        yield GaugeMetricFamily("process_uptime_seconds", "The uptime of the process", time.time() - self.started)

    def _cpu_usage(self) -> tuple[float, float | None]:
        """Since the previous scrape (at least a second ago), as a fraction of the CPUs the process may use."""
        now, cpu, ticks = time.monotonic(), time.process_time(), _system_ticks()
        then, cpu_then, ticks_then = self._last
        if now - then >= 1.0:
            process = min(1.0, (cpu - cpu_then) / ((now - then) * self.cpus))
            system = None
            if ticks is not None and ticks_then is not None and ticks[1] > ticks_then[1]:
                system = (ticks[0] - ticks_then[0]) / (ticks[1] - ticks_then[1])
            self._usage = (process, system)
            self._last = (now, cpu, ticks)
        return self._usage


def cpu_count() -> int:
    """The processors this process may use: its CPU affinity, capped by a cgroup CPU quota (as the JVM counts)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if limit != "max":
            quota = int(limit) / int(period)
    except (OSError, ValueError):
        try:
            limit = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            if limit > 0:
                quota = limit / int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        except (OSError, ValueError, ZeroDivisionError):
            pass
    return max(1, min(count, math.ceil(quota))) if quota else count


def _system_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole system, from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user time
    return total - idle, total


def _start_time() -> float:
    """The process's start (s since the epoch), from /proc; else now."""
    try:
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class Tagged:
    """A registry's metrics with the common tags added to every sample (a meter's own labels win, as in Micrometer)."""

    def __init__(self, registry: CollectorRegistry, tags: dict[str, str]) -> None:
        self.registry, self.tags = registry, tags

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            copy.samples = [sample._replace(labels={**self.tags, **sample.labels}) for sample in metric.samples]
            yield copy


class Metrics:
    """The metrics of one stream app, in its own registry."""

    def __init__(self, tags: dict[str, str] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter("polyglot_records_received", "Records consumed from the input binding.",
                                ["binding"], registry=self.registry).labels("input")
        self.sent = Counter("polyglot_records_sent", "Records produced, per output binding.", ["binding"],
                            registry=self.registry)
        self.failed = Counter("polyglot_records_failed", "Records that failed every attempt.", ["binding"],
                              registry=self.registry).labels("input")
        self.dead_lettered = Counter("polyglot_records_dead_lettered",
                                     "Records the dead-letter topic acknowledged.", ["binding"],
                                     registry=self.registry).labels("input")
        self.batch_seconds = Histogram("polyglot_batch_processing_seconds",
                                       "Time to process, send, flush and commit one polled batch.",
                                       registry=self.registry)
        self.channels = Channels()
        self.registry.register(self.channels)
        self.registry.register(Process())
        self.exposed = Tagged(self.registry, tags or {})

    def exposition(self) -> bytes:
        """``/actuator/prometheus``."""
        return generate_latest(self.exposed)


class BatchSends:
    """A batch's sends per output binding and the time they took (one send in SAMPLE timed): counted into
    the metrics once a batch, since a counter costs more than a send's share of the loop."""

    SAMPLE = 64  # a power of two

    def __init__(self, metrics: Metrics, outputs: Iterable[str]) -> None:
        self.counters = {name: metrics.sent.labels(name) for name in outputs}
        self.channels = metrics.channels
        self.count = dict.fromkeys(self.counters, 0)
        self.seconds = dict.fromkeys(self.counters, 0.0)

    def publish(self) -> None:
        for name, count in self.count.items():
            if count:
                self.counters[name].inc(count)
                self.channels.send(name, count, self.seconds[name])
                self.count[name] = 0
                self.seconds[name] = 0.0
