"""Batch mode on Tansu, each Kafka client, against what a user's function may do at the edges: odd BatchError
indexes, results that are not lists, back-offs longer than a poll's time, failures across partitions."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from conftest import Kafka
from devkit.apps import App
from devkit.waiting import wait_for

TEXT = [("contentType", b'"text/plain"')]
BATCH = ("--spring.cloud.stream.bindings.input.consumer.batch-mode=true",
         "--spring.cloud.stream.bindings.input.consumer.maxAttempts=2",
         "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval=10",
         "--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true")
# Back-offs of 3 s within a poll's 4 s (half of max.poll.interval.ms): each retry waits for the next poll.
SLOW = ("--spring.cloud.stream.bindings.input.consumer.maxAttempts=4",
        "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval=3000",
        "--spring.cloud.stream.bindings.input.consumer.backOffMaxInterval=3000",
        "--spring.cloud.stream.kafka.binder.consumerProperties.max.poll.interval.ms=8000")


def _run(kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App], edge: str,
         values: list[bytes], *extra: str, partitions: int = 1, timeout: float = 90,
         headers: list[tuple[str, bytes]] = TEXT) -> tuple[list[bytes], list[bytes], App]:
    """Run the edge's step until every record is committed: (outputs, dead letters, app)."""
    source, sink, group = kafka.create(names("in"), partitions), kafka.create(names("out")), names("g")
    dlq = kafka.create(f"error.{source}.{group}")
    ends = kafka.produce(source, values, headers=headers,
                         partition=(lambda i: i * partitions // len(values)) if partitions > 1 else None)
    app = start_stream_app("batch-edges", source, {"output": sink}, *BATCH, *extra, group=group, env={"EDGE": edge})
    wait_for(lambda: kafka.caught_up(group, ends)() or app.process.poll() is not None, timeout, "all committed")
    assert app.process.poll() is None, app.log[-3000:]
    dead = [r.value for r in kafka.read(dlq, 0, timeout=2, settle=1.0)]
    out = [r.value for r in kafka.read(sink, 0, timeout=2, settle=1.0)]
    return out, dead, app


@pytest.mark.parametrize("edge", ["float_index", "negative_index"])
def test_a_batch_error_whose_index_is_not_one_of_the_list_fails_the_whole_batch(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App], edge: str) -> None:
    """Not an index of the list (a float, a negative one): the whole batch failed, as spring-kafka treats an
    index out of range; never a crash, never the wrong record blamed alone."""
    values = [b"a", b"b", b"poison"]
    out, dead, app = _run(kafka, names, start_stream_app, edge, values)
    assert sorted(dead) == sorted(values)
    assert out == []
    assert "is not an index of the batch (0 to 2): the whole batch failed" in app.log
    assert app.stop() == 0


@pytest.mark.parametrize("edge", ["tuple", "generator"])
def test_a_tuple_or_an_iterator_is_the_functions_list(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App], edge: str) -> None:
    values = [f"v{i}".encode() for i in range(10)]
    out, dead, app = _run(kafka, names, start_stream_app, edge, values)
    assert (sorted(out), dead) == (sorted(v[::-1] for v in values), [])
    assert app.stop() == 0


def test_a_shorter_list_is_the_batchs_outputs_with_the_first_records_headers(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    kafka.produce(source, [b"keep1", b"drop", b"keep2"], headers=[*TEXT, ("correlation", b"abc")])
    app = start_stream_app("batch-edges", source, {"output": sink}, *BATCH, group=group, env={"EDGE": "filter"})
    out = kafka.read(sink, 2, settle=1.0)
    assert [r.value for r in out] == [b"1peek", b"2peek"]
    assert [dict(r.headers).get("correlation") for r in out] == [b"abc", b"abc"]
    assert app.stop() == 0


def test_attempts_outlive_a_poll_a_batch_always_failing_is_dead_lettered_after_max_attempts(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    values = [f"v{i}".encode() for i in range(5)]
    out, dead, app = _run(kafka, names, start_stream_app, "always_fail", values, *SLOW)
    assert (out, sorted(dead)) == ([], values)
    assert app.log.count("CALL 5") == 4  # maxAttempts, across polls
    assert app.stop() == 0


def test_a_failure_after_a_batch_error_across_partitions_commits_nothing_unfinished(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """BatchError at the first record of the second partition, then every call fails and backs off past the
    poll's time: every record still comes out or is dead-lettered before its offset is committed."""
    values = [f"a{i}".encode() for i in range(5)] + [f"b{i}".encode() for i in range(5)]
    out, dead, app = _run(kafka, names, start_stream_app, "other_partition", values, *SLOW, partitions=2,
                          timeout=120)
    assert sorted([v[::-1] for v in out] + dead) == sorted(values)
    assert app.stop() == 0


def test_a_batch_error_at_the_end_of_every_call_on_a_large_poll_dead_letters_each_record(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """Each call blames its last record: 3,000 calls on shrinking lists in one poll, no recursion limit."""
    values = [f"v{i:04d}".encode() for i in range(3000)]
    out, dead, app = _run(kafka, names, start_stream_app, "blame_last", values,
                          "--spring.cloud.stream.bindings.input.consumer.maxAttempts=1",
                          "--spring.cloud.stream.kafka.binder.consumerProperties.max.poll.records=3000")
    assert (out, sorted(dead)) == ([], values)
    assert app.stop() == 0


def test_failures_count_once_a_record_and_health_stays_up(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """A text that does not convert (its own error path) and a whole batch failed: each record counted once."""
    values = [f"v{i:04d}".encode() for i in range(600)]
    values[100], values[300] = b"\xffnot utf-8", b"poison"
    out, dead, app = _run(kafka, names, start_stream_app, "float_index", values)
    assert b"\xffnot utf-8" in dead
    assert b"poison" in dead
    assert len(out) + len(dead) == len(values)
    assert app.metric("polyglot_records_failed_total") == len(dead)
    assert json.loads(app.get("/actuator/health")[1])["status"] == "UP"
    assert app.stop() == 0
