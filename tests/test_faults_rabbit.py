"""RabbitMQ faults on a real node: SIGTERM and kill -9 mid-stream, a broker restart or late at start, a connection
lost with sends unconfirmed, exchanges and queues deleted under the app, abusive payloads, an AMQP timestamp no
datetime holds, SIGTERM while the broker blocks publishers (memory alarm), AMQP strings that are not UTF-8."""

from __future__ import annotations

import calendar
import datetime
import json
import signal
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_rabbit import DLQ, FAST_RETRY, health

from conftest import Figures, Rabbit
from devkit.apps import App
from devkit.rabbitmq import RabbitMQ
from devkit.waiting import wait_for

FAR = (2**63 - 1) // 1000  # Java's ``new Date(Long.MAX_VALUE)`` in seconds: an AMQP timestamp no datetime holds


class FarFuture(datetime.datetime):
    """A header value the test's pika writes as the AMQP timestamp ``seconds`` (FAR, or before 1970 as Java writes
    it: negative, which pika reads as unsigned)."""

    seconds: int

    @classmethod
    def at(cls, seconds: int) -> FarFuture:
        made = cls(2000, 1, 1)
        made.seconds = seconds
        return made


def test_a_connection_lost_with_sends_unconfirmed_resumes_every_queue_and_loses_nothing(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, rabbitmq: RabbitMQ, names: Callable[[str], str],
        figures: Figures) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(source, group)
    rabbit.declare_group(sink, "check")
    values = [f"m{i:05d}".encode() for i in range(20_000)]
    rabbit.publish(source, values)
    app = start_rabbit_app("processor", source, {"output": sink}, group=group)
    wait_for(lambda: app.metric("polyglot_records_sent_total", binding="output") > 2000, 60, "part of the work")
    rabbit.close()
    rabbitmq.ctl("close_all_connections", "a test closes them")
    lost = time.monotonic()
    check = Rabbit(rabbitmq)
    try:
        wait_for(lambda: check.depth(f"{source}.{group}") == 0 and "unacknowledged" not in str(health(app)[1])
                 and app.metric("polyglot_records_received_total", binding="input") >= 20_000, 120,
                 "every message taken after the reconnection")
        counts = Counter(body for _, _, body in check.read(f"{sink}.check", 20_000, settle=1.0))
    finally:
        check.close()
    assert set(counts) == set(values)
    wait_for(lambda: health(app)[0] == 200, 30, "health UP")
    figures.add("connection closed by the broker mid-stream: the rest processed", f"{time.monotonic() - lost:.1f} s")
    figures.add("messages lost, sent again", f"0, {sum(counts.values()) - len(values)}")
    assert app.stop() == 0


def test_an_amqp_timestamp_past_the_year_9999_is_read_and_the_messages_flow(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    timegm = calendar.timegm
    monkeypatch.setattr(calendar, "timegm", lambda t: t if isinstance(t, int) else timegm(t))
    monkeypatch.setattr(FarFuture, "utctimetuple", lambda self: self.seconds)
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(source, group)
    rabbit.declare_group(sink, "check")
    rabbit.publish(source, [b"before"])
    rabbit.publish(source, [b"poison"], headers={"expires": FarFuture.at(FAR)})
    rabbit.publish(source, [b"1969"], headers={"expires": FarFuture.at(2**64 - 86400)})  # -86400 as Java writes it
    rabbit.publish(source, [b"after"])
    app = start_rabbit_app("processor", source, {"output": sink}, "--reversestring=true", group=group)
    out = rabbit.read(f"{sink}.check", 4, settle=1.0)
    assert [body for _, _, body in out] == [b"erofeb", b"nosiop", b"9691", b"retfa"]
    assert out[2][1].headers["expires"] == -86400
    assert out[1][1].headers["expires"] == FAR  # its seconds, as pika cannot hold the date
    assert rabbit.depth(f"{source}.{group}") == 0
    assert health(app)[0] == 200
    assert app.stop() == 0


def test_sigterm_while_the_broker_blocks_publishers_exits_within_the_drain_and_loses_nothing(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, rabbitmq: RabbitMQ, names: Callable[[str], str],
        figures: Figures) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(source, group)
    rabbit.declare_group(sink, "check")
    values = [f"m{i:03d}".encode() for i in range(200)]
    rabbit.publish(source, values)
    rabbitmq.ctl("set_vm_memory_high_watermark", "0.000001")  # a memory alarm: publishers are blocked
    try:
        app = start_rabbit_app("processor", source, {"output": sink}, group=group)
        wait_for(lambda: "RabbitMQ blocks publishing" in str(health(app)[1]), 60, "health DOWN naming the alarm")
        stopped = time.monotonic()
        code = app.stop(timeout=60)
        took = time.monotonic() - stopped
    finally:
        rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")
    assert took < 11, f"exit {code} {took:.1f} s after SIGTERM"
    again = start_rabbit_app("processor", source, {"output": sink}, group=group)
    wait_for(lambda: rabbit.depth(f"{source}.{group}") == 0, 120, "the rest processed")
    counts = Counter(body for _, _, body in rabbit.read(f"{sink}.check", 200, settle=1.0))
    assert set(counts) == set(values)
    assert again.stop() == 0
    figures.add("memory alarm: SIGTERM to exit (exit code)", f"{took:.1f} s ({code})")


# The fault suite's payload abuse, on RabbitMQ: case -> (body, content type, extra headers).
ABUSE: dict[str, tuple[bytes, str | None, int]] = {
    "empty": (b"", "text/plain", 0),
    "1 MB": (b"x" * 999_999 + b"4", "text/plain", 0),
    "2 MiB": (b"y" * (2 * 1024 * 1024 - 1) + b"6", "text/plain", 0),  # RabbitMQ takes it: no size refusal here
    "invalid UTF-8": (b"\xff\xfe 10:00:01", "text/plain", 0),
    "NUL bytes": (b"10:00\x0002", "text/plain", 0),
    "1,000 headers": (b"10:00:03", "text/plain", 1000),  # a header frame must fit frame_max (128 KiB)
    "binary content type": (b"\x00\x01\xfe\xff7", "application/octet-stream", 0),
    "no content type": (b'"10:00:05"', None, 0),  # application/json, as Spring reads it
}


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_in_the_middle_of_20000_messages_loses_none(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str],
        stop: signal.Signals) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(source, group)
    rabbit.declare_group(sink, "check")
    values = [f"m{i:05d}".encode() for i in range(20_000)]
    rabbit.publish(source, values)
    app = start_rabbit_app("processor", source, {"output": sink}, group=group)
    wait_for(lambda: app.metric("polyglot_records_sent_total", binding="output") > 2000, 60, "part of the work")
    code = app.stop(stop)
    assert code == (0 if stop == signal.SIGTERM else -9)
    again = start_rabbit_app("processor", source, {"output": sink}, group=group)
    wait_for(lambda: rabbit.depth(f"{source}.{group}") == 0 and again.metric(
        "polyglot_records_sent_total", binding="output") > 0, 120, "the rest processed")
    counts = Counter(body for _, _, body in rabbit.read(f"{sink}.check", 20_000, settle=1.0))
    assert set(counts) == set(values)
    duplicates = sum(counts.values()) - len(values)
    assert duplicates == 0 if stop == signal.SIGTERM else duplicates <= 1000 + 1000  # prefetch + a batch
    assert again.stop() == 0




ABUSE_PATHS = {
    "processor": {"empty": "output", "1 MB": "output", "2 MiB": "output", "invalid UTF-8": "dlq",
                  "NUL bytes": "output", "1,000 headers": "output", "binary content type": "output",
                  "no content type": "output"},
    "router": {"empty": "dlq", "1 MB": "even", "2 MiB": "even", "invalid UTF-8": "dlq", "NUL bytes": "even",
               "1,000 headers": "odd", "binary content type": "dlq", "no content type": "odd"},
}


@pytest.mark.parametrize("kind", ["processor", "router"])
def test_abusive_payloads_take_their_documented_path_and_the_app_keeps_running(
        kind: str, start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, group = names("in"), names("g")
    sinks = {"output": names("out")} if kind == "processor" else {"even": names("even"), "odd": names("odd")}
    for destination in sinks.values():
        rabbit.declare_group(destination, "check")
    app = start_rabbit_app(kind, source, sinks, "--reversestring=true", DLQ, *FAST_RETRY, group=group)
    app.wait_for_log("Consuming")
    for case, (body, content_type, extra) in ABUSE.items():
        headers = {"case": case, "when": datetime.datetime(2026, 12, 2), "nested": {"a": [1, "b"]},
                   **{f"x-abuse-{i:04d}": "0123456789abcdef" for i in range(extra)}}
        rabbit.publish(source, [body], content_type=content_type, headers=headers)
    rabbit.publish(source, [b"10:00:08"], headers={"case": "after"})
    queues = {**{binding: f"{d}.check" for binding, d in sinks.items()}, "dlq": f"{source}.{group}.dlq"}
    where: dict[str, tuple[str, Any, bytes]] = {}

    def arrived() -> bool:
        for binding, queue in queues.items():
            for _, properties, body in rabbit.read(queue, 0, timeout=1):
                where[properties.headers["case"]] = (binding, properties, body)
        return len(where) == len(ABUSE) + 1

    wait_for(arrived, 120, "every message on its path", interval=0.2)
    after = "output" if kind == "processor" else "even"
    assert {case: binding for case, (binding, _, _) in where.items()} == {**ABUSE_PATHS[kind], "after": after}
    for case, (binding, properties, body) in where.items():
        if binding == "dlq":
            assert body == ABUSE[case][0], case
            assert properties.headers["x-original-exchange"] == source
        if case != "after":  # AMQP values pass through as they came
            assert properties.headers["nested"] == {"a": [1, "b"]}, case
            assert properties.headers["when"] == datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC), case
    assert sum(k.startswith("x-abuse-") for k in where["1,000 headers"][1].headers) == 1000
    assert app.process.poll() is None
    assert health(app)[0] == 200
    assert app.stop() == 0


@pytest.fixture
def own_rabbitmq(tmp_path: Path) -> Iterator[RabbitMQ]:
    server = RabbitMQ(tmp_path / "own-rabbitmq.log").start()
    yield server
    server.remove()


def test_a_broker_restart_turns_health_down_then_up_and_loses_nothing(
        start_rabbit_app: Callable[..., App], own_rabbitmq: RabbitMQ, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit = Rabbit(own_rabbitmq)
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("processor", source, {"output": sink}, group=group, server=own_rabbitmq)
    app.wait_for_log("Consuming")
    rabbit.publish(source, [b"before"])
    assert [b for _, _, b in rabbit.read(f"{sink}.check", 1)] == [b"before"]
    rabbit.close()
    own_rabbitmq.stop()
    wait_for(lambda: health(app)[0] == 503, 30, "health DOWN while the broker is away")
    assert "RabbitMQ" in json.dumps(health(app)[1])
    own_rabbitmq.start()
    wait_for(lambda: health(app)[0] == 200, 90, "health UP after the restart")
    rabbit = Rabbit(own_rabbitmq)
    rabbit.publish(source, [b"after"])
    assert [b for _, _, b in rabbit.read(f"{sink}.check", 1)] == [b"after"]
    rabbit.close()
    assert app.process.poll() is None
    assert app.stop() == 0


def test_a_broker_not_up_yet_at_start_is_waited_for_with_health_down(
        start_rabbit_app: Callable[..., App], names: Callable[[str], str], tmp_path: Path) -> None:
    server = RabbitMQ(tmp_path / "late-rabbitmq.log")  # its port is chosen, the node not started
    source, sink, group = names("in"), names("out"), names("g")
    try:
        app = start_rabbit_app("processor", source, {"output": sink}, group=group, server=server)
        app.wait_for_log("RabbitMQ unreachable at 127.0.0.1")
        assert "property 'spring.rabbitmq.host'" in app.log
        wait_for(lambda: app.port and health(app)[0] == 503, 30, "health DOWN while no broker answers")
        server.start()
        app.wait_for_log("Consuming", timeout=90)
        rabbit = Rabbit(server)
        rabbit.declare_group(sink, "check")
        rabbit.publish(source, [b"late"])
        assert [b for _, _, b in rabbit.read(f"{sink}.check", 1)] == [b"late"]
        rabbit.close()
        assert app.stop() == 0
    finally:
        server.remove()


def test_an_output_exchange_deleted_under_the_app_holds_the_messages_until_it_is_back(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("processor", source, {"output": sink}, group=group)
    app.wait_for_log("Consuming")
    rabbit.channel.exchange_delete(sink)  # the broker closes the publishing channel: 404 NOT_FOUND
    rabbit.publish(source, [b"kept"])
    wait_for(lambda: "NOT_FOUND" in json.dumps(health(app)[1]), 30, "health DOWN naming the refusal")
    assert rabbit.depth(f"{sink}.check") == 0  # nothing was published: the message waits, unacknowledged
    rabbit.declare_group(sink, "check")  # a peer declares the exchange again
    assert [b for _, _, b in rabbit.read(f"{sink}.check", 1, timeout=60)] == [b"kept"]
    wait_for(lambda: health(app)[0] == 200, 60, "health UP again")
    assert app.stop() == 0




def test_an_input_queue_deleted_under_the_app_is_declared_again_and_consumed(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("processor", source, {"output": sink}, group=group)
    app.wait_for_log("Consuming")
    rabbit.channel.queue_delete(f"{source}.{group}")  # the broker cancels the app's consumer
    app.wait_for_log("cancelled the consumer of queue")
    wait_for(lambda: app.log.count("Connected to RabbitMQ") >= 2, 60, "a reconnection")
    rabbit.publish(source, [b"again"])
    assert [b for _, _, b in rabbit.read(f"{sink}.check", 1, timeout=60)] == [b"again"]
    assert app.stop() == 0


# What pika cannot decode as UTF-8 it leaves as bytes: a short string (the content type, the routing key, a key of a
# table inside the header table). Each crashed the app before (AttributeError, TypeError), on every restart.
UNDECODABLE = {
    "content type": ({"content_type": b"text/plain\xff"}, b"nosiop"),
    "routing key": ({"routing_key": b"key\xff"}, b"nosiop"),
    "key of a nested table": ({"headers": {"outer": {b"\xffkey": 1}}}, b"nosiop"),
}


@pytest.mark.parametrize("case", list(UNDECODABLE))
def test_amqp_strings_that_are_not_utf8_never_stop_the_app(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str], case: str) -> None:
    properties, reversed_ = UNDECODABLE[case]
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(source, group)
    rabbit.declare_group(sink, "check")
    rabbit.publish(source, [b"before"])
    rabbit.channel.basic_publish(source, properties.get("routing_key", source), b"poison", rabbit.pika.BasicProperties(
        content_type=properties.get("content_type", "text/plain"), delivery_mode=2, headers=properties.get("headers")))
    rabbit.publish(source, [b"after"])
    app = start_rabbit_app("processor", source, {"output": sink}, "--reversestring=true", group=group)
    out = rabbit.read(f"{sink}.check", 3, settle=1.0)
    assert [body for _, _, body in out] == [b"erofeb", reversed_, b"retfa"]  # read as Java reads it: U+FFFD
    wait_for(lambda: rabbit.depth(f"{source}.{group}") == 0, 30, "every message acknowledged")
    assert health(app)[0] == 200
    assert "Traceback" not in app.log
    assert app.stop() == 0


class Field(bytes):
    """A header value the test's pika writes as these bytes: an AMQP field as a Spring app writes it, type first."""


SPRING_FIELDS = {  # what Spring AMQP writes for a header of each Java type; pika alone changed every one of them
    "String not UTF-8": b"S" + struct.pack(">I", 4) + b"caf\xe9",  # was written back as a byte array
    "Double": b"d" + struct.pack(">d", 2.75),  # was read as 2
    "Float": b"f" + struct.pack(">f", 0.5),  # was read as 0
    "Byte": b"b" + struct.pack(">b", -3),  # was written back as an Integer
    "Short": b"s" + struct.pack(">h", 300),  # likewise
    "BigDecimal": b"D" + struct.pack(">Bi", 2, 150),  # 1.50, was written back as 1.5 (unequal in Java)
}


def test_header_values_keep_their_amqp_type_and_value_on_the_way_through(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pika.data

    encode, decode, seen = pika.data.encode_value, pika.data.decode_value, []

    def encode_value(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, Field):
            pieces.append(bytes(value))
            return len(value)
        return encode(pieces, value)

    def decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
        value, end = decode(encoded, offset)
        seen.append(bytes(encoded[offset:end]))
        return value, end

    monkeypatch.setattr(pika.data, "encode_value", encode_value)
    monkeypatch.setattr(pika.data, "decode_value", decode_value)
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(source, group)
    rabbit.declare_group(sink, "check")
    headers: dict[str, Any] = {name: Field(field) for name, field in SPRING_FIELDS.items()}
    headers["byte[]"] = b"\xff"
    rabbit.publish(source, [b"abc"], headers=headers)
    app = start_rabbit_app("processor", source, {"output": sink}, "--reversestring=true", group=group)
    [(_, properties, body)] = rabbit.read(f"{sink}.check", 1, settle=0.5)
    assert body == b"cba"
    for name, field in SPRING_FIELDS.items():
        assert field in seen, f"{name}: {properties.headers[name]!r}"
    assert b"x" + struct.pack(">I", 1) + b"\xff" in seen  # a byte array stays one
    assert app.stop() == 0
