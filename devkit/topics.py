"""Read a topic from the beginning without a consumer group (no group join to wait for)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from .waiting import wait_for


def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 60, settle: float = 0.0,
               until: Callable[[list[Any]], bool] | None = None) -> list[Any]:
    """Records of ``topic`` until ``count`` arrived (and ``until`` holds of them) or ``timeout`` s passed, then
    ``settle`` s more for extras. ``until`` is for reads where duplicates can make up the count early."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = wait_for(lambda: consumer.partitions_for_topic(topic), 30, f"topic {topic}")
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while (len(records) < count or (until and not until(records))) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        settle_until = time.monotonic() + settle
        while time.monotonic() < settle_until:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
