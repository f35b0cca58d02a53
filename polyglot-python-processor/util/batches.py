"""Batch mode: the function takes what one poll returned as a list, and returns a list, a value or None.

Each record is converted first (``values.py``): one that does not convert takes its own error path, and the
rest of the batch goes on. ``BatchError(index, cause)`` from the function, ``index`` an index of the list:
the records before it are done (a processor's are called again for their outputs), the one at it is tried
again (the records after it with it) until its attempts are spent, then takes its error path, and the rest
goes on. Any other exception (a BatchError whose index is not one of the list's included): the whole batch
again after the binding's back-off, then every record of it down the error path. Attempts and back-offs
outlive a poll: a batch whose back-off does not fit the time left goes on from there at the next poll.
What the function returned is sent by ``batch_outputs.py``.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .batch_outputs import BatchOutputs, Done, Item, Rewinds, skip
from .headers import inbound_content_type
from .message import Message, build
from .settle import INPUT
from .stalls import TP
from .values import ConversionError, Reader

log = logging.getLogger(__name__)


class BatchError(Exception):
    """Raised by a batch function: the records before ``index`` are done; the one at ``index`` failed (``cause``)."""

    def __init__(self, index: int, cause: BaseException | None = None) -> None:
        super().__init__(index, cause)
        self.index, self.cause = index, cause

    def __str__(self) -> str:
        return f"record {self.index} of the batch failed: {self.cause!r}" if self.cause else f"record {self.index}"


class Interrupted(Exception):  # noqa: N818 - a signal to the loop, not an error
    """SIGTERM, or the batch's time, arrived before a back-off ended: these partitions go on from these offsets."""

    def __init__(self, resume: dict[TP, int]) -> None:
        super().__init__(resume)
        self.resume = resume


Group = tuple[list[Item], float]  # records to call together, and when the call may start (monotonic)
Key = tuple[str, int, int]
Deferred = list[tuple[TP, Any, Exception, int, bool]]  # records given up: error, attempts, remembered if re-read


class BatchMode:
    """One batch call: conversion, the function with each record's attempts, then ``BatchOutputs``.

    A record given up is dead-lettered once the call ends, and only if no record before it in its partition
    is still pending: one the poll rewinds over is given up when read again (remembered, with its error)."""

    def __init__(self, binder: Any, read: Reader | None) -> None:
        self.binder, self.read = binder, read
        self.outputs = BatchOutputs(binder)

    def process(self, batch: Mapping[TP, list[Any]], partitions: Sequence[TP]) -> tuple[Done, Rewinds]:
        """Deliveries per partition (in offset order) and the partitions to rewind."""
        done: Done = {tp: [] for tp in partitions}
        rewinds: Rewinds = {}
        deferred: Deferred = []
        items = self._converted(batch, partitions, done, deferred)
        resume: dict[TP, int] = {}
        try:
            self._call(items, done, rewinds, deferred)
        except Interrupted as interrupted:
            resume = interrupted.resume
            for tp, offset in resume.items():
                rewinds[tp] = min(rewinds.get(tp, (offset, None)), (offset, None), key=lambda r: r[0])
        give_up, attempts = self.binder.settle.give_up, self.binder.attempts
        for tp, record, error, made, remember in deferred:
            if tp not in resume or record.offset < resume[tp]:
                done[tp].append(give_up(record, error, attempts=made, counted=True))
            elif remember:  # read again after the rewind: given up then, with this error
                attempts[_key(record)] = (made, 0.0, error)
        for deliveries in done.values():
            deliveries.sort(key=lambda d: d.record.offset)
        return done, rewinds

    def _converted(self, batch: Mapping[TP, list[Any]], partitions: Sequence[TP], done: Done,
                   deferred: Deferred) -> list[Item]:
        """The batch's records as the function takes them; a tombstone takes the per-record path, a record that
        does not convert its error path."""
        binder, source, read = self.binder, self.binder.source, self.read
        items = []
        for tp in partitions:
            for record in batch[tp]:
                if record.value is None:
                    done[tp].append(binder.deliver(record))
                    continue
                try:
                    headers = tuple(record.headers) if source.headers else ()
                    message = build(Message, (record.value, headers, inbound_content_type(headers,
                                                                                         source.content_type)))
                    items.append(Item(tp, record, message, message if read is None else read(message)))
                except Exception as error:  # noqa: BLE001 - one record's failure, never the batch's
                    binder.channels.send(INPUT, 1, 0.0, error)
                    deferred.append((tp, record, error, 1, False))  # it fails alike when read again
        return items

    def _call(self, items: list[Item], done: Done, rewinds: Rewinds, deferred: Deferred) -> None:
        """Call the function on groups of records until each is done or given up: first the whole batch, then
        what each BatchError leaves, in order. Each record counts its own attempts (earlier polls' included)."""
        counts, not_before, items = self._carried(items, deferred)
        todo: list[Group] = [(items, not_before)] if items else []
        most = self.binder.source.max_attempts
        while todo:
            group, not_before = todo.pop(0)
            self._wait(not_before, [(group, not_before), *todo], counts)
            try:
                result = self._called([item.value for item in group])
            except BatchError as failed:
                index = _index(failed.index, len(group))
                if index is not None:
                    todo[:0] = self._split(group, index, failed, counts, done, deferred)
                    continue
                log.warning("BatchError index %r is not an index of the batch (0 to %d): the whole batch failed",
                            failed.index, len(group) - 1)
                error: Exception = failed
            except Exception as caught:  # noqa: BLE001 - whatever the function raises takes the error path
                error = caught
            else:
                made = 1 + max(counts.get(_key(item.record), 0) for item in group) if counts else 1
                self.outputs.send(result, group, done, rewinds, made)
                continue
            self.binder.channels.send(INPUT, len(group), 0.0, error)
            rest = []
            for item in group:
                made = counts[_key(item.record)] = counts.get(_key(item.record), 0) + 1
                if made >= most:
                    deferred.append((item.tp, item.record, error, made, True))
                else:
                    rest.append(item)
            if rest:
                longest = max(counts[_key(item.record)] for item in rest)
                todo.insert(0, (rest, time.monotonic() + self._delay(longest)))

    def _called(self, values: list[Any]) -> Any:
        """The function's result; an iterator is read out (its failures are the function's), a processor's
        tuple is its list (a router's is one ``(binding, value)``), an array's ``tolist()`` (numpy, pandas) its."""
        result = self.binder.handler(values)
        if isinstance(result, Iterator) or (isinstance(result, tuple) and self.binder.single is not None):
            return list(result)
        if not isinstance(result, list | dict | str | bytes | Message) and callable(getattr(result, "tolist", None)):
            return result.tolist()
        return result

    def _split(self, group: list[Item], index: int, failed: BatchError, counts: dict[Key, int], done: Done,
               deferred: Deferred) -> list[Group]:
        """After ``BatchError(index)``: the records before it called again for their outputs (a sink's are
        done), the one at it given up or tried again after a back-off with the ones after it."""
        binder = self.binder
        error = failed.cause if isinstance(failed.cause, Exception) else failed
        binder.channels.send(INPUT, 1, 0.0, error)
        before, at = group[:index], group[index:]
        made = counts[_key(at[0].record)] = counts.get(_key(at[0].record), 0) + 1
        groups: list[Group] = []
        if before and binder.outputs:
            groups.append((before, 0.0))
        else:
            skip(before, done)
        if made >= binder.source.max_attempts or isinstance(error, ConversionError):
            deferred.append((at[0].tp, at[0].record, error, made, True))
            if at[1:]:
                groups.append((at[1:], 0.0))
        else:
            groups.append((at, time.monotonic() + self._delay(made)))
        return groups

    def _delay(self, made: int) -> float:
        initial, multiplier, longest = self.binder.source.back_off
        return min(initial * multiplier ** (made - 1), longest, self.binder.budget)

    def _carried(self, items: list[Item], deferred: Deferred) -> tuple[dict[Key, int], float, list[Item]]:
        """Each record's attempts made by earlier polls, when the next call may start, and the records to call
        (one given up by an earlier poll that rewound over it is given up now)."""
        attempts = self.binder.attempts
        if not attempts:
            return {}, 0.0, items
        counts: dict[Key, int] = {}
        not_before, live = 0.0, []
        for item in items:
            key = _key(item.record)
            made, when, *given_up = attempts.pop(key, (0, 0.0))
            if given_up:
                deferred.append((item.tp, item.record, given_up[0], made, True))
                continue
            if made:
                counts[key], not_before = made, max(not_before, when)
            live.append(item)
        return counts, not_before, live

    def _wait(self, not_before: float, pending: list[Group], counts: dict[Key, int]) -> None:
        """Wait out a back-off; when the batch has no time for it, or SIGTERM comes, keep each pending record's
        attempts for the next poll and raise Interrupted at each partition's first pending record."""
        binder = self.binder
        pause = not_before - time.monotonic()
        if pause <= 0 or binder.wait_out(pause):
            return
        resume: dict[TP, int] = {}
        for group, when in pending:
            for item in group:
                record = item.record
                if made := counts.get(_key(record), 0):
                    binder.attempts[_key(record)] = (made, when)
                resume[item.tp] = min(resume.get(item.tp, record.offset), record.offset)
        raise Interrupted(resume)


def _key(record: Any) -> Key:
    return record.topic, record.partition, record.offset


def _index(index: Any, size: int) -> int | None:
    """A BatchError's index as an index of the list (an integer from 0 to size - 1), else None."""
    try:
        index = operator.index(index)
    except TypeError:
        return None
    return index if 0 <= index < size else None
