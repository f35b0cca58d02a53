"""Batch mode's attempts, each record's own and across polls (Tansu, each Kafka client; RabbitMQ): maxAttempts
calls a record, whatever else joins its batch or is split off it, and no record dead-lettered twice."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import pytest
from test_batch_edges import BATCH, SLOW, TEXT, _run

from conftest import Kafka, Rabbit
from devkit.apps import App
from devkit.waiting import wait_for


def _calls_with(app: App, text: str) -> int:
    return sum(text in m.split(",") for m in re.findall(r"TEXTS \[([^\]]*)\]", app.log))


def test_new_records_joining_a_carried_batch_get_max_attempts_calls(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """Records produced while a failing batch waits for its next poll join that poll's batch: they are
    called maxAttempts (4) times before being dead-lettered, not what is left of the old batch's attempts."""
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    dlq = kafka.create(f"error.{source}.{group}")
    kafka.produce(source, [f"v{i}".encode() for i in range(5)], headers=TEXT)
    app = start_stream_app("batch-edges", source, {"output": sink}, *BATCH, *SLOW, group=group,
                           env={"EDGE": "always_fail"})
    wait_for(lambda: "CALL 5" in app.log, 60, "the first call")
    ends = kafka.produce(source, [f"v{i}".encode() for i in range(5, 10)], headers=TEXT)
    wait_for(lambda: kafka.caught_up(group, ends)() or app.process.poll() is not None, 90, "all committed")
    dead = sorted(r.value for r in kafka.read(dlq, 0, timeout=2, settle=1.0))
    assert dead == sorted(f"v{i}".encode() for i in range(10))
    assert _calls_with(app, "v0") == 4
    assert _calls_with(app, "v5") == 4, app.log[-3000:]
    assert app.stop() == 0


def test_a_batch_error_after_a_whole_batch_failure_keeps_the_records_attempts(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """maxAttempts=2: the whole batch fails once, then BatchError blames "poison" (index 1): poison was in
    both calls, so it is dead-lettered then, not called a third time."""
    out, dead, app = _run(kafka, names, start_stream_app, "fail_then_blame", [b"a", b"poison", b"b"])
    assert dead == [b"poison"]
    assert sorted(out) == [b"a", b"b"]
    assert _calls_with(app, "poison") == 2, app.log[-3000:]
    assert app.stop() == 0


def test_records_that_do_not_convert_are_dead_lettered_once_when_a_batch_waits_for_its_next_poll(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """A record that does not convert is dead-lettered at once; a back-off cut short by the poll's time
    rewinds to an earlier offset and must not dead-letter it again at every poll."""
    values = [b"v0", b"v1", b"\xffnot utf-8", b"v3", b"v4"]
    out, dead, app = _run(kafka, names, start_stream_app, "always_fail", values, *SLOW)
    assert out == []
    assert dead.count(b"\xffnot utf-8") == 1, dead
    assert sorted(dead) == sorted(values)
    assert app.stop() == 0


def test_a_poison_record_is_given_up_while_another_partition_keeps_receiving(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """Poison on partition 1, a record a second on partition 0: the poison record's attempts must not
    start over whenever the other partition's new records come first in the poll's list."""
    source, sink, group = kafka.create(names("in"), 2), kafka.create(names("out")), names("g")
    dlq = kafka.create(f"error.{source}.{group}")
    kafka.produce(source, [b"poison"], headers=TEXT, partition=lambda _i: 1)
    app = start_stream_app("batch-edges", source, {"output": sink}, *BATCH, *SLOW, group=group,
                           env={"EDGE": "blame_poison"})
    stop = threading.Event()

    def feed() -> None:
        n = 0
        while not stop.is_set():
            kafka.produce(source, [f"f{n}".encode()], headers=TEXT, partition=lambda _i: 0)
            n += 1
            stop.wait(0.5)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _calls_with(app, "poison") < 8:
            if kafka.read(dlq, 0, timeout=1, settle=0.5):
                break
        calls = _calls_with(app, "poison")
        dead = [r.value for r in kafka.read(dlq, 0, timeout=2, settle=1.0)]
    finally:
        stop.set()
        feeder.join()
    assert calls <= 4, (calls, dead, re.findall(r"TEXTS \[[^\]]*\]", app.log))
    assert dead == [b"poison"]
    assert app.stop() == 0


def test_a_batch_output_refused_as_too_large_fails_every_record_of_the_batch(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """The function's one value for the whole batch cannot be sent (larger than max.request.size): no record
    of the batch had its output sent, so each takes its error path; none is committed silently."""
    values = [b"a", b"b", b"c"]
    out, dead, app = _run(kafka, names, start_stream_app, "huge", values)
    assert out == []
    assert sorted(dead) == values, dead
    assert app.stop() == 0


def test_rabbit_a_batch_whose_back_off_outlasts_the_poll_keeps_its_attempts(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    """RabbitMQ, batch mode, maxAttempts=3, back-offs 1 s then 149 s: RabbitMQ has no poll deadline, so the
    back-off is waited out in place (a requeued message would come back under a new number, its attempts
    lost, and be called again at once, for ever)."""
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    rabbit.declare_group(source, group)
    consumer = "--spring.cloud.stream.rabbit.bindings.input.consumer"
    app = start_rabbit_app("batch-edges", source, {"output": sink},
                           "--spring.cloud.stream.bindings.input.consumer.batch-mode=true",
                           f"{consumer}.enableBatching=true", f"{consumer}.batchSize=10",
                           f"{consumer}.receiveTimeout=100",
                           "--spring.cloud.stream.bindings.input.consumer.maxAttempts=3",
                           "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval=1000",
                           "--spring.cloud.stream.bindings.input.consumer.backOffMultiplier=149",
                           "--spring.cloud.stream.bindings.input.consumer.backOffMaxInterval=149000",
                           group=group, env={"EDGE": "always_fail"})
    app.wait_for_log("Consuming")
    rabbit.publish(source, [b"v0"])
    wait_for(lambda: _calls_with(app, "v0") >= 2, 30, "the second call")
    with pytest.raises(TimeoutError):  # the third is 149 s away
        wait_for(lambda: _calls_with(app, "v0") > 2, 5, "a third call")
    assert app.stop() == 0  # SIGTERM ends the back-off; the message is requeued


def test_a_batch_error_index_skips_the_records_that_did_not_convert(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    values = [b"a", b"\xffnot utf-8", b"poison", b"b"]
    out, dead, app = _run(kafka, names, start_stream_app, "blame_poison", values)
    assert sorted(dead) == sorted([b"\xffnot utf-8", b"poison"])
    assert sorted(out) == [b"a", b"b"]
    assert app.stop() == 0


def test_sigterm_during_a_back_off_after_a_batch_error_sends_nothing_twice(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    dlq = kafka.create(f"error.{source}.{group}")
    ends = kafka.produce(source, [b"a", b"b", b"poison", b"c"], headers=TEXT)
    app = start_stream_app("batch-edges", source, {"output": sink}, *BATCH, *SLOW, group=group,
                           env={"EDGE": "blame_poison"})
    wait_for(lambda: "TEXTS [poison,c]" in app.log or "TEXTS [a,b]" in app.log, 60, "the split")
    assert app.stop() == 0  # during the back-off before poison's next call
    app = start_stream_app("batch-edges", source, {"output": sink}, *BATCH, *SLOW, group=group,
                           env={"EDGE": "blame_poison"})
    wait_for(kafka.caught_up(group, ends), 90, "all committed")
    out = sorted(r.value for r in kafka.read(sink, 0, timeout=2, settle=1.0))
    dead = [r.value for r in kafka.read(dlq, 0, timeout=2, settle=1.0)]
    assert (out, dead) == ([b"a", b"b", b"c"], [b"poison"])
    assert app.stop() == 0
