"""How a reference loop takes records, and its stalls: waits for records that came back empty or took over 100 ms.

A loop takes what is queued without waiting and waits (briefly) only when nothing is (``consume`` on
librdkafka, ``poll`` on kafka-python); each such wait is timed here. Waits before the first record (the
group join, the first fetch) are not counted: throughput is measured from the first output record.
``report()`` prints one JSON line on stdout, which ``bench/run.py`` reads into the results.
"""

import json
import time
from typing import Any

WAIT = 0.1  # seconds a loop waits for one record when nothing is queued
LONG = 0.1  # a wait longer than this is a stall even when it brought records


class Stalls:
    def __init__(self) -> None:
        self.waits = self.stalls = 0
        self.waited = self.longest = 0.0

    def waited_since(self, started: float, found: bool, done: int) -> None:
        """One wait, begun at ``started`` (``time.perf_counter()``), that brought records or not."""
        if not done:
            return
        seconds = time.perf_counter() - started
        self.waits += 1
        self.waited += seconds
        self.longest = max(self.longest, seconds)
        if not found or seconds > LONG:
            self.stalls += 1

    def report(self) -> None:
        print(json.dumps({"stalls": self.stalls, "waits": self.waits, "waited_ms": round(self.waited * 1000, 1),
                          "longest_wait_ms": round(self.longest * 1000, 1)}), flush=True)

    def consume(self, consumer: Any, batch: int, done: int) -> list[Any]:
        """librdkafka: what is queued, up to ``batch``; when nothing is, the first record within WAIT and what
        queued behind it."""
        messages = consumer.consume(batch, 0)
        if messages:
            return messages
        started = time.perf_counter()
        messages = consumer.consume(1, WAIT)
        self.waited_since(started, bool(messages), done)
        return messages + consumer.consume(batch - 1, 0) if messages else messages

    def poll(self, consumer: Any, batch: int, done: int) -> dict[Any, list[Any]]:
        """kafka-python: what is fetched, up to ``batch``; when nothing is, a wait of at most WAIT."""
        records = consumer.poll(timeout_ms=0, max_records=batch)
        if records:
            return records
        started = time.perf_counter()
        records = consumer.poll(timeout_ms=int(WAIT * 1000), max_records=batch)
        self.waited_since(started, bool(records), done)
        return records
