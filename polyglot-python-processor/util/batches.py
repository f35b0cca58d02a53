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


Group = tuple[list[Item], int, float]  # records to call together, the attempts made, not before (monotonic)


class BatchMode:
    """One batch call: conversion, the function with its attempts, then ``BatchOutputs``."""

    def __init__(self, binder: Any, read: Reader | None) -> None:
        self.binder, self.read = binder, read
        self.outputs = BatchOutputs(binder)

    def process(self, batch: Mapping[TP, list[Any]], partitions: Sequence[TP]) -> tuple[Done, Rewinds]:
        """Deliveries per partition (in offset order) and the partitions to rewind."""
        done: Done = {tp: [] for tp in partitions}
        rewinds: Rewinds = {}
        items = self._converted(batch, partitions, done)
        try:
            self._call(items, done, rewinds)
        except Interrupted as interrupted:
            for tp, offset in interrupted.resume.items():
                rewinds[tp] = min(rewinds.get(tp, (offset, None)), (offset, None), key=lambda r: r[0])
        for deliveries in done.values():
            deliveries.sort(key=lambda d: d.record.offset)
        return done, rewinds

    def _converted(self, batch: Mapping[TP, list[Any]], partitions: Sequence[TP], done: Done) -> list[Item]:
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
                    done[tp].append(binder.settle.give_up(record, error, attempts=1))
        return items

    def _call(self, items: list[Item], done: Done, rewinds: Rewinds) -> None:
        """Call the function on groups of records until each is done or given up: first the whole batch (with
        the attempts an earlier poll made on it), then what each BatchError leaves, in order."""
        todo: list[Group] = [(items, *self._carried(items))] if items else []
        while todo:
            group, made, not_before = todo.pop(0)
            self._wait(not_before, [(group, made, not_before), *todo])
            made += 1
            try:
                result = self._called([item.value for item in group])
            except BatchError as failed:
                index = _index(failed.index, len(group))
                if index is not None:
                    todo[:0] = self._split(group, index, failed, made, done)
                    continue
                log.warning("BatchError index %r is not an index of the batch (0 to %d): the whole batch failed",
                            failed.index, len(group) - 1)
                error: Exception = failed
            except Exception as caught:  # noqa: BLE001 - whatever the function raises takes the error path
                error = caught
            else:
                self.outputs.send(result, group, done, rewinds, made)
                continue
            self.binder.channels.send(INPUT, len(group), 0.0, error)
            if made >= self.binder.source.max_attempts:
                for item in group:
                    done[item.tp].append(self.binder.settle.give_up(item.record, error, attempts=made,
                                                                    counted=True))
            else:
                todo.insert(0, (group, made, time.monotonic() + self._delay(made)))

    def _called(self, values: list[Any]) -> Any:
        """The function's result; an iterator is read out (its failures are the function's), a processor's
        tuple is its list (a router's is one ``(binding, value)``), an array's ``tolist()`` (numpy, pandas) its."""
        result = self.binder.handler(values)
        if isinstance(result, Iterator) or (isinstance(result, tuple) and self.binder.single is not None):
            return list(result)
        if not isinstance(result, list | dict | str | bytes | Message) and callable(getattr(result, "tolist", None)):
            return result.tolist()
        return result

    def _split(self, group: list[Item], index: int, failed: BatchError, made: int, done: Done) -> list[Group]:
        """After ``BatchError(index)``: the records before it called again for their outputs (a sink's are
        done), the one at it given up or tried again after a back-off with the ones after it."""
        binder = self.binder
        error = failed.cause if isinstance(failed.cause, Exception) else failed
        binder.channels.send(INPUT, 1, 0.0, error)
        before, at = group[:index], group[index:]
        made = made if index == 0 else 1  # the record at index was tried once in this group
        groups: list[Group] = []
        if before and binder.outputs:
            groups.append((before, 0, 0.0))
        else:
            skip(before, done)
        if made >= binder.source.max_attempts or isinstance(error, ConversionError):
            done[at[0].tp].append(binder.settle.give_up(at[0].record, error, attempts=made))
            if at[1:]:
                groups.append((at[1:], 0, 0.0))
        else:
            groups.append((at, made, time.monotonic() + self._delay(made)))
        return groups

    def _delay(self, made: int) -> float:
        initial, multiplier, longest = self.binder.source.back_off
        return min(initial * multiplier ** (made - 1), longest, self.binder.budget)

    def _carried(self, items: list[Item]) -> tuple[int, float]:
        """The attempts made on these records by earlier polls, and when the next may start."""
        attempts = self.binder.attempts
        made, not_before = 0, 0.0
        if attempts:
            for item in items:
                was, when = attempts.pop((item.record.topic, item.record.partition, item.record.offset), (0, 0.0))
                made, not_before = max(made, was), max(not_before, when)
        return made, not_before

    def _wait(self, not_before: float, pending: list[Group]) -> None:
        """Wait out a back-off; when the batch has no time for it, or SIGTERM comes, keep each pending record's
        attempts for the next poll and raise Interrupted at each partition's first pending record."""
        binder = self.binder
        pause = not_before - time.monotonic()
        if pause <= 0 or (time.monotonic() + pause <= binder.until and not binder.stop.wait(pause)):
            return
        resume: dict[TP, int] = {}
        for group, made, when in pending:
            for item in group:
                record = item.record
                binder.attempts[(record.topic, record.partition, record.offset)] = (made, when)
                resume[item.tp] = min(resume.get(item.tp, record.offset), record.offset)
        raise Interrupted(resume)


def _index(index: Any, size: int) -> int | None:
    """A BatchError's index as an index of the list (an integer from 0 to size - 1), else None."""
    try:
        index = operator.index(index)
    except TypeError:
        return None
    return index if 0 <= index < size else None
