"""The straight pass's failures: records whose sends the broker refuses after the pass are found again and
settled as the per-record path settles them (Tansu, through devkit's proxy)."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

from kafka.errors import MessageSizeTooLargeError, TopicAuthorizationFailedError

from conftest import Kafka
from devkit.apps import App
from devkit.kafka_proxy import KafkaProxy
from devkit.waiting import wait_for

TEXT = b'"text/plain"'
SMALL_BATCHES = "--spring.cloud.stream.kafka.binder.producerProperties.batch.num.messages=5"  # librdkafka's
DLQ = ("--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true",
       "--spring.cloud.stream.kafka.bindings.input.consumer.dlqName={dlq}")


def _produce_tagged(kafka: Kafka, topic: str, values: list[bytes]) -> list[str]:
    """``values`` to partitions 0 and 1 each, every record with its own ``corr`` header: the ids, in order."""
    ids = []
    for partition in (0, 1):
        for offset, value in enumerate(values):
            ids.append(f"{partition}-{offset}")
            kafka.producer.send(topic, value, headers=[("contentType", TEXT), ("corr", ids[-1].encode())],
                                partition=partition)
    kafka.producer.flush(60)
    return ids


def _corr(record: Any) -> str:
    return dict(record.headers)["corr"].decode()


def test_records_the_broker_refuses_for_their_own_sake_after_a_straight_pass_are_each_dead_lettered_once(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], start_processor: Callable[..., App]) -> None:
    """Many records share a value; the broker refuses (too large) the batches that hold a marked one, so the
    records beside it too: each record ends up once, in the output or in the DLQ, a copy naming its own offset."""
    kafka, proxy = proxied
    source, sink, group = kafka.create(names("in"), 2), kafka.create(names("out"), 3), names("g")
    dlq = kafka.create(names("dlq"), 2)
    proxy.refuse_marked(b"MARKED", sink, MessageSizeTooLargeError.errno)
    values = [b"MARKED" if i % 97 == 0 else f"same {i % 3}".encode() for i in range(1500)]
    ids = _produce_tagged(kafka, source, values)
    app = start_processor(source, sink, SMALL_BATCHES, *(option.format(dlq=dlq) for option in DLQ), group=group,
                          env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    wait_for(kafka.caught_up(group, {0: 1500, 1: 1500}), 120, "every record committed")
    dead = kafka.read(dlq, 1, settle=2.0)
    out = kafka.read(sink, 3000 - len(dead), settle=2.0)
    assert proxy.refused
    assert any(r.value == b"MARKED" for r in dead)
    assert Counter(map(_corr, out)) + Counter(map(_corr, dead)) == Counter(ids)
    for record in dead:
        headers = dict(record.headers)
        origin = (struct.unpack(">i", headers["x-original-partition"])[0],
                  struct.unpack(">q", headers["x-original-offset"])[0])
        assert _corr(record) == f"{origin[0]}-{origin[1]}", "a copy names another record"
    assert app.stop() == 0


def test_a_refusal_of_the_brokers_own_after_a_straight_pass_rewinds_each_partition_to_its_own_record(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], start_processor: Callable[..., App]) -> None:
    """Records of two partitions share a value; the broker refuses (an ACL) the batches that hold a marked one.
    Each partition rewinds to its own first refused record, so once the refusal ends nothing is missing."""
    kafka, proxy = proxied
    source, sink, group = kafka.create(names("in"), 2), kafka.create(names("out")), names("g")
    proxy.refuse_marked(b"MARKED", sink, TopicAuthorizationFailedError.errno)
    ids = _produce_tagged(kafka, source, [b"MARKED" if i == 9 else b"same" for i in range(10)])
    app = start_processor(source, sink, SMALL_BATCHES, group=group,
                          env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    wait_for(lambda: "rewinding to offset" in app.log, 60, "a rewind")
    proxy.refuse_marked(None)  # the ACL arrives
    wait_for(kafka.caught_up(group, {0: 10, 1: 10}), 90, "every record committed")
    assert set(map(_corr, kafka.read(sink, 20, settle=2.0))) == set(ids)
    assert app.stop() == 0


def test_options_are_bound_once_by_position_where_the_signature_allows_else_by_keyword() -> None:
    from util.steps import _bound

    def positional(message: str, b: int, a: int = 0) -> tuple:
        return message, a, b

    def keyword_only(message: str, *, a: int, b: int) -> tuple:
        return message, a, b

    def anything(message: str, **options: int) -> tuple:
        return message, options["a"], options["b"]

    for function in (positional, keyword_only, anything):
        assert _bound(function, {"a": 1, "b": 2})("m") == ("m", 1, 2), function.__name__
    assert _bound(positional, {"b": 2})("m") == ("m", 0, 2)
    assert _bound(positional, {})("m", 2) == ("m", 0, 2)  # no options: the function itself
    assert _bound(len, {"a": 1}).func is len  # no parameter of that name to pass by position: by keyword
