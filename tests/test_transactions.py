"""Exactly-once with ``transactionIdPrefix``, on both Kafka clients: what a read_committed consumer sees of a
transactional step's outputs (``devkit/committed_reader.py``: Tansu does not filter aborted records), its group's
offsets, and its transactions after a kill -9, a failure, a dead letter, a fence and a SIGTERM."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from test_stream_apps import expected, sinks_for

from conftest import Kafka
from devkit.committed_reader import read_committed, read_logs
from devkit.waiting import wait_for

PREFIX = "--spring.cloud.stream.kafka.binder.transaction.transactionIdPrefix="
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
