"""A reference loop's stalls: its waits for records that came back empty or took over 100 ms, reported at exit.

A loop takes what is queued without waiting and waits (briefly) only when nothing is; each such wait is
timed here. Waits before the first record (the group join, the first fetch) are not counted: throughput is
measured from the first output record. ``report()`` prints one JSON line on stdout, which ``bench/run.py``
reads into the results.
"""

import json
import time

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
