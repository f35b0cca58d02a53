"""Edge paths of the stream apps that once crashed, looped or lost records, each on a real broker.

Null header values and tombstones, topics with too few partitions, dead-letter copies that are too
large or refused, send errors that are the broker's and not the record's (through a proxy that answers
for Tansu as a broker with ACLs would), and batches longer than ``max.poll.interval.ms``.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer
from kafka import KafkaAdminClient, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import TopicAuthorizationFailedError

from conftest import Figures, Kafka
from devkit.apps import App
from devkit.kafka_proxy import KafkaProxy
from devkit.waiting import wait_for
from util.arguments import Properties
from util.dead_letter import kafka_headers
from util.logs import configure_logging

TEXT = b'"text/plain"'
DLQ = ("--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true",
       "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval=100")
SMALL = 100_000  # max.request.size and fetch.max.bytes of the apps that test size limits
LIMITS = (f"--spring.cloud.stream.kafka.binder.producerProperties.max.request.size={SMALL}",
          f"--spring.cloud.stream.kafka.binder.consumerProperties.fetch.max.bytes={SMALL}")
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]  # key, value, headers


def produce(bootstrap: str, topic: str, records: list[Record], partition: int = 0) -> None:
    """Records kafka-python cannot write (null header values, neither key nor value), with librdkafka."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False, "acks": "all"})
    for key, value, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers, partition=partition)
    assert producer.flush(30) == 0


def health(app: App) -> tuple[int, dict]:
    status, body = app.get("/actuator/health")
    return status, json.loads(body) if status else {}


def delivery_down(app: App) -> str:
    """The delivery component's reason while health is DOWN because of it, else empty."""
    status, body = health(app)
    component = body.get("components", {}).get("delivery", {}) if status == 503 else {}
    return component.get("details", {}).get("error", "")


def log_count(app: App, pattern: str) -> int:
    return len(re.findall(pattern, app.log))


def by_value(records: list[Any]) -> dict[bytes | None, int]:
    counts: dict[bytes | None, int] = {}
    for record in records:
        counts[record.value] = counts.get(record.value, 0) + 1
    return counts


# A null header value as each client writes it: librdkafka as null, kafka-python (which cannot) as empty.
NULL_HEADER = {"librdkafka": None, "kafka-python": b""}
# How each client names a topic authorisation refusal.
REFUSED = {"librdkafka": "TOPIC_AUTHORIZATION_FAILED", "kafka-python": "TopicAuthorizationFailedError"}


# -- 1: records the client refuses for its own reasons --------------------------------------------
def test_null_header_values_and_tombstones_pass_through_the_processor_and_it_keeps_running(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App], client: str) -> None:
    source, sink, group = kafka.create(names("in")), names("out"), names("g")
    produce(kafka.bootstrap, source, [
        (None, b"abc", [("contentType", TEXT), ("nothing", None)]),
        (None, b"\xff\xfe", [("contentType", TEXT), ("nothing", None)]),  # invalid UTF-8: the DLQ
        (b"customer-7", None, [("nothing", None)]),  # a tombstone: deletes customer-7 downstream
        (None, None, []),  # neither key nor value
        (None, b"def", [("contentType", TEXT)]),
    ])
    app = start_processor(source, sink, "--reversestring=true", *DLQ, group=group)
    wait_for(kafka.caught_up(group, {0: 5}), 60, "every record committed")
    out = kafka.read(sink, 4, settle=1.0)
    assert [(r.key, r.value) for r in out] == [(None, b"cba"), (b"customer-7", None), (None, None), (None, b"fed")]
    null = NULL_HEADER[client]
    assert dict(out[0].headers)["nothing"] == null
    [dead] = kafka.read(f"error.{source}.{group}", 1)
    assert (dead.value, dict(dead.headers)["nothing"]) == (b"\xff\xfe", null)
    assert dict(dead.headers)["x-exception-fqcn"] == b"builtins.UnicodeDecodeError"
    assert health(app)[0] == 200
    assert app.stop() == 0


def test_the_router_sends_tombstones_down_the_error_path(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    source, even, odd, group = kafka.create(names("in")), names("even"), names("odd"), names("g")
    produce(kafka.bootstrap, source, [(b"k", None, []), (None, None, []), (None, b"05/17/21 17:56:36", [])])
    app = start_stream_app("router", source, {"even": even, "odd": odd}, *DLQ, group=group)
    wait_for(kafka.caught_up(group, {0: 3}), 60, "every record committed")
    assert [r.value for r in kafka.read(even, 1)] == [b"Even timestamp: 05/17/21 17:56:36"]
    dead = kafka.read(f"error.{source}.{group}", 2, settle=1.0)
    assert [(r.key, r.value) for r in dead] == [(b"k", None), (None, None)]
    assert {dict(r.headers)["x-exception-fqcn"] for r in dead} == {b"util.binder.TombstoneError"}
    assert app.metric("polyglot_records_failed_total", binding="input") == 2
    assert app.stop() == 0


# -- 2: partitions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("grow", [False, True])
def test_partition_count_above_the_topics_stops_the_app_at_start(
        grow: bool, kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App]) -> None:
    source, sink = kafka.create(names("in")), kafka.create(names("out"), 2)
    extra = ["--spring.cloud.stream.kafka.binder.autoAddPartitions=true"] if grow else []
    app = start_processor(source, sink, "--spring.cloud.stream.bindings.output.producer.partitionCount=3",
                          "--spring.cloud.stream.bindings.output.producer.partitionKeyExpression=payload", *extra,
                          group=names("g"))
    assert app.wait(60) == 1
    [line] = [line for line in app.log.splitlines() if "Configuration error" in line]
    if grow:  # the embedded broker has no CreatePartitions: the app tries, then says why it cannot
        assert f"Cannot grow topic '{sink}' from 2 to 3 partitions" in line
    else:
        assert "'spring.cloud.stream.bindings.output.producer.partitionCount' asks for 3 partitions" in line
        assert f"topic '{sink}' has 2" in line
        assert "autoAddPartitions=true" in line


def test_a_fixed_assignment_over_an_input_topic_with_too_few_partitions_stops_the_app_at_start(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App]) -> None:
    source = kafka.create(names("in"))
    app = start_processor(source, names("out"), "--spring.cloud.stream.instanceCount=2",
                          "--spring.cloud.stream.kafka.bindings.input.consumer.autoRebalanceEnabled=false",
                          group=names("g"))
    assert app.wait(60) == 1
    assert f"'spring.cloud.stream.instanceCount' asks for 2 partitions, but topic '{source}' has 1" in app.log


def test_missing_input_topic_gets_instance_count_times_concurrency_partitions(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App]) -> None:
    source = names("in")
    app = start_processor(source, names("out"), "--spring.cloud.stream.instanceCount=2",
                          "--spring.cloud.stream.bindings.input.consumer.concurrency=2", group=names("g"))
    app.wait_for_log(f"Created topic '{source}' with 4 partition")
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        assert len(admin.describe_topics([source])[0]["partitions"]) == 4
    finally:
        admin.close()
    assert app.stop() == 0


# -- 3: dead-letter copies that cannot be sent as they are, or at all ---------------------------------
def test_a_dead_letter_copy_too_large_for_its_stack_trace_has_the_trace_truncated(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App]) -> None:
    source, sink, group = kafka.create(names("in")), names("out"), names("g")
    poison = b"\xff" + b"a" * (SMALL - 1400)  # fits max.request.size with the x-* headers, not with the trace
    kafka.produce(source, [poison, b"after"], headers=[("contentType", TEXT)])
    app = start_processor(source, sink, "--reversestring=true", *DLQ, *LIMITS, group=group)
    [dead] = kafka.read(f"error.{source}.{group}", 1)
    headers = dict(dead.headers)
    assert dead.value == poison
    assert headers["x-exception-fqcn"] == b"builtins.UnicodeDecodeError"  # the record's own failure
    assert headers["x-exception-stacktrace"].startswith(b"[stack trace truncated")
    assert b"UnicodeDecodeError" in headers["x-exception-stacktrace"]
    assert [r.value for r in kafka.read(sink, 1)] == [b"retfa"]
    wait_for(kafka.caught_up(group, {0: 2}), 30, "both records committed")
    assert app.stop() == 0


OUTPUTS = (b"0a", b"1a", b"2a", b"0b", b"1b", b"2b", b"3b", b"4b")  # a0, a1, a2 and b0 to b4 reversed


def test_a_record_that_cannot_be_dead_lettered_holds_only_its_partition(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App]) -> None:
    source, sink, group = kafka.create(names("in"), 2), names("out"), names("g")
    big = b"x" * (SMALL + 50_000)  # over the dead-letter producer's limit even without headers
    one_batch = KafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=False, linger_ms=200,
                              batch_size=1 << 20, max_request_size=1 << 21)
    try:  # one record batch: the app polls the records after the big one together with it
        for value in (b"a0", big, b"a1", b"a2"):
            one_batch.send(source, value, headers=[("contentType", TEXT)], partition=0)
        one_batch.flush(30)
    finally:
        one_batch.close(5)
    kafka.produce(source, [f"b{i}".encode() for i in range(5)], headers=[("contentType", TEXT)], partition=1)
    app = start_processor(source, sink, "--reversestring=true", *DLQ, *LIMITS, group=group)
    wait_for(lambda: f"{source}-0 stalled at offset 1" in delivery_down(app), 60, "health DOWN for partition 0")
    wait_for(lambda: log_count(app, r"could not be sent to dead-letter topic") >= 3, 60, "two retries, backing off")
    assert by_value(kafka.read(sink, 8, settle=1.0)) == {v: 1 for v in OUTPUTS}
    assert kafka.committed(group) == {0: 1, 1: 5}
    assert app.metric("polyglot_records_failed_total", binding="input") == 1
    assert app.process.poll() is None
    assert app.stop() == 0


# -- 3 and 4: refusals that are the broker's, through a proxy that answers as a broker with ACLs -------
TOPIC_AUTHORIZATION_FAILED = TopicAuthorizationFailedError.errno


def test_a_topic_acl_not_yet_applied_rewinds_turns_health_down_and_loses_nothing(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], start_processor: Callable[..., App],
        client: str, figures: Figures) -> None:
    kafka, proxy = proxied
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    proxy.refuse(sink, TOPIC_AUTHORIZATION_FAILED)
    values = [f"record {i:02d}".encode() for i in range(20)]
    kafka.produce(source, values, headers=[("contentType", TEXT)])
    app = start_processor(source, sink, "--reversestring=true", group=group,
                          env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    wait_for(lambda: REFUSED[client] in delivery_down(app), 60, "health DOWN with the reason")
    wait_for(lambda: log_count(app, r"rewinding to offset 0") >= 2, 60, "a rewind, then another after a back-off")
    assert kafka.committed(group) == {}
    assert app.metric("polyglot_records_failed_total", binding="input") == 0
    proxy.allow(sink)  # the ACL arrives
    allowed = time.monotonic()
    wait_for(kafka.caught_up(group, {0: 20}), 60, "everything committed once the ACL is there")
    moved = time.monotonic() - allowed
    assert by_value(kafka.read(sink, 20, settle=1.0)) == {v[::-1]: 1 for v in values}
    wait_for(lambda: health(app)[0] == 200, 30, "health UP")
    assert app.stop() == 0
    figures.add("produce requests refused (TOPIC_AUTHORIZATION_FAILED), rewinds", f"{proxy.refused}, "
                f"{log_count(app, 'rewinding to offset 0')}")
    figures.add("records skipped, lost, duplicated", "0, 0, 0")
    figures.add("ACL applied to everything committed", f"{moved:.1f} s")


def test_a_source_whose_sends_are_refused_sends_them_again_with_health_down_and_loses_nothing(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], start_stream_app: Callable[..., App],
        client: str) -> None:
    kafka, proxy = proxied
    sink = kafka.create(names("out"))
    proxy.refuse(sink, TOPIC_AUTHORIZATION_FAILED)
    app = start_stream_app("source", None, {"output": sink}, "--count=10", "--spring.integration.poller.fixed-delay=10",
                           env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    wait_for(lambda: REFUSED[client] in delivery_down(app), 60, "health DOWN with the reason")
    wait_for(lambda: log_count(app, r"1 message\(s\) not sent") >= 2, 60, "a resend, then another after a back-off")
    proxy.allow(sink)  # the ACL arrives
    records = kafka.read(sink, 10, settle=1.0)
    assert [r.value for r in records] == [str(n).encode() for n in range(1, 11)]  # in order, each once
    wait_for(lambda: health(app)[0] == 200, 30, "health UP")
    assert app.stop() == 0


def test_a_dead_letter_topic_acl_not_yet_applied_holds_the_partition_and_keeps_the_records_own_error(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], start_processor: Callable[..., App],
        figures: Figures) -> None:
    kafka, proxy = proxied
    source, sink, group = kafka.create(names("in"), 2), kafka.create(names("out")), names("g")
    dlq = kafka.create(f"error.{source}.{group}", 2)
    proxy.refuse(dlq, TOPIC_AUTHORIZATION_FAILED)
    kafka.produce(source, [b"a0", b"\xffpoison", b"a1", b"a2"], headers=[("contentType", TEXT)], partition=0)
    kafka.produce(source, [f"b{i}".encode() for i in range(5)], headers=[("contentType", TEXT)], partition=1)
    app = start_processor(source, sink, "--reversestring=true", *DLQ, group=group,
                          env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    wait_for(lambda: f"{source}-0 stalled at offset 1" in delivery_down(app), 60, "health DOWN for partition 0")
    wait_for(lambda: log_count(app, r"could not be sent to dead-letter topic") >= 3, 60, "two retries, backing off")
    wait_for(kafka.caught_up(group, {1: 5}), 30, "the other partition flowing")
    assert kafka.committed(group)[0] == 1
    proxy.allow(dlq)
    allowed = time.monotonic()
    wait_for(kafka.caught_up(group, {0: 4}), 60, "the held partition moving once the ACL is there")
    figures.add("dead-letter attempts refused while held", log_count(app, "could not be sent to dead-letter"))
    figures.add("ACL applied to the held partition committed", f"{time.monotonic() - allowed:.1f} s")
    [dead] = kafka.read(dlq, 1, settle=1.0)
    assert dead.value == b"\xffpoison"
    assert dict(dead.headers)["x-exception-fqcn"] == b"builtins.UnicodeDecodeError"
    assert by_value(kafka.read(sink, 8, settle=1.0)) == {v: 1 for v in OUTPUTS}
    assert app.metric("polyglot_records_failed_total", binding="input") == 1
    assert app.metric("polyglot_records_dead_lettered_total", binding="input") == 1
    wait_for(lambda: health(app)[0] == 200, 30, "health UP")
    assert app.stop() == 0
    figures.add("outputs of the held partition's later records sent again", 0)


# -- 5: a batch never outlives max.poll.interval.ms ------------------------------------------------------
def test_systematic_failures_never_outlive_the_poll_interval_nor_evict_the_app(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App], figures: Figures) -> None:
    source, group = kafka.create(names("in")), names("g")
    count = 16  # at 1 s of back-off each, twice the poll interval
    values = [f"not a timestamp: {chr(ord('a') + i)}".encode() for i in range(count)]  # no digit to route by
    kafka.produce(source, values)
    app = start_stream_app("router", source, {"even": names("even"), "odd": names("odd")},
                           "--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true",
                           "--spring.cloud.stream.bindings.input.consumer.maxAttempts=2",
                           "--spring.cloud.stream.kafka.binder.consumerProperties.max.poll.interval.ms=8000",
                           group=group)
    started = time.monotonic()
    wait_for(kafka.caught_up(group, {0: count}), 90, "every record dead-lettered and committed")
    took = time.monotonic() - started
    dead = kafka.read(f"error.{source}.{group}", count, settle=1.0)
    assert sorted(r.value for r in dead) == values
    assert "half of max.poll.interval.ms" in app.log
    assert "rebalanced" not in app.log
    assert "Offsets not committed" not in app.log
    assert app.stop() == 0
    figures.add("records failing every attempt, max.poll.interval.ms", f"{count} x 2 attempts, 8 s")
    figures.add("batches cut short, dead-letter copies, evictions", f"{log_count(app, 'half of max.poll')}, "
                f"{len(dead)}, 0")
    figures.add("start to everything committed", f"{took:.1f} s")


# -- 6: smaller ----------------------------------------------------------------------------------------
@pytest.mark.one_client
def test_dlq_with_an_anonymous_group_is_refused_at_start(start_processor: Callable[..., App]) -> None:
    app = start_processor("in", "out", "--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true",
                          group=None)
    assert app.wait(20) == 1
    assert "DLQ support is not available for anonymous subscriptions" in app.log


def test_a_record_without_a_timestamp_type_is_dead_lettered_as_no_timestamp_type() -> None:
    record = ConsumerRecord(topic="t", partition=0, leader_epoch=-1, offset=5, timestamp=-1, timestamp_type=-1,
                            key=None, value=b"v", headers=[], checksum=None, serialized_key_size=-1,
                            serialized_value_size=1, serialized_header_size=-1)
    assert dict(kafka_headers(record, ValueError("x")))["x-original-timestamp-type"] == b"NoTimestampType"


def test_logger_levels_keep_the_logger_names_as_written() -> None:
    configure_logging(Properties(["--logging.level.python_task=DEBUG"], {"LOGGING_LEVEL_KAFKA_CONN": "ERROR"}))
    try:
        assert logging.getLogger("python_task").level == logging.DEBUG
        assert logging.getLogger("kafka.conn").level == logging.ERROR
    finally:
        for name in ("python_task", "kafka.conn"):
            logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.one_client
def test_the_actuator_answers_on_ipv4_and_ipv6_when_no_address_is_set(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    app = start_processor(kafka.create(names("in")), names("out"), group=names("g"))
    for host in ("127.0.0.1", "[::1]"):
        with urllib.request.urlopen(f"http://{host}:{app.port}/actuator/info", timeout=5) as response:
            assert response.status == 200
    assert app.stop() == 0


def test_a_clients_repeated_log_line_is_written_once_an_interval_with_a_count() -> None:
    from util.logs import Repeats

    repeats, written = Repeats(seconds=60), []
    for port in range(5):
        record = logging.LogRecord("kafka.net", logging.WARNING, "", 0, "Connect to 127.0.0.1:%d failed", (port,), None)
        if repeats.filter(record):
            written.append(record.getMessage())
    own = logging.LogRecord("util.binder", logging.WARNING, "", 0, "Record t-0@%d skipped", (1,), None)
    malformed = logging.LogRecord("pika.connection", logging.WARNING, "", 0, "broker %s failed: %s", ("x",), None)
    assert written == ["Connect to 127.0.0.1:0 failed"]
    assert repeats.filter(own)
    assert repeats.filter(own)
    assert repeats.filter(malformed)  # a client's malformed call is logging's to report, never raised here
    repeats.seconds = 0.0
    again = logging.LogRecord("kafka.net", logging.WARNING, "", 0, "Connect to 127.0.0.1:%d failed", (9,), None)
    assert repeats.filter(again)
    assert again.getMessage() == "Connect to 127.0.0.1:9 failed (4 more like it in the last 0 s)"
