"""The lag rows of ``make bench``: one and two processors draining the backlog, as a scale-out on lag would.

A new group of processors (the lag gauge computed every second) starts on the whole input, a backlog of every
record on 4 partitions; the row's time runs from their exec to the group's commit of the last record (start-up and
group joins included). The group's committed offsets are read from the broker: on Tansu a partition's end offset
is its last batch's base offset + 1, so the gauge itself does not fall to 0 there (on Kafka it does). The
throughput table shows the records over that time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient

from devkit.waiting import wait_for

ROWS = {1: "backlog drain (1 instance)", 2: "backlog drain (2 instances)"}  # no comma: BENCH_ONLY splits at them
LAG_EVERY_SECOND = ("--spring.cloud.stream.kafka.binder.metrics.offsetLagMetricsInterval=1s",
                    "--spring.cloud.stream.kafka.binder.metrics.defaultOffsetLagMetricsEnabled=false")
# name, top row, bottom row, goal (None: reported only), for ``report.targets``: all ">=".
RATIOS: list[tuple[str, str, str, float | None]] = [(f"{ROWS[2]} / {ROWS[1]} (records/s)", ROWS[2], ROWS[1], None)]


def backlog(records: int, partitions: int) -> dict[int, int]:
    """The end offset of each partition of the input, as ``run.Bench.produce`` splits it."""
    share = -(-records // partitions)
    return {p: max(0, min(records, (p + 1) * share) - p * share) for p in range(partitions)}


def drain(bench: Any, source: str, instances: int, records: int, partitions: int) -> float:
    """Seconds from the exec of ``instances`` processors in a new group to its commit of the whole input."""
    sink, group, ends = bench.sink(), bench.name("group"), backlog(records, partitions)
    admin = KafkaAdminClient(bootstrap_servers=bench.broker.bootstrap)
    started = time.monotonic()
    apps = [bench.app("processor", source, {"output": sink}, group, *LAG_EVERY_SECOND) for _ in range(instances)]
    try:
        wait_for(lambda: _committed(admin, group, source) == ends, 600, "the backlog drained", interval=0.1)
        return time.monotonic() - started
    finally:
        for app in apps:
            app.stop()
        admin.close()


def _committed(admin: KafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    offsets = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


def rows(bench: Any, source: str, records: int, partitions: int,
         repeat: Callable[[str, Callable[[], float]], None], seconds: dict[str, list[float]]) -> None:
    """Both rows through run.py's ``repeat`` (records/s over the drain); the times go into ``seconds``."""
    for instances, name in ROWS.items():
        def run(instances: int = instances, name: str = name) -> float:
            taken = drain(bench, source, instances, records, partitions)
            seconds.setdefault(name, []).append(round(taken, 2))
            return records / taken
        repeat(name, run)
