"""The straight pass's failures: records whose sends the broker refuses after the pass are found again and
settled as the per-record path settles them (Tansu, through devkit's proxy)."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable

from kafka.errors import MessageSizeTooLargeError

from conftest import Kafka
from devkit.apps import App
from devkit.kafka_proxy import KafkaProxy
from devkit.waiting import wait_for

TEXT = b'"text/plain"'
DLQ = ("--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true",
       "--spring.cloud.stream.kafka.bindings.input.consumer.dlqName={dlq}")


def test_records_the_broker_refuses_after_a_straight_pass_are_dead_lettered_and_none_is_lost_or_doubled(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], start_processor: Callable[..., App]) -> None:
    """Many records share a value, so a failure reported by topic and value alone must go to a record of that value
    not given one yet: each input record ends up exactly once in the output or in the DLQ."""
    kafka, proxy = proxied
    source, sink, group = kafka.create(names("in"), 2), kafka.create(names("out"), 3), names("g")
    dlq = kafka.create(names("dlq"), 2)
    proxy.refuse_marked(b"MARKED", sink, MessageSizeTooLargeError.errno)  # the record's own fault: a DLQ copy
    values = [b"MARKED" if i % 97 == 0 else f"same {i % 3}".encode() for i in range(3000)]
    for partition in (0, 1):
        kafka.produce(source, values, headers=[("contentType", TEXT)], partition=partition)
    app = start_processor(source, sink, *(option.format(dlq=dlq) for option in DLQ), group=group,
                          env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    wait_for(kafka.caught_up(group, {0: 3000, 1: 3000}), 120, "every record committed")
    dead = kafka.read(dlq, 1, settle=2.0)
    out = kafka.read(sink, 6000 - len(dead), settle=2.0)
    assert proxy.refused
    assert any(r.value == b"MARKED" for r in dead)
    assert Counter(r.value for r in out) + Counter(r.value for r in dead) == Counter(values * 2)
    origins = []
    for record in dead:
        headers = dict(record.headers)
        offset = struct.unpack(">q", headers["x-original-offset"])[0]
        origins.append((struct.unpack(">i", headers["x-original-partition"])[0], offset))
        assert values[offset] == record.value, "a copy names a record of another value"
    assert len(set(origins)) == len(dead), "two dead-letter copies of one record"
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
