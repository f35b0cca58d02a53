"""What a batch function returned, sent: one output a record for a list as long as the batch, else the batch's.

A list as long as the batch is one output a record, in order (None: nothing for it), each keeping its
record's headers; ordinary ones go straight to the client's quick send. Any other result (a value, a list of
another length) belongs to the batch as a whole: its outputs keep the first record's headers and each is
owned by every record: a value that does not convert, or a send refused for its own sake, fails every
record of the batch; a send that fails otherwise rewinds each partition to its first record of the call.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from .headers import outbound_headers
from .message import Message
from .metrics import BatchSends
from .settle import Delivery, RewindError
from .stalls import TP
from .values import outgoing

Done = dict[TP, list[Delivery]]
Rewinds = dict[TP, tuple[int, Exception | None]]


class Item(NamedTuple):
    tp: TP
    record: Any
    message: Message
    value: Any


class BatchOutputs:
    """The sends of one app's batch calls."""

    def __init__(self, binder: Any) -> None:
        self.binder = binder

    def send(self, result: Any, items: list[Item], done: Done, rewinds: Rewinds, attempt: int) -> None:
        binder = self.binder
        if not binder.outputs or result is None:
            skip(items, done)
            return
        if isinstance(result, list) and len(result) == len(items):
            start = self._straight(result, items, done) if binder.straight.plain else 0
            for item, value in zip(items[start:], result[start:], strict=True):
                try:
                    prepared = self._prepared(value, item.message)
                except Exception as error:  # noqa: BLE001 - an output that cannot be sent: its record's error path
                    done[item.tp].append(binder.settle.give_up(item.record, error, attempts=attempt))
                    continue
                if prepared is None:
                    skip([item], done)
                else:
                    self._send(prepared, [item], done, rewinds, attempt)
            return
        try:  # the batch's outputs: all converted before any is sent, each with the first record's headers
            outputs = [self._prepared(value, items[0].message) for value in
                       (result if isinstance(result, list) else [result])]
        except Exception as error:  # noqa: BLE001 - nothing of it can be sent: every record's error path
            for item in items:
                done[item.tp].append(binder.settle.give_up(item.record, error, attempts=attempt))
            return
        sent = False
        for prepared in outputs:  # each owned by every record: refused, they all take their error path
            if prepared is not None:
                self._send(prepared, items, done, rewinds, attempt)
                sent = True
        if not sent:
            skip(items, done)

    def _prepared(self, value: Any, message: Message) -> tuple[Any, ...] | None:
        """What to send for one element (binding, value, headers, partition, key), None for nothing; raises when
        it cannot be sent (an unknown binding, a value that does not convert)."""
        binder = self.binder
        if binder.single is not None:
            name, out = binder.single, value
        elif value is None:
            return None
        else:
            name, out = value
        out = outgoing(out, message)
        return None if out is None else binder.addressed(name, out)

    def _send(self, prepared: tuple[Any, ...], owners: list[Item], done: Done, rewinds: Rewinds,
              attempt: int) -> None:
        """One output owned by ``owners``: a refusal that is not about it rewinds their partitions."""
        first = owners[0]
        try:
            sent = self.binder.send(first.record, attempt, *prepared)
        except RewindError as rewind:
            for item in owners:
                offset = item.record.offset
                rewinds[item.tp] = min(rewinds.get(item.tp, (offset, rewind.error)), (offset, rewind.error),
                                       key=lambda r: r[0])
            return
        done[first.tp].append(sent)
        for item in owners[1:]:  # the same send: it fails, each of their partitions goes back to its record
            if sent.cause is None:
                done[item.tp].append(Delivery(item.record, sent.future))
            else:  # refused at once for its own sake: every owner's error path
                done[item.tp].append(self.binder.settle.give_up(item.record, sent.cause, attempts=attempt,
                                                                counted=True))

    def _straight(self, result: list[Any], items: list[Item], done: Done) -> int:
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


def skip(items: list[Item], done: Done) -> None:
    """Done with nothing to send."""
    for item in items:
        done[item.tp].append(Delivery(item.record))
