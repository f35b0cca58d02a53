"""Hostile review of issue 24 (exactly-once on Kafka): each test reproduces an attack on a transactional step
against a real broker (Tansu, and the fault proxy). Judged with devkit/committed_reader.py, as a read_committed
consumer on Apache Kafka would see the topics."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import conftest
from conftest import Kafka
from devkit.committed_reader import read_committed, read_logs
from devkit.waiting import wait_for

conftest.STEPS["attacks"] = ("tests/steps/python_attacks.py", ("output",))
PREFIX = "--spring.cloud.stream.kafka.binder.transaction.transactionIdPrefix="
INDEX = "--spring.cloud.stream.instanceIndex="
DLQ = ("--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true",)
StartStreamApp = Callable[..., object]


def visible(kafka: Kafka, topic: str, count: int = 0, timeout: float = 10) -> list[bytes]:
    return [r.value for r in read_committed(kafka.bootstrap, topic, count, timeout)]


def open_transactions(kafka: Kafka, topic: str) -> int:
    return sum(log.open_count for log in read_logs(kafka.bootstrap, topic).values())


def dups(values: list[bytes]) -> dict[bytes, int]:
    return {v: n for v, n in Counter(values).items() if n > 1}


def committing_processor(kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp, first: bytes,
                         partitions: int = 1) -> tuple[str, str, Any]:
    """A transactional processor (instance 0) on the proxied broker, once its output of ``first`` is committed:
    its source, its sink and the app."""
    source, sink = kafka.create(names("in"), partitions), kafka.create(names("out"))
    app: Any = start_stream_app("processor", source, {"output": sink}, "--reversestring=true", PREFIX + names("tx-"),
                                INDEX + "0", group=names("g"),
                                env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    app.wait_for_log("Partitions assigned", 60)
    kafka.produce(source, [first])
    wait_for(lambda: visible(kafka, sink, 1, 1) == [first[::-1]], 30, "the first committed")
    return source, sink, app


@pytest.mark.parametrize("kills", [3])
def test_kill9_mid_stream_then_restart_each_output_once(kafka: Kafka, names: Callable[[str], str],
                                                         start_stream_app: StartStreamApp, kills: int) -> None:
    """kill -9 at several moments while batches commit; the same instance starts again each time. A
    read_committed reader must see every output exactly once, and no transaction may be left open."""
    count, partitions = 30_000, 2
    source, sink, group = kafka.create(names("in"), partitions), kafka.create(names("out"), 2), names("g")
    values = [f"record-{i:06d}".encode() for i in range(count)]
    ends = kafka.produce(source, values, partition=lambda i: i % partitions)
    args = (PREFIX + names("tx-"), INDEX + "0",
            "--spring.cloud.stream.kafka.binder.consumerProperties.max.poll.records=50")
    for kill in range(kills):
        app = start_stream_app("processor", source, {"output": sink}, "--reversestring=true", *args, group=group)
        app.wait_for_log("Partitions assigned: .+-0", 60)
        wait_for(lambda k=kill: sum(kafka.committed(group).values()) >= (k + 1) * count // (kills + 2), 60,
                 "a share of the records committed")
        app.kill()
    app = start_stream_app("processor", source, {"output": sink}, "--reversestring=true", *args, group=group)
    wait_for(kafka.caught_up(group, ends), 120, "the group to commit everything")
    found = visible(kafka, sink, count, 30)
    assert app.stop() == 0
    assert dups(found) == {}, f"{len(dups(found))} outputs seen more than once"
    assert Counter(found) == Counter(v[::-1] for v in values)
    assert open_transactions(kafka, sink) == 0


def test_fenced_instance_exits_1_promptly_with_one_line(kafka: Kafka, names: Callable[[str], str],
                                                         start_stream_app: StartStreamApp) -> None:
    """Two instances given the same instanceIndex (a misconfigured deployment, or a zombie pod): the second's
    init_transactions fences the first, which must exit 1 promptly with one 'Stopping:' line; outputs once.

    Static assignment (no group join): on Tansu, a JoinGroup racing the only member's LeaveGroup (the fenced
    first leaving as the second joins) can leave the joiner, and the group, without an assignment for good."""
    count = 60_000
    source, sink, group = kafka.create(names("in"), 2), kafka.create(names("out")), names("g")
    values = [f"record-{i:06d}".encode() for i in range(count)]
    ends = kafka.produce(source, values, partition=lambda i: i % 2)
    args = (PREFIX + names("tx-"), INDEX + "0",
            "--spring.cloud.stream.kafka.binder.consumerProperties.max.poll.records=20",
            "--spring.cloud.stream.kafka.bindings.input.consumer.autoRebalanceEnabled=false",
            "--spring.cloud.stream.instanceCount=1")
    first = start_stream_app("processor", source, {"output": sink}, "--reversestring=true", *args, group=group)
    first.wait_for_log("Static assignment .+-0", 60)
    wait_for(lambda: sum(kafka.committed(group).values()) > 0, 60, "the first's commits")
    second = start_stream_app("processor", source, {"output": sink}, "--reversestring=true", *args, group=group)
    second.wait_for_log("Transactions: a batch's sends", 60)
    started = time.monotonic()
    code = first.wait(50)
    took = time.monotonic() - started
    wait_for(kafka.caught_up(group, ends), 120, "the group to commit everything")
    found = visible(kafka, sink, count, 30)
    assert second.stop() == 0
    assert code == 1, first.log[-3000:]
    # Tansu closes the connection of a fenced EndTxn (Apache Kafka answers PRODUCER_FENCED): a commit under way
    # then waits out its 15 s (and its abort 10 s) before the instance knows
    assert took < 40, f"the fenced instance took {took:.0f} s to exit"
    assert first.log.count("Stopping: ") == 1, first.log[-3000:]
    assert "Traceback" not in first.log, first.log[-3000:]
    assert dups(found) == {}
    assert Counter(found) == Counter(v[::-1] for v in values)


def mixed_values(count: int) -> list[bytes]:
    """Ordinary records with, every so often, a filtered one, one that fails once, and a poison one."""
    kinds = {17: b"drop", 29: b"flaky", 97: b"poison"}
    return [kinds.get(i % 100, b"ok") + f"-{i:05d}".encode() for i in range(count)]


@pytest.mark.parametrize("attempts", [1, 3])
def test_mixed_batches_poison_flaky_filtered_with_dlq(kafka: Kafka, names: Callable[[str], str],
                                                       start_stream_app: StartStreamApp, attempts: int) -> None:
    """Filtered, transiently failing and poison records among ordinary ones, DLQ on: every kept output once,
    every poison record in the DLQ once, everything committed, no transaction left open."""
    count = 600
    source, sink, group = kafka.create(names("in"), 2), kafka.create(names("out")), names("g")
    dlq = names("dlq")
    values = mixed_values(count)
    ends = kafka.produce(source, values, partition=lambda i: (i // 10) % 2)
    app = start_stream_app("attacks", source, {"output": sink}, PREFIX + names("tx-"), INDEX + "0", *DLQ,
                           f"--spring.cloud.stream.kafka.bindings.input.consumer.dlqName={dlq}",
                           f"--spring.cloud.stream.bindings.input.consumer.maxAttempts={attempts}",
                           "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval=50",
                           "--spring.cloud.stream.bindings.input.consumer.backOffMaxInterval=100", group=group)
    wait_for(kafka.caught_up(group, ends), 120, "the group to commit everything")
    poison = [v for v in values if v.startswith(b"poison")]
    flaky = [v for v in values if v.startswith(b"flaky")]
    kept = [v[::-1] for v in values if v.startswith(b"ok")] + ([v[::-1] for v in flaky] if attempts > 1 else [])
    found = visible(kafka, sink, len(kept), 30)
    dead = visible(kafka, dlq, len(poison), 30)
    received = app.metric("polyglot_records_received_total")
    app_log = app.log
    assert app.stop() == 0
    assert dups(found) == {}
    assert dups(dead) == {}
    assert Counter(found) == Counter(kept)
    want_dead = poison + (flaky if attempts == 1 else [])
    assert sorted(dead) == sorted(want_dead), app_log[-3000:]
    assert open_transactions(kafka, sink) == 0
    assert open_transactions(kafka, dlq) == 0
    print("received", received, "of", count)


TOPIC_AUTHORIZATION_FAILED = 29


def test_recover_of_an_aborted_batch_is_not_replayed_later(
        proxied: tuple[Kafka, object], names: Callable[[str], str], start_stream_app: StartStreamApp) -> None:
    """Partition 0: ok, ok, poison (maxAttempts=1, DLQ). The outputs' topic refuses sends (an ACL not there yet),
    so the batch aborts and partition 0 is rewound to 0. A later batch of partition 1 sends nothing (filtered):
    it must not commit partition 0 past the two ok records that never reached the output. Then kill -9 and
    start again with the ACL in place: both ok records must come out."""
    kafka, proxy = proxied
    source, sink, group = kafka.create(names("in"), 2), kafka.create(names("out")), names("g")
    dlq = kafka.create(names("dlq"), 2)
    proxy.refuse(sink, TOPIC_AUTHORIZATION_FAILED)
    kafka.produce(source, [b"ok-0", b"ok-1", b"poison-2"], partition=0)
    args = (PREFIX + names("tx-"), INDEX + "0", *DLQ,
            f"--spring.cloud.stream.kafka.bindings.input.consumer.dlqName={dlq}",
            "--spring.cloud.stream.bindings.input.consumer.maxAttempts=1")
    env = {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap}
    app = start_stream_app("attacks", source, {"output": sink}, *args, group=group, env=env)
    app.wait_for_log(r"the batch's transaction is aborted", 60)
    kafka.produce(source, [b"drop-0"], partition=1)  # a batch that sends nothing, so commits
    wait_for(lambda: kafka.committed(group).get(1, 0) >= 1, 30, "partition 1 committed")
    aborts = app.log.count("the batch's transaction is aborted")
    wait_for(lambda: app.log.count("the batch's transaction is aborted") > aborts, 30, "partition 0 aborted again")
    committed = kafka.committed(group)
    app.kill()  # kill -9
    proxy.allow(sink)
    again = start_stream_app("attacks", source, {"output": sink}, *args, group=group, env=env)
    wait_for(kafka.caught_up(group, {0: 3, 1: 1}), 60, "everything committed")
    found = visible(kafka, sink, 2, 10)
    dead = visible(kafka, dlq, 1, 10)
    assert again.stop() == 0
    assert (sorted(found), dead, committed.get(0, 0)) == ([b"0-ko", b"1-ko"], [b"poison-2"], 0), \
        f"outputs {found} (ok-0, ok-1 lost), dead letters {dead}, partition 0 committed at {committed.get(0)} " \
        "while nothing of it was output"


conftest.STEPS["batch-poison"] = ("tests/steps/python_batch_poison.py", ("output",))
SMALL = 100_000
LIMITS = (f"--spring.cloud.stream.kafka.binder.producerProperties.max.request.size={SMALL}",
          f"--spring.cloud.stream.kafka.binder.consumerProperties.fetch.max.bytes={SMALL}")
BATCH = ("--spring.cloud.stream.bindings.input.consumer.batchMode=true",)


@pytest.mark.parametrize("kind", ["attacks", "batch-poison"])
def test_a_dead_letter_copy_too_large_for_its_trace_is_truncated_in_a_transaction(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp, kind: str) -> None:
    """A poison record that fits the producer's max.request.size, but not with its stack trace in the DLQ copy:
    without transactions the copy goes again with the trace's last line. With them it must too, per record and
    in batch mode (where the copy is in the batch's transaction); the records after it must come out."""
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    dlq = kafka.create(names("dlq"))
    poison = b"poison" + b"a" * (SMALL - 1400)
    ends = kafka.produce(source, [b"before", poison, b"after"], headers=[("contentType", b'"text/plain"')])
    app = start_stream_app(kind, source, {"output": sink}, PREFIX + names("tx-"), INDEX + "0", *DLQ, *LIMITS,
                           *(BATCH if kind.startswith("batch") else ()),
                           f"--spring.cloud.stream.kafka.bindings.input.consumer.dlqName={dlq}",
                           "--spring.cloud.stream.bindings.input.consumer.maxAttempts=1", group=group)
    try:
        wait_for(kafka.caught_up(group, ends), 45, "all three records committed")
    finally:
        log = app.log
        app.stop()
    dead = visible(kafka, dlq, 1, 10)
    assert [len(v) for v in dead] == [len(poison)]
    assert sorted(visible(kafka, sink, 2, 10)) == [b"erofeb", b"retfa"]
    assert log.count("could not be sent") <= 1, log[-3000:]


END_TXN, TXN_OFFSET_COMMIT = 26, 28


@pytest.mark.parametrize("muted", [END_TXN, TXN_OFFSET_COMMIT])
def test_sigterm_while_the_coordinator_does_not_answer_ends_within_10_s(
        proxied: tuple[Kafka, object], names: Callable[[str], str], start_stream_app: StartStreamApp,
        muted: int, client: str, request: pytest.FixtureRequest) -> None:
    """The transaction coordinator stops answering EndTxn (or TxnOffsetCommit): a commit hangs. SIGTERM must still
    end the app within Kubernetes' 10 s, and what it had sent must not be visible (nothing committed)."""
    kafka, proxy = proxied
    source, sink, app = committing_processor(kafka, names, start_stream_app, b"one")
    proxy.mute(muted)
    kafka.produce(source, [b"two"])
    wait_for(lambda: proxy.swallowed > 0, 30, "the commit waiting for its answer")
    started = time.monotonic()
    code = app.stop(timeout=20)
    took = time.monotonic() - started
    assert took < 11, f"SIGTERM took {took:.1f} s"  # the drain's watchdog ends a hung commit at 9.5 s
    assert visible(kafka, sink, 1, 2) == [b"eno"]
    assert code in (0, 1)
