"""Exactly-once with ``transactionIdPrefix``, on both Kafka clients: what a read_committed consumer sees of a
transactional step's outputs (``devkit/committed_reader.py``: Tansu does not filter aborted records), its group's
offsets, and its transactions after a kill -9, a failure, a dead letter, a fence and a SIGTERM."""

from __future__ import annotations

import re
import signal
from collections import Counter
from collections.abc import Callable

import pytest
from test_faults_edges import REFUSED, TEXT, TOPIC_AUTHORIZATION_FAILED, delivery_down, health
from test_stream_apps import expected, latest_assignment, sinks_for

from conftest import STREAM_APPS, Figures, Kafka
from devkit.apps import App
from devkit.committed_reader import read_committed, read_logs
from devkit.kafka_proxy import KafkaProxy
from devkit.waiting import wait_for

PREFIX = "--spring.cloud.stream.kafka.binder.transaction.transactionIdPrefix="
BACK_OFF = "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval="
StartStreamApp = Callable[..., object]


def committed_outputs(kafka: Kafka, sinks: dict[str, str], count: int, timeout: float = 60) -> list[tuple[str, bytes]]:
    """Every committed output record as (binding, payload), once ``count`` are visible (or the deadline)."""
    found: list[tuple[str, bytes]] = []

    def enough() -> bool:
        found[:] = [(binding, r.value) for binding, topic in sinks.items()
                    for r in read_committed(kafka.bootstrap, topic, 0, 10)]
        return len(found) >= count

    wait_for(enough, timeout, f"{count} committed outputs")
    return found


def test_a_transactional_processor_commits_each_output_once_with_its_offsets(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp) -> None:
    count, partitions = 2_000, 2
    source, sinks, group = kafka.create(names("in"), partitions), sinks_for("processor", names), names("g")
    values = [f"11/23/26 10:00:00 #{i:05d}".encode() for i in range(count)]
    ends = kafka.produce(source, values, partition=lambda i: i % partitions)
    app = start_stream_app("processor", source, sinks, "--reversestring=true", PREFIX + names("tx-"), group=group)
    wait_for(kafka.caught_up(group, ends), 60, "the group to commit everything")
    found = committed_outputs(kafka, sinks, count)
    assert Counter(found) == Counter(expected("processor", v) for v in values)
    assert all(log.open_count == 0 for log in read_logs(kafka.bootstrap, sinks["output"]).values())
    assert app.stop() == 0


# -- helpers -------------------------------------------------------------------------------------
def visible(kafka: Kafka, sinks: dict[str, str]) -> Counter[tuple[str, bytes]]:
    """What a read_committed consumer reads of every output, as (binding, payload) counts."""
    return Counter((binding, r.value) for binding, topic in sinks.items()
                   for r in read_committed(kafka.bootstrap, topic))


def exactly_once(kafka: Kafka, sinks: dict[str, str], want: list[tuple[str, bytes]], timeout: float = 60) -> None:
    """Every one of ``want`` visible, then each exactly once and nothing else."""
    wanted = Counter(want)
    found = wait_for(lambda: (seen := visible(kafka, sinks)).keys() >= wanted.keys() and seen, timeout,
                     "every output committed")
    duplicates = {key: n for key, n in found.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} outputs committed more than once, e.g. {list(duplicates)[:3]}"
    assert found == wanted


def open_records(kafka: Kafka, *topics: str) -> int:
    """Records of transactions still open (no marker) in ``topics``."""
    return sum(log.open_count for topic in topics for log in read_logs(kafka.bootstrap, topic).values())


def aborted(kafka: Kafka, topic: str) -> list[bytes | None]:
    return [r.value for log in read_logs(kafka.bootstrap, topic).values() for r in log.aborted]


def received(app: App) -> float:
    return app.metric("polyglot_records_received_total", binding="input")


def attempt_times(app: App, payload: str) -> list[float]:
    return [float(t) for t in re.findall(rf"Attempt \d+ at {re.escape(payload)} at ([\d.]+)", app.log)]


def stream(count: int, fail: dict[int, str] | None = None) -> list[bytes]:
    """``count`` distinct payloads, ``fail`` placing ``fail-<how>-<n>`` ones (for the flaky step)."""
    fail = fail or {}
    return [(f"fail-{fail[i]}-{i}" if i in fail else f"r-{i:05d}").encode() for i in range(count)]


# -- 1: kill -9, then a restart of the same transactional.id --------------------------------------
@pytest.mark.parametrize("kind", sorted(STREAM_APPS))
def test_kill_9_mid_stream_then_restart_commits_every_output_exactly_once(
        kind: str, kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp,
        figures: Figures) -> None:
    count, partitions = 20_000, 2
    source, sinks, group, tx = kafka.create(names("in"), partitions), sinks_for(kind, names), names("g"), names("tx-")
    values = [f"11/23/26 10:00:00 #{i:05d}".encode() for i in range(count)]
    ends = kafka.produce(source, values, partition=lambda i: i % partitions)
    first = start_stream_app(kind, source, sinks, "--reversestring=true", PREFIX + tx, group=group)
    wait_for(lambda: received(first) >= count // 10, 90, "a tenth of the records")
    first.process.kill()
    first.process.wait(10)
    committed = sum(kafka.committed(group).values())
    assert committed < count, "kill -9 should land in the middle of the records"
    left_open = open_records(kafka, *sinks.values())
    second = start_stream_app(kind, source, sinks, "--reversestring=true", PREFIX + tx, group=group)
    wait_for(kafka.caught_up(group, ends), 120, "the restarted app to commit everything")
    exactly_once(kafka, sinks, [expected(kind, v) for v in values])
    assert open_records(kafka, *sinks.values()) == 0
    assert second.stop() == 0
    figures.add(f"{kind}: committed when killed, output records left open", f"{committed}, {left_open}")


# -- 2: a failure with attempts left aborts the batch ---------------------------------------------
def test_a_failure_with_attempts_left_aborts_the_batch_and_succeeds_on_a_later_attempt(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp) -> None:
    source, sink, group = kafka.create(names("in")), names("out"), names("g")
    values = stream(40, {20: "2"})
    kafka.produce(source, values)
    app = start_stream_app("flaky", source, {"output": sink}, PREFIX + names("tx-"), BACK_OFF + "500", group=group)
    wait_for(kafka.caught_up(group, {0: 40}), 60, "every record committed")
    exactly_once(kafka, {"output": sink}, [("output", v) for v in values])
    dropped = aborted(kafka, sink)
    assert 1 <= dropped.count(b"r-00000") <= 2, "a failed attempt aborts the batch's transaction"
    assert set(dropped) <= set(values[:20])
    assert open_records(kafka, sink) == 0
    first, second, third = attempt_times(app, "fail-2-20")
    assert second - first >= 0.4  # 500 ms
    assert third - second >= 0.8  # then doubled
    assert app.stop() == 0


# -- 3: a record that always fails: its dead letter in a transaction of its own -------------------
def test_a_record_that_always_fails_is_dead_lettered_once_and_its_offset_committed(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp) -> None:
    source, sink, group = kafka.create(names("in")), names("out"), names("g")
    values = stream(30, {10: "always"})
    kafka.produce(source, values)
    app = start_stream_app("flaky", source, {"output": sink}, PREFIX + names("tx-"), BACK_OFF + "100",
                           "--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true",
                           "--spring.cloud.stream.bindings.input.consumer.maxAttempts=2", group=group)
    wait_for(kafka.caught_up(group, {0: 30}), 60, "every record committed")
    dlq = f"error.{source}.{group}"
    exactly_once(kafka, {"dlq": dlq}, [("dlq", b"fail-always-10")])
    [dead] = read_committed(kafka.bootstrap, dlq)
    headers = dict(dead.headers)
    assert headers["x-exception-fqcn"] == b"builtins.RuntimeError"
    assert b"chosen failure of fail-always-10" in headers["x-exception-message"]
    assert b"Traceback" in headers["x-exception-stacktrace"]
    exactly_once(kafka, {"output": sink}, [("output", v) for i, v in enumerate(values) if i != 10])
    assert open_records(kafka, sink, dlq) == 0
    assert len(attempt_times(app, "fail-always-10")) == 2
    assert app.metric("polyglot_records_dead_lettered_total") == 1
    assert app.stop() == 0


# -- 4: a second instance of the same transactional.id fences the first ----------------------------
def test_a_second_instance_with_the_same_transactional_id_fences_the_first(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp) -> None:
    source, sink, group = kafka.create(names("in"), 2), names("out"), names("g")
    same = (PREFIX + names("tx-"), "--spring.cloud.stream.instanceIndex=3")
    before, after = stream(100), stream(200)[100:]
    kafka.produce(source, before, partition=lambda i: i % 2)
    first = start_stream_app("flaky", source, {"output": sink}, *same, group=group)
    wait_for(kafka.caught_up(group, {0: 50, 1: 50}), 60, "the first batch committed")
    second = start_stream_app("flaky", source, {"output": sink}, *same, group=group)
    for app in (first, second):
        wait_for(lambda app=app: latest_assignment(app).count(source) == 1, 60, "one partition each")
    kafka.produce(source, after, partition=lambda i: i % 2)
    assert first.wait(60) != 0
    stopping = first.wait_for_log(r"ERROR .* Stopping: (.*)").group(1)
    assert re.search("fenc", stopping, re.IGNORECASE), stopping
    wait_for(kafka.caught_up(group, {0: 100, 1: 100}), 60, "the second to commit everything")
    exactly_once(kafka, {"output": sink}, [("output", v) for v in before + after])
    assert open_records(kafka, sink) == 0
    assert second.stop() == 0


# -- 5: SIGTERM ------------------------------------------------------------------------------------
def test_sigterm_mid_stream_leaves_no_transaction_open_and_a_restart_finishes_exactly_once(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp) -> None:
    count = 20_000
    source, sinks, group, tx = kafka.create(names("in"), 2), sinks_for("processor", names), names("g"), names("tx-")
    values = [f"11/23/26 10:00:00 #{i:05d}".encode() for i in range(count)]
    ends = kafka.produce(source, values, partition=lambda i: i % 2)
    first = start_stream_app("processor", source, sinks, "--reversestring=true", PREFIX + tx, group=group)
    wait_for(lambda: received(first) > 0, 60, "first records")
    assert first.stop(signal.SIGTERM, timeout=15) == 0
    assert 0 < sum(kafka.committed(group).values()) < count, "SIGTERM should land in the middle of the records"
    assert open_records(kafka, sinks["output"]) == 0
    second = start_stream_app("processor", source, sinks, "--reversestring=true", PREFIX + tx, group=group)
    wait_for(kafka.caught_up(group, ends), 120, "the restart to commit everything")
    exactly_once(kafka, sinks, [expected("processor", v) for v in values])
    assert second.stop() == 0


def test_sigterm_in_a_back_off_commits_what_is_done_and_a_restart_finishes_exactly_once(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp) -> None:
    source, sink, group, tx = kafka.create(names("in")), names("out"), names("g"), names("tx-")
    values = stream(30, {12: "1"})
    kafka.produce(source, values)
    args = (PREFIX + tx, BACK_OFF + "20000")
    first = start_stream_app("flaky", source, {"output": sink}, *args, group=group)
    first.wait_for_log(r"failed \(RuntimeError: chosen failure")
    wait_for(lambda: open_records(kafka, sink) >= 12, 30, "the records before it sent again, in the back-off")
    assert first.stop(signal.SIGTERM, timeout=15) == 0
    assert kafka.committed(group) == {0: 12}, "the records before the one in its back-off"
    assert open_records(kafka, sink) == 0
    exactly_once(kafka, {"output": sink}, [("output", v) for v in values[:12]])
    start_stream_app("flaky", source, {"output": sink}, *args, group=group)
    wait_for(kafka.caught_up(group, {0: 30}), 60, "the restart to commit everything")
    exactly_once(kafka, {"output": sink}, [("output", v) for v in values])


# -- 6: sends refused by the broker ----------------------------------------------------------------
def test_sends_refused_for_a_while_abort_and_stall_then_everything_commits_exactly_once(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], start_processor: Callable[..., App],
        client: str) -> None:
    kafka, proxy = proxied
    source, sink, group = kafka.create(names("in"), 2), kafka.create(names("out")), names("g")
    proxy.refuse(sink, TOPIC_AUTHORIZATION_FAILED)
    values = [f"record {i:03d}".encode() for i in range(200)]
    kafka.produce(source, values, headers=[("contentType", TEXT)], partition=lambda i: i % 2)
    app = start_processor(source, sink, "--reversestring=true", PREFIX + names("tx-"), group=group,
                          env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    wait_for(lambda: REFUSED[client] in delivery_down(app), 60, "health DOWN with the reason")
    wait_for(lambda: app.log.count("the batch's transaction is aborted; retrying") >= 2, 60, "aborts, again")
    assert kafka.committed(group) == {}
    assert visible(kafka, {"output": sink}) == Counter()
    proxy.allow(sink)
    done = kafka.caught_up(group, {0: 100, 1: 100})
    wait_for(lambda: app.process.poll() is not None or done(), 60, "everything committed once allowed")
    assert app.process.poll() is None, re.findall(r"Stopping: .*", app.log)
    exactly_once(kafka, {"output": sink}, [("output", v[::-1]) for v in values])
    assert open_records(kafka, sink) == 0
    wait_for(lambda: health(app)[0] == 200, 30, "health UP")
    assert app.stop() == 0
