"""The Kafka binder's consumer lag gauge, ``spring.cloud.stream.binder.kafka.offset``, computed off the loop.

As Spring's ``KafkaBinderMetrics``: a gauge per consumer group and input topic, the records not yet consumed
(each partition's end offset minus the group's committed one, or minus its beginning offset when the group
committed none, summed over the topic's partitions), computed on a thread of its own with a consumer of its
own (never the loop's) about 1 s after start and then every ``offsetLagMetricsInterval``; with
``defaultOffsetLagMetricsEnabled`` (the default) also whenever the gauge is scraped. Spring's scrape waits up
to 5 s for that; here at most half a second, since the actuator answers the health probes on the same thread:
past it (or while a computation started that long ago is still waiting for a broker) the scrape shows the last
value. A broker that does not answer leaves the last value. ``management.metrics.enable`` turns the gauge off.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric

from .arguments import ConfigError, Properties, Property
from .bindings import BINDER, InputBinding
from .metrics import meter_enabled

log = logging.getLogger(__name__)

METER = "spring.cloud.stream.binder.kafka.offset"
NAME = "spring_cloud_stream_binder_kafka_offset"  # as Micrometer's Prometheus registry names it
HELP = "Unconsumed messages for a particular group and topic"
ON_SCRAPE = Property(f"{BINDER}.metrics.defaultOffsetLagMetricsEnabled", bool, True,
                     "true: the lag gauge `spring_cloud_stream_binder_kafka_offset` is computed when scraped (the "
                     "scrape waits at most 0.5 s, else shows the last value) and every `offsetLagMetricsInterval`; "
                     "false: only every `offsetLagMetricsInterval`.")
INTERVAL = Property(f"{BINDER}.metrics.offsetLagMetricsInterval", str, "60s",
                    "How often the lag gauge is computed in the background, the first time about 1 s after start: "
                    "a duration (`60s`, `2m`, `PT1M`; a bare number is milliseconds), in whole seconds, at least 1s.")
PROPERTIES = (ON_SCRAPE, INTERVAL)
FIRST_DELAY = 1.0  # s after the start: the first computation
SCRAPE_WAIT = 0.5  # s a scrape waits for a computation (Spring's 5 s would hold the probes up as long)
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIMPLE = re.compile(r"^([+-]?[0-9]{1,19})([a-zA-Z]{0,2})$")
_ISO = re.compile(r"^([+-]?)P(?:([-+]?[0-9]{1,19})D)?(?:T(?:([-+]?[0-9]{1,19})H)?(?:([-+]?[0-9]{1,19})M)?"
                  r"(?:([-+]?[0-9]{1,19})(?:[.,]([0-9]{0,9}))?S)?)?$", re.IGNORECASE)
MAX_SECONDS = 2**63 - 1  # a Java Duration's seconds are a long
LONGEST_WAIT = 3600.0  # s the thread waits at a time (a huge interval: computed on scrape only, in effect)


class Offsets(Protocol):
    """A client's view of a group's offsets, on a consumer of its own; raises the client's errors."""

    def partitions(self, topic: str) -> list[int]: ...

    def watermarks(self, topic: str, partitions: Sequence[int]) -> dict[int, tuple[int, int]]:
        """(beginning, end) offset of each partition."""

    def committed(self, topic: str, partitions: Sequence[int]) -> dict[int, int | None]:
        """The group's committed offset of each partition; None where it committed none."""

    def close(self) -> None: ...


def duration_seconds(text: str, name: str) -> float:
    """A Spring Boot Duration (``60s``, ``500ms``, ``PT1M``; a bare number is milliseconds) in seconds; one past
    a Java Duration's range is a configuration error, as in Spring."""
    value = text.strip()
    total: float | None = None
    if simple := _SIMPLE.match(value):
        unit = simple[2].lower() or "ms"
        if unit in _UNITS:
            total = int(simple[1]) * _UNITS[unit]
    elif (iso := _ISO.match(value)) and value[-1:].upper() != "T" and len(value.lstrip("+-")) > 1:
        sign, days, hours, minutes, seconds, fraction = iso.groups()
        total = sum(int(part or 0) * unit for part, unit in ((days, 86400), (hours, 3600), (minutes, 60), (seconds, 1)))
        if fraction:
            total += (-1 if (seconds or "").startswith("-") else 1) * int(fraction) / 10 ** len(fraction)
        total = -total if sign == "-" else total
    if total is not None and abs(total) <= MAX_SECONDS:
        return total
    raise ConfigError(f"Invalid value {value[:100]!r} for property '{name}': expected a duration such as 60s, "
                      "500ms or PT1M")


def interval(properties: Properties) -> int:
    """``offsetLagMetricsInterval`` in whole seconds, as Spring schedules it (below 1 s it cannot start)."""
    seconds = int(duration_seconds(properties.get(INTERVAL), INTERVAL.name))
    if seconds < 1:
        raise ConfigError(f"Property '{INTERVAL.name}' must be at least 1s: the lag is computed every whole second")
    return seconds


def total_lag(offsets: Offsets, topic: str) -> int:
    """The records of ``topic`` the group has not consumed, as Spring counts them."""
    partitions = offsets.partitions(topic)
    if not partitions:
        return 0
    committed = offsets.committed(topic, partitions)
    watermarks = offsets.watermarks(topic, partitions)
    return sum(end - (begin if committed.get(p) is None else committed[p]) for p, (begin, end) in watermarks.items())


class OffsetLag:
    """The gauge of one input binding's group and topics, and the thread that computes it."""

    def __init__(self, group: str, topics: Sequence[str], opener: Callable[[], Offsets], every: float,
                 on_scrape: bool) -> None:
        self.group, self.topics, self.every, self.on_scrape = group, tuple(dict.fromkeys(topics)), every, on_scrape
        self.values = dict.fromkeys(self.topics, 0)
        self._open = opener
        self._cond = threading.Condition()
        self._stopping = False
        self._wanted = False  # a scrape asked for a computation
        self._since: float | None = None  # when the computation under way started
        self._computed = 0  # computations done
        self._thread = threading.Thread(target=self._run, name="kafka-offset-lag", daemon=True)

    def start(self, registry: Any) -> None:
        registry.register(self)
        self._thread.start()

    def stop(self, seconds: float = 0.5) -> None:
        """Ends the thread: it stops waiting at once; a request to a broker that does not answer is not waited for
        beyond ``seconds`` (the thread is a daemon: it never keeps the process alive)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(seconds)

    # -- the gauge ------------------------------------------------------------------------------
    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(NAME, HELP, labels=["group", "topic"])

    def collect(self) -> Iterator[Metric]:
        if self.on_scrape:
            self.refresh()
        family = GaugeMetricFamily(NAME, HELP, labels=["group", "topic"])
        for topic in self.topics:
            family.add_metric([self.group, topic], self.values[topic])
        yield family

    def refresh(self) -> None:
        """A computation now, waited for at most ``SCRAPE_WAIT`` s from its start (one under way is joined);
        when it takes longer, the gauge keeps its last values."""
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                return
            if self._since is None:
                self._wanted = True
                self._cond.notify_all()
                started = time.monotonic()
            else:
                started = self._since
            target = self._computed + 1
            self._cond.wait_for(lambda: self._computed >= target or self._stopping,
                                max(0.0, started + SCRAPE_WAIT - time.monotonic()))

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        offsets: Offsets | None = None
        due = time.monotonic() + FIRST_DELAY
        try:
            while True:
                with self._cond:
                    while not (self._stopping or self._wanted) and (left := due - time.monotonic()) > 0:
                        self._cond.wait(min(left, LONGEST_WAIT))
                    if self._stopping:
                        return
                    self._wanted, self._since = False, time.monotonic()
                offsets = self._compute(offsets)
                with self._cond:
                    self._since = None
                    self._computed += 1
                    self._cond.notify_all()
                due = time.monotonic() + self.every
        finally:
            if offsets is not None:
                try:
                    offsets.close()
                except Exception:  # closing at exit: nothing left to do about it
                    log.debug("Closing the lag consumer failed", exc_info=True)

    def _compute(self, offsets: Offsets | None) -> Offsets | None:
        """Each topic's lag into ``values``; a topic the broker does not answer for keeps its last value."""
        try:
            if offsets is None:
                offsets = self._open()
        except Exception:  # no broker yet: tried again next time
            log.debug("Cannot create the consumer for the lag of group '%s'", self.group, exc_info=True)
            return None
        for topic in self.topics:
            if self._stopping:
                break
            try:
                self.values[topic] = total_lag(offsets, topic)
            except Exception:  # as Spring: the last value stays
                log.debug("Cannot generate metric for topic: %s", topic, exc_info=True)
        return offsets


def prepare(properties: Properties, client: Any, source: InputBinding | None) -> OffsetLag | None:
    """The lag gauge of a Kafka binder's input binding (None without one, or on another binder)."""
    opener = getattr(client, "offsets", None)
    if source is None or opener is None or not meter_enabled(properties, METER):
        return None
    return OffsetLag(source.group, source.destinations, lambda: opener(source.group), interval(properties),
                     properties.get(ON_SCRAPE))
