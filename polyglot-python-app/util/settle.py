"""After the sends: flush, read what failed, dead-letter or rewind, commit up to the first unfinished record.

At-least-once: a partition's offset is committed only up to its first record whose output (or
dead-letter copy) the broker has not acknowledged. A record that keeps failing, or that the client or
broker refuses for its own sake (too large, malformed), goes to the DLQ or is logged and skipped, so
one bad record never blocks a partition. A send refused for any other reason (authorisation, the topic,
the cluster, a timeout) rewinds its partition; a dead-letter copy the broker refuses holds its
partition. Either way the partition pauses with back-off while the others flow (``stalls.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .client_errors import FatalError
from .metrics import ERROR_CHANNEL, Metrics
from .shutdown import Shutdown
from .stalls import TP, Stalls

log = logging.getLogger(__name__)

INPUT = "input"  # the input binding, and its channel's name in the metrics
Runs = dict[TP, list[tuple[Any, Any]]]  # the straight pass's sends per partition: (record, its send's handle)


class RewindError(Exception):
    """The broker refused a send for a reason that is not the record's: process it again, later."""

    def __init__(self, offset: int, error: Exception) -> None:
        super().__init__(offset, error)
        self.offset, self.error = offset, error


@dataclass(slots=True)
class Delivery:
    """One record's send: its output, or (``cause`` set) its dead-letter copy; no future and no refusal: skipped."""

    record: Any
    future: Any = None
    refused: Exception | None = None  # the client refused the send at once
    cause: Exception | None = None  # a dead-letter copy: the record's own failure, for its x-exception-* headers
    trace: int | None = None  # a dead-letter copy: the bytes of stack trace it could carry (0: only the last line)

    def failure(self, outcome: Callable[[Any], Exception | None]) -> Exception | None:
        """None once acknowledged (or skipped); else why not, as the transport's ``outcome`` reads the future."""
        if self.refused is not None:
            return self.refused
        return None if self.future is None else outcome(self.future)


def flush(producers: Mapping[str, Any], until: float, shutdown: Shutdown) -> None:
    """Wait for every send until ``until`` (after SIGTERM, the shutdown budget); later ones count as failed."""
    for producer in producers.values():
        while True:
            if shutdown.stop.is_set():  # a SIGTERM during the wait shortens it to the drain's budget
                until = min(until, shutdown.deadline)
            if producer.flush(max(0.1, min(1.0, until - time.monotonic()))):
                break
            if time.monotonic() > until:
                log.warning("Sends not acknowledged in time are left uncommitted: they will be sent again")
                return


class Settlement:
    """Settles a batch's sends and dead-letter copies, commits, and restarts stalled partitions when due."""

    def __init__(self, client: Any, consumer: Any, producers: Mapping[str, Any], source: Any, metrics: Metrics,
                 stalls: Stalls, shutdown: Shutdown, budget: float) -> None:
        self.client, self.consumer, self.producers, self.source = client, consumer, producers, source
        self.metrics, self.channels, self.stalls, self.shutdown = metrics, metrics.channels, stalls, shutdown
        self.budget = budget  # the longest a batch may take: half of max.poll.interval.ms
        self.irregular = False  # a record of this batch failed or was dead-lettered: every send is settled
        self.given_up = 0  # records of this batch that failed for good

    # -- failures ---------------------------------------------------------------------------------
    def give_up(self, record: Any, error: Exception, attempts: int | None = None, counted: bool = False) -> Delivery:
        """The record failed for good (counted once): its dead-letter copy, or a skip.

        As in Spring, the failure is sent to the error channel; ``counted``: the input channel's failed
        send was counted already (a failure the function raised is counted with its attempt).
        """
        self.irregular = True
        self.given_up += 1
        self.metrics.failed.inc()
        self.channels.send(ERROR_CHANNEL, 1, 0.0)
        if attempts == 0 and not counted:  # refused before the function ran (a tombstone)
            self.channels.send(INPUT, 1, 0.0, error)
        attempts = self.source.max_attempts if attempts is None else attempts
        reason = f"{type(error).__name__}: {error}"
        if not self.source.dlq:
            log.error("Record %s skipped after %d attempt(s): %s", where(record), attempts, reason)
            return Delivery(record)
        log.warning("Record %s sent to dead-letter topic '%s' after %d attempt(s): %s", where(record),
                    self.source.dlq_topic(record.topic), attempts, reason)
        return self.dead_letter(record, error, None)

    def dead_letter(self, record: Any, cause: Exception, trace: int | None) -> Delivery:
        """Send a record's dead-letter copy; ``trace`` bounds its stack trace (None: what the request leaves)."""
        copy = Delivery(record, cause=cause, trace=trace)
        self.irregular = True
        try:
            copy.future, copy.trace = self.producers["dlq"].send(record, cause, trace)
        except FatalError:  # the transaction's producer cannot go on
            raise
        except Exception as error:  # noqa: BLE001 - a refused copy holds its partition, never ends the loop
            copy.refused = error
        return copy

    # -- settling ---------------------------------------------------------------------------------
    def complete(self, pending: dict[TP, list[Delivery]], until: float, runs: Runs | None = None) -> tuple[
            dict[TP, list[Delivery]], dict[TP, tuple[int, Exception]]]:
        """Flush and settle sends until nothing more can be sent now: ``(held, rewinds)``.

        Outputs the broker refused for the record's sake get their dead-letter copy; a copy refused for
        its size is sent again with only the stack trace's last line; copies still refused are ``held``.
        An output refused for any other reason rewinds its partition to it (later outputs are re-sent).
        ``runs``: the straight pass's sends, made Deliveries only when some send needs reading.
        """
        held: dict[TP, list[Delivery]] = {}
        rewinds: dict[TP, tuple[int, Exception]] = {}
        while pending or runs:
            flush(self.producers, until, self.shutdown)
            settled = [producer.settled() for producer in self.producers.values()]
            if all(settled) and not self.irregular:
                break  # every send acknowledged, none refused: no handle needs reading
            self.irregular = False
            if runs:  # the straight pass's sends come before the per-record path's
                made, runs = deliveries(runs), None
                pending = {tp: made.get(tp, []) + pending.get(tp, []) for tp in {**made, **pending}}
            again: dict[TP, list[Delivery]] = {}
            for tp, sends in pending.items():
                self._settle(tp, sends, again, held, rewinds)
            pending = again
        return held, rewinds

    def _settle(self, tp: TP, deliveries: list[Delivery], again: dict[TP, list[Delivery]],
                held: dict[TP, list[Delivery]], rewinds: dict[TP, tuple[int, Exception]]) -> None:
        for sent in deliveries:
            error = sent.failure(self.client.outcome)
            if error is None:
                if sent.cause is not None:
                    self.metrics.dead_lettered.inc()
            elif sent.cause is None and not self.client.about_the_record(error):
                rewinds[tp] = (sent.record.offset, error)
                return
            elif sent.cause is None:
                again.setdefault(tp, []).append(self.give_up(sent.record, error, attempts=1))
            elif self.client.too_large(error) and sent.trace != 0:
                again.setdefault(tp, []).append(self.dead_letter(sent.record, sent.cause, 0))
            else:
                log.error("Record %s could not be sent to dead-letter topic '%s' (%s): its partition waits until "
                          "it can", where(sent.record), self.source.dlq_topic(sent.record.topic), describe(error))
                sent.refused = error
                held.setdefault(tp, []).append(sent)

    def advance(self, batch: Mapping[TP, list[Any]], held: dict[TP, list[Delivery]],
                rewinds: dict[TP, tuple[int, Exception | None]]) -> None:
        """Commit each partition up to its first unfinished record; pause the ones that stalled."""
        offsets = {}
        for tp, records in batch.items():
            first, resume = records[0].offset, records[-1].offset + 1
            rewind, error = rewinds.get(tp, (resume, None))
            copies = sorted(held.get(tp, []), key=lambda d: d.record.offset)
            committed = min([rewind, *(d.record.offset for d in copies)])
            if committed > first:
                offsets[tp] = committed
            if rewind < resume:
                self.consumer.seek(tp, rewind)
            if copies:
                self._hold(tp, rewind, copies)
            elif error is not None:
                log.error("Sending records from %s-%d failed (%s); rewinding to offset %d to retry them",
                          *tp, describe(error), rewind)
                self.stalls.stall(tp, rewind, f"sends refused ({describe(error)})", self.budget)
            else:
                self.stalls.moved(tp)
        self.commit(offsets)

    def _hold(self, tp: TP, resume: int, copies: list[Delivery]) -> None:
        """Stall a partition at its refused dead-letter copies (oldest first)."""
        self.stalls.stall(tp, resume, f"dead-letter copies refused ({describe(copies[0].refused)})", self.budget,
                          copies)

    def restart_stalled(self) -> None:
        """Resend the held dead-letter copies that are due; resume partitions with nothing left to wait for."""
        if not self.stalls.stalled or not (due := self.stalls.due()):
            return
        until = time.monotonic() + self.budget
        resent = {tp: [self.dead_letter(d.record, d.cause, d.trace) for d in s.copies]
                  for tp, s in due.items() if s.copies}
        held, _ = self.complete(resent, until)
        offsets = {}
        for tp, stalled in due.items():
            copies = sorted(held.get(tp, []), key=lambda d: d.record.offset)
            if copies:
                offsets[tp] = copies[0].record.offset
                self._hold(tp, stalled.resume, copies)
                continue
            if stalled.copies:
                offsets[tp] = stalled.resume
                log.info("Every held record of %s-%d reached the dead-letter topic: the partition moves again", *tp)
            del self.stalls.stalled[tp]
            self.consumer.seek(tp, stalled.resume)
            self.consumer.resume(tp)
        self.commit(offsets)

    def commit(self, offsets: dict[TP, int]) -> None:
        if offsets and (reason := self.consumer.commit(offsets)):
            log.warning("Offsets not committed (%s): the records will be redelivered", reason)


def deliveries(runs: Runs) -> dict[TP, list[Delivery]]:
    """The straight pass's sends as Deliveries: made only when a flush says some send failed."""
    return {tp: [Delivery(record, handle) for record, handle in sends] for tp, sends in runs.items()}


def where(record: Any) -> str:
    return f"{record.topic}-{record.partition}@{record.offset}"


def describe(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}"
