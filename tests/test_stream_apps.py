"""What both stream apps (processor and router) owe the platform, on a real broker."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from conftest import STREAM_APPS, Kafka
from devkit.apps import App
from devkit.waiting import wait_for
from python_router_app import route

COUNT = 20_000
# The router ignores --reversestring, as any Spring app ignores a property it does not read.


def expected(kind: str, value: bytes) -> tuple[str, bytes]:
    """The output binding and payload each app makes of one input value."""
    if kind == "processor":
        return "output", value[::-1]
    binding = route(value.decode())
    return binding, f"{binding.capitalize()} timestamp: {value.decode()}".encode()


def sinks_for(kind: str, names: Callable[[str], str]) -> dict[str, str]:
    return {binding: names(binding) for binding in STREAM_APPS[kind][1]}


def read_outputs(kafka: Kafka, sinks: dict[str, str], count: int,
                 want: Iterable[tuple[str, bytes]] = ()) -> list[tuple[str, bytes]]:
    """Every output record as (binding, payload), once everything is expected to be there: ``count`` of them
    and, where duplicates could make up the count first, every one of ``want`` (or the read's deadline)."""
    wanted = set(want)
    out: list[tuple[str, bytes]] = []
    for binding, topic in sinks.items():
        values = {value for name, value in wanted if name == binding}
        out += [(binding, r.value) for r in kafka.read(topic, count if len(sinks) == 1 else count // len(sinks),
                                                        settle=1.0, until=covers(values))]
    return out


def covers(values: set[bytes]) -> Callable[[list[Any]], bool]:
    """A condition on records read so far: every one of ``values`` is among them."""
    return lambda records: not values or values <= {r.value for r in records}


@pytest.mark.parametrize("kind", sorted(STREAM_APPS))
def test_sigterm_mid_stream_loses_nothing_and_restart_reprocesses_nothing(
        kind: str, kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    source, sinks, group = kafka.create(names("in"), 2), sinks_for(kind, names), names("g")
    values = [f"11/23/26 09:00:00 #{i:05d}".encode() for i in range(COUNT)]
    ends = kafka.produce(source, values, partition=lambda i: i % 2)
    first = start_stream_app(kind, source, sinks, "--reversestring=true", group=group)
    wait_for(lambda: first.metric("polyglot_records_received_total", binding="input") > 0, 60, "first records")
    assert first.stop(signal.SIGTERM, timeout=10) == 0
    done_first = sum(kafka.committed(group).values())
    assert 0 < done_first < COUNT, "SIGTERM should land in the middle of the records"

    second = start_stream_app(kind, source, sinks, "--reversestring=true", group=group)
    wait_for(kafka.caught_up(group, ends), 120, "the restarted app to commit everything")
    assert second.metric("polyglot_records_received_total", binding="input") == COUNT - done_first
    want = [expected(kind, v) for v in values]
    out = read_outputs(kafka, sinks, COUNT, want)
    assert len(out) == COUNT
    assert sorted(out) == sorted(want)
    assert second.stop() == 0


@pytest.mark.parametrize("kind", sorted(STREAM_APPS))
def test_two_instances_in_one_group_split_partitions_and_process_everything_once(
        kind: str, kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    source, sinks, group = kafka.create(names("in"), 4), sinks_for(kind, names), names("g")
    first = start_stream_app(kind, source, sinks, "--reversestring=true", group=group)
    first.wait_for_log(r"Partitions assigned: \S")
    second = start_stream_app(kind, source, sinks, "--reversestring=true", group=group)
    for app in (first, second):
        wait_for(lambda app=app: latest_assignment(app).count(source) == 2, 60, "a 2-partition share each")
    values = [f"11/23/26 09:00:00 #{i:04d}".encode() for i in range(4000)]
    ends = kafka.produce(source, values, partition=lambda i: i % 4)
    wait_for(kafka.caught_up(group, ends), 90, "both instances to commit everything")
    assert sorted(read_outputs(kafka, sinks, 4000)) == sorted(expected(kind, v) for v in values)
    shares = [app.metric("polyglot_records_received_total", binding="input") for app in (first, second)]
    assert shares == [2000, 2000]
    assert first.stop() == 0
    assert second.stop() == 0


def latest_assignment(app: App) -> str:
    lines = [line for line in app.log.splitlines() if "Partitions assigned:" in line]
    return lines[-1] if lines else ""
