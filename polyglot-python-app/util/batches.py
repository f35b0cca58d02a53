"""Batch mode: the function takes what one poll returned as a list, and returns a list, a value or None.

Each record is converted first (``values.py``): one that does not convert takes its own error path, and the
rest of the batch goes on. ``BatchError(index, cause)`` from the function: the records before ``index`` are
done (a processor's are called again for their outputs), the one at ``index`` is tried again (the records
after it with it) until its attempts are spent, then takes its error path, and the rest goes on. Any other
exception: the whole batch again after the binding's back-off, then every record of it down the error path.
A list as long as the batch is one output a record (None: nothing for it), keeping each record's headers;
any other result belongs to the batch as a whole, so a send of it that fails rewinds each partition to its
first record of the call.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .headers import inbound_content_type, outbound_headers
from .message import Message, build
from .metrics import BatchSends
from .settle import INPUT, Delivery, RewindError
from .stalls import TP
from .values import ConversionError, Reader, outgoing


class BatchError(Exception):
    """Raised by a batch function: the records before ``index`` are done; the one at ``index`` failed (``cause``)."""

    def __init__(self, index: int, cause: BaseException | None = None) -> None:
        super().__init__(index, cause)
        self.index, self.cause = index, cause

    def __str__(self) -> str:
        return f"record {self.index} of the batch failed: {self.cause!r}" if self.cause else f"record {self.index}"


class Item(NamedTuple):
    tp: TP
    record: Any
    message: Message
    value: Any


class Interrupted(Exception):  # noqa: N818 - a signal to the loop, not an error
    """SIGTERM, or the batch's time, arrived during a back-off: these partitions go on from these offsets."""

    def __init__(self, resume: dict[TP, int]) -> None:
        super().__init__(resume)
        self.resume = resume


class BatchMode:
    """One batch call: conversion, the function with its attempts, and the sends of what it returned."""

    def __init__(self, binder: Any, read: Reader | None) -> None:
        self.binder, self.read = binder, read

    def process(self, batch: Mapping[TP, list[Any]], partitions: Sequence[TP]) -> tuple[
            dict[TP, list[Delivery]], dict[TP, tuple[int, Exception | None]]]:
        """Deliveries per partition (in offset order) and the partitions to rewind."""
        done: dict[TP, list[Delivery]] = {tp: [] for tp in partitions}
        rewinds: dict[TP, tuple[int, Exception | None]] = {}
        items = self._converted(batch, partitions, done)
        try:
            self._call(items, done, rewinds)
        except Interrupted as interrupted:
            rewinds.update((tp, (offset, None)) for tp, offset in interrupted.resume.items())
        for deliveries in done.values():
            deliveries.sort(key=lambda d: d.record.offset)
        return done, rewinds

    def _converted(self, batch: Mapping[TP, list[Any]], partitions: Sequence[TP],
                   done: dict[TP, list[Delivery]]) -> list[Item]:
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

    def _call(self, items: list[Item], done: dict[TP, list[Delivery]],
              rewinds: dict[TP, tuple[int, Exception | None]]) -> None:
        """Call the function until every item is done or given up."""
        binder, attempt = self.binder, 0
        settle, most = binder.settle, binder.source.max_attempts
        while items:
            attempt += 1
            try:
                result = binder.handler([item.value for item in items])
            except BatchError as failed:
                index = min(max(failed.index, 0), len(items) - 1)
                before, items, made = items[:index], items[index:], attempt if index == 0 else 1
                if before and binder.outputs:  # done: called again for their outputs (a sink's are done already)
                    self._call(before, done, rewinds)
                else:
                    self._skip(before, done)
                error = failed.cause if isinstance(failed.cause, Exception) else failed
                binder.channels.send(INPUT, 1, 0.0, error)
                if made >= most or isinstance(error, ConversionError):
                    done[items[0].tp].append(settle.give_up(items[0].record, error, attempts=made))
                    items, attempt = items[1:], 0
                else:
                    attempt = made
                    self._back_off(made, items)
                continue
            except Exception as error:  # noqa: BLE001 - whatever the function raises takes the error path
                binder.channels.send(INPUT, len(items), 0.0, error)
                if attempt >= most:
                    for item in items:
                        done[item.tp].append(settle.give_up(item.record, error, attempts=attempt, counted=True))
                    return
                self._back_off(attempt, items)
                continue
            self._send(result, items, done, rewinds, attempt)
            return

    def _skip(self, items: list[Item], done: dict[TP, list[Delivery]]) -> None:
        for item in items:
            done[item.tp].append(Delivery(item.record))

    def _back_off(self, attempt: int, items: list[Item]) -> None:
        """Wait before the next attempt; Interrupted (from each partition's first item) when the batch has no
        time for it or SIGTERM arrives."""
        binder = self.binder
        initial, multiplier, longest = binder.source.back_off
        delay = min(initial * multiplier ** (attempt - 1), longest, binder.budget)
        if time.monotonic() + delay > binder.until or binder.stop.wait(delay):
            resume: dict[TP, int] = {}
            for item in items:
                resume.setdefault(item.tp, item.record.offset)
            raise Interrupted(resume)

    def _send(self, result: Any, items: list[Item], done: dict[TP, list[Delivery]],
              rewinds: dict[TP, tuple[int, Exception | None]], attempt: int) -> None:
        """Send what the function returned: one output a record when it returned a list as long as the batch."""
        binder = self.binder
        if not binder.outputs or result is None:
            self._skip(items, done)
            return
        if isinstance(result, list) and len(result) == len(items):
            start = self._send_straight(result, items, done) if binder.straight.plain else 0
            for item, value in zip(items[start:], result[start:], strict=True):
                self._send_one(value, item.message, [item], done, rewinds, attempt)
            return
        firsts = list({item.tp: item for item in reversed(items)}.values())  # each partition's first item
        self._skip([item for item in items if item not in firsts], done)
        for value in result if isinstance(result, list) else [result]:
            self._send_one(value, None, firsts, done, rewinds, attempt)
        for item in firsts:
            if not any(d.record is item.record for d in done[item.tp]):
                done[item.tp].append(Delivery(item.record))

    def _send_straight(self, result: list[Any], items: list[Item], done: dict[TP, list[Delivery]]) -> int:
        """One output a record, to the client's quick send (no output here has a partition key) while each is
        ordinary: the index of the first that is not (an unknown binding, a value that does not convert, a send
        refused at once), which the per-record sends take on with the rest."""
        binder = self.binder
        outputs, single, null, quick = binder.outputs, binder.single, binder.client.null_header, binder.straight.quick
        count, seconds, sample = binder.sends.count, binder.sends.seconds, BatchSends.SAMPLE
        for index, item in enumerate(items):
            value = result[index]
            try:
                if single is not None:
                    name, out = single, value
                elif value is None:
                    done[item.tp].append(Delivery(item.record))
                    continue
                else:
                    name, out = value
                if type(out) is not Message:
                    out = outgoing(out, item.message)
                if out is None:  # nothing for this record
                    done[item.tp].append(Delivery(item.record))
                    continue
                output = outputs[name]
                media = output.content_type or out.content_type
                headers = outbound_headers(out.headers, media, null) if output.headers else None
                if count[name] & sample - 1:
                    handle = quick[name](output.destination, out.payload, headers)
                else:  # one send in SAMPLE timed, as on the per-record path
                    clock = time.perf_counter()
                    handle = quick[name](output.destination, out.payload, headers)
                    seconds[name] += (time.perf_counter() - clock) * sample
            except Exception:  # noqa: BLE001 - this record's output is sent, or fails, one by one
                return index
            count[name] += 1
            done[item.tp].append(Delivery(item.record, handle))
        return len(items)

    def _send_one(self, value: Any, message: Message | None, owners: list[Item], done: dict[TP, list[Delivery]],
                  rewinds: dict[TP, tuple[int, Exception | None]], attempt: int) -> None:
        """One output, sent once and owned by ``owners``: a refusal that is not about it rewinds their partitions."""
        binder = self.binder
        try:
            if binder.single is not None:
                name, out = binder.single, value
            elif value is None:
                name, out = "", None
            else:
                name, out = value
            out = outgoing(out, message)
            if out is None:  # nothing for this record (a list's None element)
                if message is not None:
                    self._skip(owners, done)
                return
            prepared = binder.addressed(name, out)
        except Exception as error:  # noqa: BLE001 - an output that cannot be sent: its records' error path
            for item in owners:
                done[item.tp].append(binder.settle.give_up(item.record, error, attempts=attempt))
            return
        first = owners[0]
        try:
            sent = binder.send(first.record, attempt, *prepared)
        except RewindError as rewind:
            for item in owners:
                offset = item.record.offset
                rewinds[item.tp] = min(rewinds.get(item.tp, (offset, rewind.error)), (offset, rewind.error),
                                       key=lambda r: r[0])
            return
        done[first.tp].append(sent)
        for item in owners[1:]:  # the same send: it fails, each of their partitions goes back to its record
            done[item.tp].append(Delivery(item.record, sent.future if sent.cause is None else None))
