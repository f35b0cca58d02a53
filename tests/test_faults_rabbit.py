"""RabbitMQ faults on a real node: a connection lost with sends unconfirmed, an AMQP timestamp no datetime
holds, SIGTERM while the broker blocks publishers (memory alarm)."""

from __future__ import annotations

import calendar
import datetime
import time
from collections import Counter
from collections.abc import Callable

import pytest
from test_rabbit import health

from conftest import Figures, Rabbit
from devkit.apps import App
from devkit.rabbitmq import RabbitMQ
from devkit.waiting import wait_for

FAR = (2**63 - 1) // 1000  # Java's ``new Date(Long.MAX_VALUE)`` in seconds: an AMQP timestamp no datetime holds


class FarFuture(datetime.datetime):
    """A header value the test's pika writes as the AMQP timestamp FAR."""


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
    monkeypatch.setattr(calendar, "timegm", lambda t: FAR if t == "far" else timegm(t))
    monkeypatch.setattr(FarFuture, "utctimetuple", lambda _self: "far")
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(source, group)
    rabbit.declare_group(sink, "check")
    rabbit.publish(source, [b"before"])
    rabbit.publish(source, [b"poison"], headers={"expires": FarFuture(2000, 1, 1)})
    rabbit.publish(source, [b"after"])
    app = start_rabbit_app("processor", source, {"output": sink}, "--reversestring=true", group=group)
    out = rabbit.read(f"{sink}.check", 3, settle=1.0)
    assert [body for _, _, body in out] == [b"erofeb", b"nosiop", b"retfa"]
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
        app.wait_for_log("Partitions assigned")
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
