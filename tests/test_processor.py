"""The processor on a real broker, started as SCDF starts it."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Kafka, client_arg
from devkit.apps import App
from devkit.tansu import Tansu
from devkit.waiting import wait_for
from util.partitions import java_string_hash, select_partition

TEXT = [("contentType", b'"text/plain"'), ("spring_json_header_types", b'{"contentType":"java.lang.String"}')]
StartProcessor = Callable[..., App]


def test_named_group_processes_records_produced_before_it_started(
        kafka: Kafka, names: Callable[[str], str], start_processor: StartProcessor) -> None:
    source, sink = kafka.create(names("in")), names("out")
    ends = kafka.produce(source, [b"hello world", "héllo 👋🏽".encode()], headers=TEXT)
    app_json = json.dumps({"spring.cloud.stream.bindings.input.destination": source,  # boot entry point style
                           "spring.cloud.stream.bindings.input.group": names("g"),
                           "spring.cloud.stream.bindings.output.destination": sink, "reversestring": "true"})
    app = start_processor(None, None, group=None, env={"SPRING_APPLICATION_JSON": app_json})
    records = kafka.read(sink, 2)
    assert sorted(r.value.decode() for r in records) == ["dlrow olleh", "👋🏽 olléh"]
    assert dict(records[0].headers)["contentType"] == b'"text/plain"'
    wait_for(kafka.caught_up(names("g"), ends), 30, "offsets committed")
    assert app.stop() == 0


def test_anonymous_consumer_starts_at_latest(
        kafka: Kafka, names: Callable[[str], str], start_processor: StartProcessor) -> None:
    source = kafka.create(names("in"))
    app = start_processor(source, names("out"), group=None)
    app.wait_for_log(r"as group 'anonymous\.[0-9a-f-]+' \(no group set: anonymous\) starting at latest")
    info = app.json("/actuator/info")["bindings"]["input"]
    assert (info["anonymous"], info["startOffset"]) == (True, "latest")
    assert app.stop() == 0


def test_poison_record_goes_to_dlq_with_spring_headers_and_the_rest_flow(
        kafka: Kafka, names: Callable[[str], str], start_processor: StartProcessor) -> None:
    source, sink, group = kafka.create(names("in")), names("out"), names("g")
    kafka.produce(source, [b"abc", b"\xff\xfebad", b"def"], headers=TEXT)
    env = {  # shell entry point style for the error settings
        "SPRING_CLOUD_STREAM_KAFKA_BINDINGS_INPUT_CONSUMER_ENABLEDLQ": "true",
        "SPRING_CLOUD_STREAM_BINDINGS_INPUT_CONSUMER_MAXATTEMPTS": "2",
        "SPRING_CLOUD_STREAM_BINDINGS_INPUT_CONSUMER_BACKOFFINITIALINTERVAL": "50",
    }
    app = start_processor(source, sink, "--reversestring=true", group=group, env=env)
    assert sorted(r.value for r in kafka.read(sink, 2)) == [b"cba", b"fed"]
    [dead] = kafka.read(f"error.{source}.{group}", 1)
    headers = dict(dead.headers)
    assert dead.value == b"\xff\xfebad"
    assert dead.partition == 0
    assert headers["contentType"] == b'"text/plain"'
    assert headers["x-original-topic"] == source.encode()
    assert struct.unpack(">i", headers["x-original-partition"]) == (0,)
    assert struct.unpack(">q", headers["x-original-offset"]) == (1,)
    assert len(headers["x-original-timestamp"]) == 8
    assert headers["x-original-timestamp-type"] == b"CreateTime"
    assert headers["x-exception-fqcn"] == b"builtins.UnicodeDecodeError"
    assert b"utf-8" in headers["x-exception-message"]
    assert b"Traceback" in headers["x-exception-stacktrace"]
    wait_for(kafka.caught_up(group, {0: 3}), 30, "the poison record's offset committed")
    app.wait_for_log(rf"Record {source}-0@1 sent to dead-letter topic")
    assert app.metric("polyglot_records_dead_lettered_total", binding="input") == 1
    assert app.stop() == 0


def test_poison_record_without_dlq_is_logged_and_skipped(
        kafka: Kafka, names: Callable[[str], str], start_processor: StartProcessor) -> None:
    source, sink, group = kafka.create(names("in")), names("out"), names("g")
    kafka.produce(source, [b"\xffx", b"ok"], headers=TEXT)
    app = start_processor(source, sink, "--reverestring=true",
                          "--spring.cloud.stream.bindings.input.consumer.maxAttempts=1", group=group)
    assert [r.value for r in kafka.read(sink, 1)] == [b"ko"]
    wait_for(kafka.caught_up(group, {0: 2}), 30, "both offsets committed")
    assert app.wait_for_log(rf"Record {source}-0@0 skipped after 1 attempt\(s\): UnicodeDecodeError")
    assert app.stop() == 0


def test_partitioned_output_lands_where_java_puts_it(
        kafka: Kafka, names: Callable[[str], str], start_processor: StartProcessor) -> None:
    source, sink = kafka.create(names("in")), names("out")
    words = [f"word {i} ✓" for i in range(40)]
    kafka.produce(source, [w.encode() for w in words], headers=[*TEXT, ("key", b"k")])
    app = start_processor(source, sink, "--reversestring=true",
                          "--spring.cloud.stream.bindings.output.producer.partitionKeyExpression=payload",
                          "--spring.cloud.stream.bindings.output.producer.partitionCount=3")
    out = kafka.read(sink, 40)
    assert len(out) == 40
    for record in out:
        assert record.partition == select_partition(java_string_hash(record.value.decode()), 3)
    assert len({r.partition for r in out}) == 3
    assert app.stop() == 0


def test_partition_by_header(
        kafka: Kafka, names: Callable[[str], str], start_processor: StartProcessor) -> None:
    source, sink = kafka.create(names("in")), names("out")
    kafka.produce(source, [b"a", b"b"], headers=[*TEXT, ("customer", b'"polygenelubricants"')])
    app = start_processor(source, sink,
                          "--spring.cloud.stream.bindings.output.producer.partitionKeyExpression=headers['customer']",
                          "--spring.cloud.stream.bindings.output.producer.partitionCount=5")
    assert {r.partition for r in kafka.read(sink, 2)} == {0}  # hashCode MIN_VALUE selects partition 0
    assert app.stop() == 0


def test_static_assignment_from_instance_index(
        kafka: Kafka, names: Callable[[str], str], start_processor: StartProcessor) -> None:
    source = kafka.create(names("in"), 4)
    static = ("--spring.cloud.stream.kafka.bindings.input.consumer.autoRebalanceEnabled=false",
              "--spring.cloud.stream.instanceCount=2")
    app = start_processor(source, names("out"), *static, "--spring.cloud.stream.instanceIndex=1")
    app.wait_for_log(rf"Static assignment \(instance 1 of 2\): {source}-1, {source}-3\n")
    assert app.stop() == 0


def test_health_follows_the_broker(tmp_path: Path, start_app: Callable[..., App], client: str) -> None:
    own = Tansu(tmp_path / "tansu.log").start()
    try:
        app = start_app("polyglot-python-processor/python_processor.py", [client_arg(client),
            f"--spring.cloud.stream.kafka.binder.brokers={own.bootstrap}",
            "--spring.cloud.stream.bindings.input.destination=h.in", "--spring.cloud.stream.bindings.input.group=h",
            "--spring.cloud.stream.bindings.output.destination=h.out", "--server.port=0",
            "--spring.cloud.stream.kafka.binder.producerProperties.enable.idempotence=false",
            "--spring.cloud.stream.kafka.binder.consumerProperties.session.timeout.ms=6000",
            "--spring.cloud.stream.kafka.binder.consumerProperties.heartbeat.interval.ms=2000"])
        app.wait_for_log("Consuming h.in")
        wait_for(lambda: app.get("/actuator/health")[0] == 200, 30, "health UP")
        own.stop()
        _, body = wait_for(lambda: (r := app.get("/actuator/health"))[0] == 503 and r, 30, "health DOWN")
        assert json.loads(body)["components"]["broker"]["status"] == "DOWN"
        assert app.get("/actuator/health/liveness")[0] == 200  # the loop is alive: no restart needed
        assert app.get("/actuator/health/readiness")[0] == 503
        own.start()
        wait_for(lambda: app.get("/actuator/health")[0] == 200, 30, "health UP again")
        assert app.stop() == 0
    finally:
        own.stop()


@pytest.mark.one_client
def test_actuator_endpoints(kafka: Kafka, names: Callable[[str], str], start_processor: StartProcessor) -> None:
    app = start_processor(kafka.create(names("in")), names("out"), "--reversestring=true",
                          "--spring.cloud.dataflow.stream.name=text-reversal",
                          "--spring.cloud.dataflow.stream.app.label=python-processor")
    app.wait_for_log("Consuming")
    info = app.json("/actuator/info")
    assert info["stream"] == {"name": "text-reversal", "label": "python-processor"}
    assert info["bindings"]["input"]["group"] == names("s")
    assert info["properties"] == {"reversestring": True}
    status, text = app.get("/actuator/prometheus")
    assert status == 200
    assert app.samples("polyglot_records_received_total")[0].labels["binding"] == "input"
    assert "polyglot_batch_processing_seconds_bucket" in text
    assert app.get("/actuator/nope")[0] == 404
    request = urllib.request.Request(f"http://127.0.0.1:{app.port}/actuator/health", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError, match="405"):
        urllib.request.urlopen(request, timeout=5)
    assert app.stop() == 0


def test_config_errors_stop_before_kafka_with_one_line(start_app: Callable[..., App]) -> None:
    dead_broker = ["--spring.cloud.stream.kafka.binder.brokers=127.0.0.1:9", "--server.port=0"]
    cases = {
        "spring.cloud.stream.bindings.output.destination": ["--spring.cloud.stream.bindings.input.destination=a"],
        "reversestring": ["--spring.cloud.stream.bindings.input.destination=a",
                          "--spring.cloud.stream.bindings.output.destination=b", "--reversestring=maybe"],
        "server.port": ["--spring.cloud.stream.bindings.input.destination=a",
                        "--spring.cloud.stream.bindings.output.destination=b", "--server.port=80a"],
    }
    apps = {name: start_app("polyglot-python-processor/python_processor.py", [*dead_broker, *args])
            for name, args in cases.items()}
    for name, app in apps.items():
        assert app.wait(timeout=20) == 1
        lines = app.log.strip().splitlines()
        assert len(lines) == 1, lines
        assert "Configuration error" in lines[0]
        assert f"'{name}'" in lines[0]


def test_an_open_transactions_records_are_read_as_java_reads_them_unless_read_committed(
        kafka: Kafka, names: Callable[[str], str], start_processor: StartProcessor, broker: Tansu) -> None:
    """A transactional producer's records before its commit: read at once by default (read_uncommitted, Java's
    default, on both clients), held back with isolation.level=read_committed until the commit."""
    from confluent_kafka import Producer

    source, plain_sink, committed_sink = kafka.create(names("in")), names("plain"), names("committed")
    kafka.produce(source, [b"before"], headers=TEXT)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": names("tx")})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(source, b"open", headers=TEXT)
    assert producer.flush(30) == 0
    plain = start_processor(source, plain_sink, "--reversestring=true", group=names("plain"))
    held = start_processor(source, committed_sink, "--reversestring=true",
                           "--spring.cloud.stream.kafka.binder.consumerProperties.isolation.level=read_committed",
                           group=names("held"))
    assert [r.value for r in kafka.read(plain_sink, 2)] == [b"erofeb", b"nepo"]
    # read_committed stops at the open transaction: what came before it, then nothing while it stays open
    assert [r.value for r in kafka.read(committed_sink, 1, settle=2.0)] == [b"erofeb"]
    producer.commit_transaction(30)
    assert [r.value for r in kafka.read(committed_sink, 2, settle=1.0)] == [b"erofeb", b"nepo"]
    assert [r.value for r in kafka.read(plain_sink, 2, settle=1.0)] == [b"erofeb", b"nepo"]  # no record of the marker
    assert plain.stop() == 0
    assert held.stop() == 0
