"""Paused partitions: why each waits, from which offset it goes on, and its back-off (health reads them); the
partitions a client found damaged records in are stalled here too."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PAUSE_FIRST, PAUSE_LONGEST = 1.0, 30.0  # a stalled partition's back-off, doubling in between (s)
TP = tuple[str, int]  # a (topic, partition)


@dataclass
class Stalled:
    """A paused partition: rewound after the broker refused a send, or held at refused dead-letter copies."""

    resume: int  # the offset it continues from
    reason: str
    due: float
    copies: list[Any] = field(default_factory=list)  # Deliveries, oldest first: they must reach the DLQ first

    def first(self) -> int:
        """Where it is stalled: its oldest held copy's offset, else where it resumes."""
        return min((d.record.offset for d in self.copies), default=self.resume)


class Stalls:
    """The stalled partitions; ``pause`` and the budget are the consumer's and the loop's."""

    def __init__(self) -> None:
        self.stalled: dict[TP, Stalled] = {}
        self._pauses: dict[TP, float] = {}  # the last back-off of a partition that keeps stalling
        self.pause: Callable[[TP], None] = lambda _tp: None

    def stall(self, tp: TP, resume: int, reason: str, budget: float, copies: list[Any] | None = None) -> None:
        """Pause a partition; it is tried again after a back-off that doubles while it keeps stalling."""
        pause = min(self._pauses.get(tp, PAUSE_FIRST / 2) * 2, PAUSE_LONGEST, budget)
        self._pauses[tp] = pause
        self.stalled[tp] = Stalled(resume, reason, time.monotonic() + pause, copies or [])
        self.pause(tp)

    def moved(self, tp: TP) -> None:
        """The partition moved on: its next stall starts from the first back-off again."""
        self._pauses.pop(tp, None)

    def due(self) -> dict[TP, Stalled]:
        now = time.monotonic()
        return {tp: s for tp, s in self.stalled.items() if s.due <= now}

    def wait(self, longest: float) -> float:
        """An idle poll's wait (s): ``longest``, shorter when a stalled partition is due sooner."""
        due = min((s.due for s in self.stalled.values()), default=float("inf"))
        return max(0.0, min(longest, due - time.monotonic()))

    def forget(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self.stalled.pop(tp, None)
            self._pauses.pop(tp, None)

    def damaged(self, consumer: Any, batch: Mapping[TP, list[Any]], budget: float) -> Mapping[TP, list[Any]]:
        """Partitions whose fetched data the client found damaged (a CRC mismatch, a batch that cannot be
        decompressed): stalled at the damage, or at their first record of this batch, so nothing at or after it is
        passed on; fetched again after a back-off. Records before the damage are processed first: the stall then
        waits for the next poll. A partition already held (rewound) meets the damage again when fetched again."""
        damaged, consumer.damaged = consumer.damaged, {}
        batch = dict(batch)
        for tp, (offset, reason) in damaged.items():
            records = batch.pop(tp, None)
            if tp in self.stalled:
                continue
            if records and records[0].offset < offset:
                batch[tp] = [record for record in records if record.offset < offset]
                consumer.damaged[tp] = (offset, reason)
                continue
            resume = min(offset, records[0].offset) if records else offset
            log.error("Records of %s-%d from offset %d cannot be read (%s): fetching them again from offset %d after "
                      "a back-off; nothing from there on is passed on", *tp, offset, reason, resume)
            consumer.seek(tp, resume)
            self.stall(tp, resume, f"fetched records damaged ({reason})", budget)
        return batch

    def check(self) -> str | None:
        """Health: DOWN while a partition is paused because the broker refuses its sends or dead-letter copies."""
        return "; ".join(f"{topic}-{partition} stalled at offset {s.first()}: {s.reason}"
                         for (topic, partition), s in sorted(self.stalled.items())) or None
