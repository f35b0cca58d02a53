"""The straight pass: an ordinary batch's records through the function and out in one pass, no handle kept.

Ordinary: no tombstone, no retry pending, no partition key, no failure. Options were bound once, the
client's send takes no key, partition or per-record callback (librdkafka's producer has one callback for
failures), and no Delivery is made. The first record that is not ordinary, that the function fails on, or
whose send the client refuses at once stops the pass: from it on the batch takes the per-record path,
which settles it exactly as before. The sends are read back (``deliveries``) only when a flush says some
failed, and then settled as the per-record path's are.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from .bindings import InputBinding, OutputBinding
from .headers import inbound_content_type, outbound_headers
from .message import Handler, Message, build
from .metrics import BatchSends
from .settle import Delivery
from .stalls import TP

Sent = tuple[Any, str, str, bytes | None, Any]  # a straight send: record, output binding, topic, value, handle
Stop = tuple[str, Exception, OutputBinding | None]  # why a pass stopped: "function" or "send", the error, the output


class StraightPass:
    """The pass for one app: its function, outputs and their producers' handle-less sends."""

    def __init__(self, handler: Handler, single: str | None, source: InputBinding,
                 outputs: Mapping[str, OutputBinding], producers: Mapping[str, Any], null: bytes | None,
                 sends: BatchSends) -> None:
        self.handler, self.single, self.source, self.outputs, self.null = handler, single, source, outputs, null
        self.producers, self.sends = producers, sends
        self.plain = not any(output.partition_key for output in outputs.values())
        self.quick = {name: producers[name].quick for name in outputs}

    def ready(self) -> bool:
        """No partition key, and every producer ready to send without a handle (librdkafka: none of its earlier
        sends unfinished, whose failures could be taken for this pass's)."""
        return self.plain and all(self.producers[name].begin() for name in self.outputs)

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
                result = handler(build(Message, (value, headers, inbound_content_type(headers, default))))
                if sink:
                    continue
                if single is not None:
                    name, out = single, result
                elif result is None:
                    continue
                else:
                    name, out = result
                if out is None:  # the function filtered the record (as null in Spring)
                    continue
                output = outputs.get(name)
                if output is None:
                    raise ValueError(f"the function returned unknown output binding '{name}'")
                media = output.content_type or out.content_type
                sending = outbound_headers(out.headers, media, null) if output.headers else None
            except Exception as error:  # noqa: BLE001 - whatever the function raises takes the error path
                return index, ("function", error, None)
            payload, destination = out.payload, output.destination
            try:
                if index & sample:
                    handle = quick[name](destination, payload, sending)
                else:  # one send in SAMPLE timed, as on the per-record path
                    clock = time.perf_counter()
                    handle = quick[name](destination, payload, sending)
                    seconds[name] += (time.perf_counter() - clock) * BatchSends.SAMPLE
            except Exception as error:  # noqa: BLE001 - no refusal ends the loop
                return index, ("send", error, output)
            sent.append((record, name, destination, payload, handle))
            count[name] += 1
        return len(records), None

    def deliveries(self, runs: dict[TP, list[Sent]]) -> dict[TP, list[Delivery]]:
        """The pass's sends as Deliveries, a failed one with why: made only when some send failed."""
        errors: dict[int, Exception] = {}
        for name in {sent[1] for sends in runs.values() for sent in sends}:
            mine = [sent for sends in runs.values() for sent in sends if sent[1] == name]
            outcomes = self.producers[name].outcomes([(sent[2], sent[3], sent[4]) for sent in mine])
            errors.update((id(sent), error) for sent, error in zip(mine, outcomes, strict=True) if error is not None)
        return {tp: [Delivery(sent[0], refused=errors.get(id(sent))) for sent in sends] for tp, sends in runs.items()}
