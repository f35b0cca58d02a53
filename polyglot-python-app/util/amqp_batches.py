"""Spring AMQP's batch format (``SimpleBatchingStrategy``): several messages in one AMQP message, split on the way in
and assembled on the way out.

The body is each message's length (4 bytes, big-endian) then its bytes; the batch carries the properties of its
first message plus the headers ``springBatchFormat: lengthHeader4`` and ``amqp_batchSize`` (how many). A single
message is sent as it is. A batch is released when it holds ``batchSize`` messages or ``batchBufferLimit`` bytes
(lengths included; a message that would overflow a non-empty batch releases it first), as Spring's.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

from .rabbit_connection import RecordError, SendError

BATCH_FORMAT = "springBatchFormat"
LENGTH_HEADER4 = "lengthHeader4"
BATCH_SIZE = "amqp_batchSize"
BATCH_HEADERS = (BATCH_FORMAT, BATCH_SIZE)
_LENGTH = struct.Struct(">i")


class BatchFormatError(ValueError):
    """A ``lengthHeader4`` body whose lengths do not add up: the whole AMQP message takes the error path."""


def is_batch(table: Mapping[str, Any] | None, text: Callable[[Any], str | None]) -> bool:
    """The AMQP headers mark a Spring AMQP batch (``text`` reads a header value as a string)."""
    return bool(table) and BATCH_FORMAT in table and text(table[BATCH_FORMAT]) == LENGTH_HEADER4


def split(body: bytes) -> list[bytes]:
    """The messages of a batch body, as Spring's ``deBatch`` reads them; BatchFormatError when a length is negative
    or runs past the body, or the body holds none."""
    messages, at, size = [], 0, len(body)
    while at < size:
        if size - at < 4:
            raise BatchFormatError(f"Spring AMQP batch: {size - at} bytes left at offset {at}, no room for a length")
        (length,) = _LENGTH.unpack_from(body, at)
        at += 4
        if length < 0 or length > size - at:
            raise BatchFormatError(f"Spring AMQP batch: insufficient batch data at offset {at - 4} (length {length}, "
                                   f"{size - at} bytes left)")
        messages.append(body[at:at + length])
        at += length
    if not messages:
        raise BatchFormatError("Spring AMQP batch with no message in it")
    return messages


def assemble(bodies: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(body)) + body for body in bodies)


class Batch:
    """Messages waiting for one exchange and routing key; once published, the handle every one of them shares
    (``sent``: the publisher's handle; ``error``: why the publish failed)."""

    __slots__ = ("bodies", "error", "exchange", "properties", "routing_key", "sent", "size", "started")

    def __init__(self, exchange: str, routing_key: str, properties: Any) -> None:
        self.exchange, self.routing_key, self.properties = exchange, routing_key, properties
        self.bodies: list[bytes] = []
        self.size, self.started = 0, time.monotonic()
        self.sent: Any = None
        self.error: Exception | None = None


class Batcher:
    """An output's open batches, one per exchange and routing key (Spring's strategy takes one at a time and
    fails on another; here each fills on its own). ``publish(exchange, key, body, properties)`` sends one;
    ``check(properties)`` raises RecordError when the properties of a batch's first message cannot be sent (the
    other messages' are not)."""

    def __init__(self, size: int, limit: int, timeout: float, publish: Callable[[str, str, bytes, Any], Any],
                 check: Callable[[Any], None]) -> None:
        self.size, self.limit, self.timeout, self.publish, self.check = size, limit, timeout, publish, check
        self.open: dict[tuple[str, str], Batch] = {}
        self.failed = False  # a batch's publish raised since the producer last said whether all were settled

    def add(self, exchange: str, routing_key: str, body: bytes, properties: Any) -> Batch:
        """Queue a message; the batch it joined is its handle (published when full, stale or flushed). Raises
        RecordError when it would open a batch its properties cannot be sent with."""
        where = (exchange, routing_key)
        batch = self.open.get(where)
        use = 4 + len(body)
        if batch is not None and batch.size + use > self.limit:
            self._release(self.open.pop(where))
            batch = None
        if batch is None:
            self.check(properties)
            batch = self.open[where] = Batch(exchange, routing_key, properties)
        batch.bodies.append(body)
        batch.size += use
        if len(batch.bodies) >= self.size or batch.size >= self.limit:
            self._release(self.open.pop(where))
        elif self.timeout >= 0:
            self.release_stale()
        return batch

    def release_stale(self) -> None:
        """Publish the batches open for ``batchTimeout`` or longer."""
        now = time.monotonic()
        for where in [w for w, b in self.open.items() if now - b.started >= self.timeout]:
            self._release(self.open.pop(where))

    def release_all(self) -> None:
        while self.open:
            self._release(self.open.pop(next(iter(self.open))))

    def _release(self, batch: Batch) -> None:
        properties = batch.properties
        if len(batch.bodies) == 1:
            body = batch.bodies[0]
        else:
            body = assemble(batch.bodies)
            properties.headers = {**(properties.headers or {}), BATCH_FORMAT: LENGTH_HEADER4,
                                  BATCH_SIZE: len(batch.bodies)}
        try:
            batch.sent = self.publish(batch.exchange, batch.routing_key, body, properties)
        except (SendError, RecordError) as error:  # every message of it fails with it, read through its handle
            batch.error, self.failed = error, True
