"""Every stream app shape on the broker: sources and sinks as users write them, config files, SCDF's metrics."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Kafka
from devkit.apps import App
from devkit.prometheus import Prometheus
from devkit.waiting import wait_for
from util.partitions import java_string_hash, select_partition

TEXT = [("contentType", b"text/plain")]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_source_sends_what_its_function_returns_and_stops_cleanly(
        start_stream_app: Callable[..., App], kafka: Kafka, names: Callable[[str], str]) -> None:
    sink = names("out")
    app = start_stream_app("source", None, {"output": sink}, "--count=30", "--fail-at=7",
                           "--spring.integration.poller.fixed-delay=5")
    records = kafka.read(sink, 29)
    assert [r.value for r in records] == [str(n).encode() for n in range(1, 31) if n != 7]
    assert dict(records[0].headers)["contentType"] == b'"text/plain"'  # JSON, as Spring writes headers
    assert "The source function next_number failed: RuntimeError: failing once at 7" in app.log
    assert app.json("/actuator/health")["status"] == "UP"
    assert app.json("/actuator/info")["bindings"] == {
        "output": {"destination": sink, "partitionKey": None, "partitionCount": 1}}
    assert app.metric("spring_integration_receive_total", type="source", name="next_number", result="success") == 29
    assert app.metric("spring_integration_send_seconds_count", name="output", result="success") == 29
    assert app.stop() == 0
    assert "Stopped cleanly" in app.log


def test_a_source_partitions_its_output_as_a_processor_does(
        start_stream_app: Callable[..., App], kafka: Kafka, names: Callable[[str], str]) -> None:
    sink = kafka.create(names("out"), partitions=3)
    start_stream_app("source", None, {"output": sink}, "--count=20", "--spring.integration.poller.fixed-delay=1",
                     "--spring.cloud.stream.bindings.output.producer.partitionKeyExpression=payload",
                     "--spring.cloud.stream.bindings.output.producer.partitionCount=3")
    records = kafka.read(sink, 20)
    assert sorted(int(r.value) for r in records) == list(range(1, 21))
    assert all(r.partition == select_partition(java_string_hash(r.value.decode()), 3) for r in records)


@pytest.mark.parametrize("value", ["-1", "x"])
@pytest.mark.one_client
def test_a_source_with_a_bad_poller_property_names_it(
        start_stream_app: Callable[..., App], names: Callable[[str], str], value: str) -> None:
    app = start_stream_app("source", None, {"output": names("out")}, f"--spring.integration.poller.fixed-delay={value}")
    assert app.process.wait(30) == 1
    assert "property 'spring.integration.poller.fixed-delay'" in app.log


def test_a_sink_commits_after_its_function_returned_and_dead_letters_what_keeps_failing(
        start_stream_app: Callable[..., App], kafka: Kafka, names: Callable[[str], str], tmp_path: Path) -> None:
    source, group, out = kafka.create(names("in")), names("g"), tmp_path / "sink.txt"
    options = (f"--sink.file={out}", "--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true",
               "--spring.cloud.stream.bindings.input.consumer.maxAttempts=2",
               "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval=10")
    app = start_stream_app("sink", source, {}, *options, group=group)
    app.wait_for_log("Consuming")
    kafka.produce(source, [b"a", b"poison", b"b"], headers=TEXT)
    wait_for(lambda: lines(out) == ["a", "b"], 60, "the sink to write a and b")
    dead = kafka.read(f"error.{source}.{group}", 1)
    assert dead[0].value == b"poison"
    assert dict(dead[0].headers)["x-exception-message"] == b"poison cannot be written"
    assert "producing to nothing (a sink)" in app.log
    assert app.metric("spring_integration_send_seconds_count", name="input", result="failure",
                      exception="ValueError") == 2
    assert app.metric("spring_integration_send_seconds_count", name="errorChannel") == 1
    assert app.stop() == 0
    assert kafka.committed(group) == {0: 3}
    again = start_stream_app("sink", source, {}, *options, group=group)  # resumes after the committed offsets
    again.wait_for_log("Consuming")
    kafka.produce(source, [b"c"], headers=TEXT)
    wait_for(lambda: lines(out)[-1:] == ["c"], 60, "the restarted sink to write c")
    assert lines(out) == ["a", "b", "c"]
    assert again.stop() == 0


def test_a_sink_killed_mid_stream_loses_nothing(
        start_stream_app: Callable[..., App], kafka: Kafka, names: Callable[[str], str], tmp_path: Path) -> None:
    source, group, out = kafka.create(names("in"), partitions=2), names("g"), tmp_path / "sink.txt"
    values = [f"record {i:05d}" for i in range(4000)]
    kafka.produce(source, [v.encode() for v in values[:3000]], headers=TEXT)
    app = start_stream_app("sink", source, {}, f"--sink.file={out}", group=group)
    wait_for(lambda: len(lines(out)) >= 300, 60, "the sink to be part way through")
    app.stop(signal.SIGKILL)
    # The first sink may have written all it was given before the kill landed: the restarted one gets more,
    # and is stopped only once it consumes (a SIGTERM before its handler is installed ends it as -15).
    kafka.produce(source, [v.encode() for v in values[3000:]], headers=TEXT)
    again = start_stream_app("sink", source, {}, f"--sink.file={out}", group=group)
    again.wait_for_log("Consuming")
    wait_for(lambda: set(lines(out)) == set(values), 90, "every record written after the restart")
    assert len(lines(out)) - len(values) <= 1000  # what was written but not yet committed came again
    assert again.stop() == 0


@pytest.mark.one_client
def test_a_processor_reads_application_properties_and_yaml_from_its_working_directory(
        start_stream_app: Callable[..., App], kafka: Kafka, names: Callable[[str], str], tmp_path: Path) -> None:
    source, sink = kafka.create(names("in")), names("out")
    (tmp_path / "config").mkdir()
    (tmp_path / "application.yml").write_text(f"spring:\n  cloud:\n    stream:\n      bindings:\n        output:\n"
                                              f"          destination: {sink}\n")
    (tmp_path / "config" / "application.properties").write_text("reversestring=false\nserver.port=1\n")
    (tmp_path / "config" / "application-prod.properties").write_text("reversestring=true\n")
    app = start_stream_app("processor", source, {}, cwd=tmp_path,  # --server.port=0 on the command line wins
                           env={"SPRING_PROFILES_ACTIVE": "prod"})
    app.wait_for_log("Consuming")
    kafka.produce(source, [b"abc"], headers=TEXT)
    assert [r.value for r in kafka.read(sink, 1)] == [b"cba"]  # the prod profile's file above the plain one
    assert app.json("/actuator/info")["config"] == {"files": [
        "application.yml", "config/application.properties", "config/application-prod.properties"],
        "profiles": ["prod"]}
    assert 'The following 1 profile is active: "prod"' in app.log
    assert ("Properties read from application.yml, config/application.properties, "
            "config/application-prod.properties") in app.log
    assert app.stop() == 0


@pytest.mark.one_client
def test_a_malformed_config_file_stops_the_app_naming_file_and_line(
        start_stream_app: Callable[..., App], names: Callable[[str], str], tmp_path: Path) -> None:
    (tmp_path / "application.properties").write_text("a=1\nb=\\uZZZZ\n")
    app = start_stream_app("processor", names("in"), {"output": names("out")}, cwd=tmp_path)
    assert app.process.wait(30) == 1
    assert "Configuration error: application.properties:2: malformed \\uxxxx escape" in app.log


# -- SCDF's monitoring: Data Flow's Grafana stream dashboard, queried on a real Prometheus ------------------------
STREAM = "ticktock"
# The queries of scdf-streams.json (spring-cloud-dataflow, src/grafana/prometheus/docker/grafana/dashboards),
# $stream_name set; the JVM and Tomcat panels have no Python counterpart.
DASHBOARD = {
    "applications": 'count(count by (application_guid) (spring_integration_send_seconds_count))',
    "streams": 'count(count by (stream_name) (spring_integration_send_seconds_count))',
    "source rate": f'avg(rate(spring_integration_send_seconds_count{{result="success", application_type="source", '
                   f'stream_name=~"{STREAM}"}}[60s])) by (stream_name,result)',
    "sink rate": f'avg(rate(spring_integration_send_seconds_count{{result="success", application_type="sink", '
                 f'stream_name=~"{STREAM}"}}[60s])) by (stream_name,result)',
    "failure rate": f'avg(rate(spring_integration_send_seconds_count{{result="failure", stream_name=~"{STREAM}"}}'
                    f'[60s])) by (stream_name,result)',
    "errors": f'sum(spring_integration_send_seconds_count{{type="channel",name="errorChannel",'
              f'stream_name=~"{STREAM}"}})',
    "error rate": f'sum(rate(spring_integration_send_seconds_count{{type="channel",name="errorChannel",'
                  f'stream_name=~"{STREAM}"}}[60s])) by (stream_name)',
    "latency": f'sum(spring_integration_send_seconds_sum{{result="success",stream_name=~"{STREAM}"}}/'
               f'spring_integration_send_seconds_count{{result="success",stream_name=~"{STREAM}"}}) '
               f'by (stream_name,result)',
    "receive rate": f'rate(spring_integration_receive_total{{result="success", stream_name=~"{STREAM}"}}[60s])',
    "cpu": f'sum(process_cpu_usage{{stream_name=~"{STREAM}"}}) by (stream_name)',
    "system cpu": f'count(system_cpu_usage{{stream_name=~"{STREAM}"}}) by (stream_name)',
    "open files": f'sum(process_files_open_files{{stream_name=~"{STREAM}"}}) by (stream_name)',
}


@pytest.fixture
def prometheus_for() -> Iterator[Callable[[list[int]], Prometheus]]:
    servers: list[Prometheus] = []

    def start(ports: list[int]) -> Prometheus:
        servers.append(Prometheus([f"127.0.0.1:{port}" for port in ports]).start())
        return servers[-1]

    yield start
    for server in servers:
        server.remove()


@pytest.mark.one_client
def test_data_flows_stream_dashboard_finds_every_shape_through_prometheus(
        start_stream_app: Callable[..., App], kafka: Kafka, names: Callable[[str], str], tmp_path: Path,
        prometheus_for: Callable[[list[int]], Prometheus]) -> None:
    """source | processor | sink, and a router on the source's output, deployed as Data Flow deploys them."""
    numbers, reversed_, group = names("numbers"), names("reversed"), STREAM

    def deployed(label: str, kind: str) -> tuple[str, ...]:
        tags = {"stream.name": "${spring.cloud.dataflow.stream.name:unknown}",
                "application.name": "${vcap.application.application_name:${spring.cloud.dataflow.stream.app.label"
                                    ":unknown}}",
                "application.type": "${spring.cloud.dataflow.stream.app.type:unknown}",
                "instance.index": "${vcap.application.instance_index:${spring.cloud.stream.instanceIndex:0}}",
                "application.guid": "${spring.cloud.application.guid:unknown}"}
        return (f"--spring.cloud.dataflow.stream.name={STREAM}", f"--spring.cloud.dataflow.stream.app.label={label}",
                f"--spring.cloud.dataflow.stream.app.type={kind}",
                *(f"--management.metrics.tags.{key}={value}" for key, value in tags.items()))

    def guid(label: str) -> dict[str, str]:
        return {"SPRING_CLOUD_APPLICATION_GUID": f"uid-{label}"}

    apps = {
        "time": start_stream_app("source", None, {"output": numbers}, "--count=1000000", *deployed("time", "source"),
                                 "--spring.integration.poller.fixed-delay=20", env=guid("time")),
        "reverse": start_stream_app("processor", numbers, {"output": reversed_}, "--reversestring=true",
                                    *deployed("reverse", "processor"), group=group, env=guid("reverse")),
        "log": start_stream_app("sink", reversed_, {}, f"--sink.file={tmp_path / 'sink.txt'}",
                                *deployed("log", "sink"), group=group, env=guid("log")),
        "route": start_stream_app("router", numbers, {"even": names("even"), "odd": names("odd")},
                                  *deployed("route", "app"), group=f"{group}-router", env=guid("route")),
    }
    for app in apps.values():
        app.wait_for_log("Consuming|Polling")
    kafka.produce(reversed_, [b"poison"], headers=TEXT)  # the sink's function fails on it: the error channel
    prometheus = prometheus_for([app.port for app in apps.values()])
    wait_for(lambda: lines(tmp_path / "sink.txt")[2:], 60, "records through the stream")

    def answered() -> bool:
        return all(prometheus.query(query) for query in DASHBOARD.values()) and \
            float(prometheus.query(DASHBOARD["applications"])[0]["value"][1]) == 4

    wait_for(answered, 60, "every dashboard query to return a series", interval=0.5)
    assert float(prometheus.query(DASHBOARD["streams"])[0]["value"][1]) == 1
    assert float(prometheus.query(DASHBOARD["errors"])[0]["value"][1]) >= 1
    assert float(prometheus.query(DASHBOARD["source rate"])[0]["value"][1]) > 0
    assert float(prometheus.query(DASHBOARD["sink rate"])[0]["value"][1]) > 0
    for label, kind in (("time", "source"), ("reverse", "processor"), ("log", "sink"), ("route", "app")):
        series = prometheus.query(f'process_cpu_usage{{application_name="{label}"}}')
        assert len(series) == 1
        labels, value = series[0]["metric"], float(series[0]["value"][1])
        assert 0 <= value <= 1
        assert {k: labels[k] for k in ("stream_name", "application_type", "application_guid", "instance_index")} \
            == {"stream_name": STREAM, "application_type": kind, "application_guid": f"uid-{label}",
                "instance_index": "0"}
        assert labels["application"] == f"{STREAM}-{label}-{kind}"
        sends = prometheus.query(f'spring_integration_send_seconds_count{{application_name="{label}"}}')
        channels = {s["metric"]["name"] for s in sends}
        assert channels >= {"source": {"output"}, "processor": {"input", "output"}, "sink": {"input", "errorChannel"},
                            "app": {"input", "even", "odd"}}[kind]
    for app in apps.values():
        assert app.stop() == 0
