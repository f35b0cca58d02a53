"""The straight pass: an ordinary batch's records through the function and out in one pass.

Ordinary: no tombstone, no retry pending, no partition key, no failure. Options were bound once, the
client's send takes no key nor partition (``quick``: positional, on librdkafka), and no Delivery nor
attempt is kept, only each send's handle. The first record that is not ordinary, that the function fails
on, or whose send the client refuses at once stops the pass: from it on the batch takes the per-record
path. The handles are read (``deliveries``) only when a flush says some send failed, and then settled as
the per-record path's are, record by record.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from .bindings import InputBinding, OutputBinding
from .headers import inbound_content_type, outbound_headers
from .message import Handler, Message, build
from .metrics import BatchSends
from .values import outgoing

Sent = tuple[Any, Any]  # a straight send: the record and its send's handle
Stop = tuple[str, Exception, OutputBinding | None]  # why a pass stopped: "function" or "send", the error, the output


class StraightPass:
    """The pass for one app: its function, outputs and their producers' handle-less sends."""

    def __init__(self, handler: Handler, single: str | None, source: InputBinding,
                 outputs: Mapping[str, OutputBinding], producers: Mapping[str, Any], null: bytes | None,
                 sends: BatchSends) -> None:
        self.handler, self.single, self.source, self.outputs, self.null = handler, single, source, outputs, null
        self.sends = sends
        self.plain = not any(output.partition_key for output in outputs.values())  # no output needs its key
        self.quick = {name: producers[name].quick for name in outputs}

    def run(self, records: Sequence[Any], sent: list[Sent]) -> tuple[int, Stop | None]:
        """Send the outputs of records while they are ordinary: (records done, why it stopped at the next one).

        It stops at a tombstone (None: the per-record path takes it), at a record whose function raised
        (``function``) or whose send the client refused (``send``): the per-record path resumes it with that.
        """
        handler, single, outputs, quick, null = self.handler, self.single, self.outputs, self.quick, self.null
        read_headers, default, sink = self.source.headers, self.source.content_type, not outputs
        count, seconds, sample = self.sends.count, self.sends.seconds, BatchSends.SAMPLE - 1
        for index, record in enumerate(records):
            value = record.value
            if value is None:
                return index, None
            try:
                headers = tuple(record.headers) if read_headers else ()
                message = build(Message, (value, headers, inbound_content_type(headers, default)))
                result = handler(message)
                if sink:
                    continue
                if single is not None:
                    name, out = single, result
                elif result is None:
                    continue
                else:
                    name, out = result
                if type(out) is not Message:  # a value: bytes, text, JSON or a dataclass (None: nothing)
                    out = outgoing(out, message)
                if out is None:  # the function filtered the record (as null in Spring)
                    continue
                output = outputs.get(name)
                if output is None:
                    raise ValueError(f"the function returned unknown output binding '{name}'")
                media = output.content_type or out.content_type
                sending = outbound_headers(out.headers, media, null) if output.headers else None
                payload = out.payload
            except Exception as error:  # noqa: BLE001 - whatever the function raises takes the error path
                return index, ("function", error, None)
            sent_before = count[name]
            try:
                if sent_before & sample:
                    handle = quick[name](output.destination, payload, sending)
                else:  # one send in SAMPLE timed, as on the per-record path
                    clock = time.perf_counter()
                    handle = quick[name](output.destination, payload, sending)
                    seconds[name] += (time.perf_counter() - clock) * BatchSends.SAMPLE
            except Exception as error:  # noqa: BLE001 - no refusal ends the loop
                return index, ("send", error, output)
            sent.append((record, handle))
            count[name] = sent_before + 1
        return len(records), None
