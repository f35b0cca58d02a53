"""The Kafka binder's lag gauge ``spring_cloud_stream_binder_kafka_offset``, as Spring's KafkaBinderMetrics has it.

Tansu answers a partition's end offset as its last batch's base offset + 1: exact only when that batch holds one
record. The tests write their backlogs a record a batch (Kafka's end offsets are exact whatever the batches).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from conftest import Kafka
from devkit.apps import App
from devkit.kafka_proxy import KafkaProxy
from devkit.prometheus import Prometheus
from devkit.waiting import wait_for
from util import kafka_lag
from util.arguments import ConfigError, Properties

GAUGE = "spring_cloud_stream_binder_kafka_offset"
EVERY_SECOND = "--spring.cloud.stream.kafka.binder.metrics.offsetLagMetricsInterval=1s"
PERIODIC_ONLY = "--spring.cloud.stream.kafka.binder.metrics.defaultOffsetLagMetricsEnabled=false"
LIST_OFFSETS = 2  # the Kafka API key of end and beginning offsets


@pytest.fixture
def prometheus_for() -> Iterator[Callable[[list[int]], Prometheus]]:
    servers: list[Prometheus] = []

    def start(ports: list[int]) -> Prometheus:
        servers.append(Prometheus([f"127.0.0.1:{port}" for port in ports]).start())
        return servers[-1]

    yield start
    for server in servers:
        server.remove()


def gauges(prometheus: Prometheus, group: str, topic: str) -> list[float]:
    """The gauge of each scraped instance, through Prometheus's query API."""
    found = prometheus.query(f'{GAUGE}{{group="{group}",topic="{topic}"}}')
    return sorted(float(sample["value"][1]) for sample in found)


def commit_start(kafka: Kafka, topic: str, group: str, partitions: int) -> None:
    """Offset 0 committed for ``group`` on each partition, before any member joins."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in parts})
    finally:
        consumer.close(autocommit=False)


def one_by_one(kafka: Kafka, topic: str, count: int, partitions: int) -> None:
    """``count`` records over ``partitions``, each sent on its own (Tansu's end offsets are exact so)."""
    for n in range(count):
        kafka.produce(topic, [f"r{n}".encode()], partition=n % partitions)


def test_two_instances_each_report_their_groups_lag_as_it_rises_and_falls_to_zero(
        start_stream_app: Callable[..., App], kafka: Kafka, names: Callable[[str], str], tmp_path: Path,
        prometheus_for: Callable[[list[int]], Prometheus]) -> None:
    """A backlog the group has not consumed (no commit yet: counted from each partition's beginning) shows on both
    instances, the one computing on scrape (the default) and the one computing every second; both fall to 0."""
    topic, group, gate = kafka.create(names("in"), partitions=4), names("g"), tmp_path / "gate"
    one_by_one(kafka, topic, 40, 4)
    apps = [start_stream_app("gated-sink", topic, {}, f"--sink.file={tmp_path / f'out-{n}'}", f"--sink.gate={gate}",
                             *extra, group=group) for n, extra in enumerate([(), (EVERY_SECOND, PERIODIC_ONLY)])]
    prometheus = prometheus_for([app.port for app in apps])
    backlog = wait_for(lambda: (found := gauges(prometheus, group, topic)) and len(found) == 2 and min(found) > 0
                       and found, 60, "both instances to report the backlog")
    assert backlog == [40.0, 40.0]
    for app in apps:
        sample = next(s for s in app.samples(GAUGE))
        assert sample.labels["group"] == group
        assert sample.labels["topic"] == topic
        assert sample.labels["application_type"] == "sink"  # the common tags, as on every meter
    gate.touch()
    wait_for(kafka.caught_up(group, {p: 10 for p in range(4)}), 90, "the group to consume the backlog")
    wait_for(lambda: gauges(prometheus, group, topic) == [0.0, 0.0], 30, "both gauges back to 0")
    assert "# TYPE spring_cloud_stream_binder_kafka_offset gauge" in apps[0].get("/actuator/prometheus")[1]
    assert all(app.stop() == 0 for app in apps)


def test_a_broker_that_does_not_answer_leaves_the_last_value_and_slows_neither_the_loop_nor_the_stop(
        proxied: tuple[Kafka, KafkaProxy], start_stream_app: Callable[..., App], names: Callable[[str], str],
        tmp_path: Path) -> None:
    kafka, proxy = proxied
    topic, group, gate = kafka.create(names("in"), partitions=2), names("g"), tmp_path / "gate"
    commit_start(kafka, topic, group, 2)  # the loop starts from committed offsets: it needs no ListOffsets of its own
    app = start_stream_app("gated-sink", topic, {}, f"--sink.file={tmp_path / 'out'}", f"--sink.gate={gate}",
                           EVERY_SECOND, group=group, env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    app.wait_for_log("Partitions assigned: .*-")
    one_by_one(kafka, topic, 6, 2)
    wait_for(lambda: app.metric(GAUGE, topic=topic) == 6, 60, "the lag of the backlog")
    proxy.mute(LIST_OFFSETS)  # the end offsets: the loop, with its positions, asks for none
    last = app.metric(GAUGE, topic=topic)
    gate.touch()  # the loop consumes and commits all: its own requests are answered
    wait_for(kafka.caught_up(group, {0: 3, 1: 3}), 60, "the loop to consume the backlog")
    started = time.monotonic()
    assert app.metric(GAUGE, topic=topic) == last  # the scrape waits at most 0.5 s for an answer, then shows the last
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    wait_for(lambda: app.get("/actuator/health")[0] == 200, 5, "health UP")  # probes are not held up
    assert app.metric(GAUGE, topic=topic) == last  # a computation hanging for over 0.5 s is not waited for again
    assert time.monotonic() - started < 1
    started = time.monotonic()
    assert app.stop() == 0  # SIGTERM while the lag's consumer waits for the broker
    assert time.monotonic() - started < 10
    assert "Stopped cleanly" in app.log


def test_a_rabbit_binder_and_a_source_have_no_lag_gauge() -> None:
    class Rabbit:  # the rabbit binder's client reads no offsets
        pass

    properties = Properties([], {})
    assert kafka_lag.prepare(properties, Rabbit(), None) is None
    assert kafka_lag.prepare(properties, object(), object()) is None  # type: ignore[arg-type]


class _Offsets:
    def __init__(self, watermarks: dict[int, tuple[int, int]], committed: dict[int, int | None]) -> None:
        self._watermarks, self._committed = watermarks, committed

    def partitions(self, topic: str) -> list[int]:
        return sorted(self._watermarks)

    def watermarks(self, topic: str, partitions: Sequence[int]) -> dict[int, tuple[int, int]]:
        return self._watermarks

    def committed(self, topic: str, partitions: Sequence[int]) -> dict[int, int | None]:
        return self._committed

    def close(self) -> None:
        pass


def test_the_lag_counts_a_partition_without_a_committed_offset_from_its_beginning_as_spring_does() -> None:
    offsets = _Offsets({0: (0, 10), 1: (5, 12), 2: (3, 3)}, {0: 4, 1: None, 2: None})
    assert kafka_lag.total_lag(offsets, "t") == (10 - 4) + (12 - 5) + 0


@pytest.mark.parametrize(("text", "seconds"), [
    ("60s", 60), ("1m", 60), ("2H", 7200), ("1d", 86400), ("1500ms", 1.5), ("90000", 90), ("PT1M", 60),
    ("pt1.5s", 1.5), ("P1DT2H", 93600), ("PT-1M30S", -30), ("-PT1M", -60), (" 5s ", 5), ("0s", 0)])
def test_the_interval_is_a_spring_boot_duration(text: str, seconds: float) -> None:
    assert kafka_lag.duration_seconds(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1x", "1.5s", "PT", "P", "s", "1 s", "PT1H2D"])
def test_a_malformed_duration_is_a_configuration_error_naming_the_property(text: str) -> None:
    with pytest.raises(ConfigError, match="'x': expected a duration"):
        kafka_lag.duration_seconds(text, "x")


@pytest.mark.parametrize(("given", "seconds"), [(None, 60), ("2500ms", 2), ("PT5M", 300)])
def test_the_interval_is_counted_in_whole_seconds_as_spring_schedules_it(given: str | None, seconds: int) -> None:
    argv = [] if given is None else [f"--{kafka_lag.INTERVAL.name}={given}"]
    assert kafka_lag.interval(Properties(argv, {})) == seconds


@pytest.mark.parametrize("given", ["500ms", "0s", "-5s"])
def test_an_interval_under_a_second_is_refused(given: str) -> None:
    properties = Properties([f"--spring.cloud.stream.kafka.binder.metrics.offset-lag-metrics-interval={given}"], {})
    with pytest.raises(ConfigError, match="at least 1s"):
        kafka_lag.interval(properties)


def test_the_properties_take_relaxed_names_and_environment_variables() -> None:
    properties = Properties([], {"SPRING_CLOUD_STREAM_KAFKA_BINDER_METRICS_DEFAULTOFFSETLAGMETRICSENABLED": "false",
                                 "SPRING_CLOUD_STREAM_KAFKA_BINDER_METRICS_OFFSETLAGMETRICSINTERVAL": "PT2S"})
    assert properties.get(kafka_lag.ON_SCRAPE) is False
    assert kafka_lag.interval(properties) == 2


class _Client:
    def offsets(self, group: str) -> None:
        raise AssertionError("not opened before the start")


@pytest.mark.parametrize(("argv", "on"), [
    ([], True), (["--management.metrics.enable.spring.cloud.stream.binder.kafka.offset=false"], False),
    (["--management.metrics.enable.spring.cloud=false"], False), (["--management.metrics.enable.all=false"], False),
    (["--management.metrics.enable.all=false", "--management.metrics.enable.spring.cloud.stream=true"], True),
    (["--management.metrics.enable.spring=false", "--management.metrics.enable.spring.cloud.stream.binder=on"], True),
    (["--management.metrics.enable.spring.cloud.stream.binder.kafka.offsets=false"], True)])
def test_micrometers_enable_properties_turn_the_gauge_off(argv: list[str], on: bool) -> None:
    source = SimpleNamespace(group="g", destinations=("t",))
    lag = kafka_lag.prepare(Properties(argv, {}), _Client(), source)  # type: ignore[arg-type]
    assert (lag is not None) == on
    if lag is not None:
        assert (lag.group, lag.topics, lag.every, lag.on_scrape) == ("g", ("t",), 60, True)


@pytest.mark.one_client
def test_an_interval_under_a_second_stops_the_app_at_start_naming_the_property(
        start_stream_app: Callable[..., App], names: Callable[[str], str], tmp_path: Path) -> None:
    app = start_stream_app("sink", names("in"), {}, f"--sink.file={tmp_path / 'out'}",
                           "--spring.cloud.stream.kafka.binder.metrics.offsetLagMetricsInterval=500ms")
    assert app.wait() == 1
    assert ("Configuration error: Property 'spring.cloud.stream.kafka.binder.metrics.offsetLagMetricsInterval' "
            "must be at least 1s") in app.log


def test_a_huge_interval_leaves_the_gauge_computed_on_scrape_without_a_traceback(
        start_stream_app: Callable[..., App], kafka: Kafka, names: Callable[[str], str], tmp_path: Path) -> None:
    """Spring takes any Duration it can hold (a huge one: the gauge is computed on scrape only)."""
    topic, group, gate = kafka.create(names("in"), partitions=1), names("g"), tmp_path / "gate"
    app = start_stream_app("gated-sink", topic, {}, f"--sink.file={tmp_path / 'out'}", f"--sink.gate={gate}",
                           "--spring.cloud.stream.kafka.binder.metrics.offsetLagMetricsInterval=1000000d", group=group)
    app.wait_for_log("Partitions assigned: .*-")
    for n in range(5):
        kafka.produce(topic, [f"r{n}".encode()])  # one a batch: Tansu's end offsets are exact
    wait_for(lambda: app.metric(GAUGE, topic=topic) == 5, 20, "the scrape to compute the backlog")
    assert "Traceback" not in app.log
    gate.touch()
    assert app.stop() == 0


def test_a_destination_named_twice_gives_one_lag_series(start_stream_app: Callable[..., App], kafka: Kafka,
                                                        names: Callable[[str], str], tmp_path: Path,
                                                        client: str) -> None:
    """``destination=t,t`` (kafka-python subscribes to it; librdkafka refuses the subscription, a separate matter):
    Spring keys the gauges by topic (``getTopicsInUse()`` is a map), one series per group and topic."""
    if client == "librdkafka":
        pytest.skip("librdkafka refuses a subscription naming a topic twice (before the gauge exists)")
    topic, group = kafka.create(names("in"), partitions=1), names("g")
    app = start_stream_app("sink", f"{topic}, {topic}", {}, f"--sink.file={tmp_path / 'out'}", group=group)
    app.wait_for_log("Partitions assigned: .*-")
    series = [sample.labels for sample in app.samples(GAUGE)]
    assert len(series) == 1, series
    assert app.stop() == 0


@pytest.mark.one_client
@pytest.mark.parametrize("digits", [20, 5000])
def test_an_interval_past_a_java_duration_is_a_one_line_configuration_error(
        start_stream_app: Callable[..., App], names: Callable[[str], str], tmp_path: Path, digits: int) -> None:
    """Spring binds the interval to a java.time.Duration: a number past a long fails the binding at start, naming
    the property."""
    app = start_stream_app("sink", names("in"), {}, f"--sink.file={tmp_path / 'out'}",
                           f"--spring.cloud.stream.kafka.binder.metrics.offsetLagMetricsInterval={'9' * digits}s")
    assert app.wait(15) == 1
    assert "Traceback" not in app.log
    assert "Configuration error: " in app.log
    assert "offsetLagMetricsInterval" in app.log
