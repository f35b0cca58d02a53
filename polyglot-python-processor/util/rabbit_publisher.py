"""Publishing on RabbitMQ: the confirmed channel, an output binding's exchange (Spring AMQP batches when
``batchingEnabled``), and the input's dead letters."""

from __future__ import annotations

import json
import struct
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import pika
from pika.exceptions import (
    AMQPChannelError,
    AMQPConnectionError,
    AMQPError,
    ShortStringTooLong,
    UnsupportedAMQPFieldException,
)

from .amqp_batches import Batch, Batcher
from .amqp_values import Native, text
from .bindings import output_properties
from .dead_letter import TRACE_MARGIN, copied_headers, kafka_headers, record_size, stack_trace
from .headers import CONTENT_TYPE, TYPES_HEADER
from .rabbit_config import producer_properties
from .rabbit_connection import Connection, RecordError, SendError, describe, within

ORIGIN_HEADERS = ("x-original-topic", "x-original-partition", "x-original-offset", "x-original-timestamp",
                  "x-original-timestamp-type", "x-exception-fqcn")
FRAME_HEADROOM = 20_000  # Spring's frameMaxHeadroom: what a dead letter's stack trace leaves of frame_max


# What pika raises for a message it cannot encode (a name over AMQP's 255 bytes, a value of no AMQP type, ...).
UNENCODABLE = (ShortStringTooLong, UnsupportedAMQPFieldException, TypeError, ValueError, AssertionError,
               OverflowError, struct.error)


def unencodable(error: BaseException) -> RecordError:
    if isinstance(error, ShortStringTooLong):
        return RecordError(f"message not encodable: a name over 255 bytes ({str(error)[:60]}...)")
    return RecordError(f"message not encodable: {str(error)[:200]}")


def check_encodable(properties: pika.BasicProperties) -> None:
    """RecordError unless pika can encode the properties (the ones a Spring AMQP batch is published with)."""
    try:
        properties.encode()
    except UNENCODABLE as error:
        raise unencodable(error) from None


class Publisher:
    """The confirmed publishing channel; confirms are counted as they come, waited for in ``flush``."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.channel: Any = None
        self.generation = -1  # the connection's, when the channel was opened
        self.epoch = 0  # one more for every channel: a handle of an older one failed with the channel
        self.closed_why = "the channel closed before the broker confirmed"
        self.next_seq = 1
        self.outstanding: deque[int] = deque()  # publish sequence numbers not confirmed yet, in order
        self.done: set[int] = set()  # confirmed one by one, above the first outstanding
        self.nacked: set[int] = set()
        self._mark = 1  # where the sends of the current round of settled() calls start
        connection.publisher = self

    def _usable(self) -> bool:
        return self.channel is not None and self.channel.is_open and self.generation == self.connection.generation

    def _open(self) -> Any:
        if not self._usable():
            if not self.connection.revive():
                raise SendError(self.connection.problem or "not connected to RabbitMQ")
            try:
                channel = self.connection.connection.channel()
            except (AMQPError, OSError) as error:
                self.connection.lost(error)
                raise SendError(describe(error)) from None
            # Its asynchronous channel: publishes that do not wait, confirms counted by the callback.
            impl = channel._impl
            impl.confirm_delivery(ack_nack_callback=self._confirmed, callback=lambda _frame: None)
            self.connection.pump(0.0)
            self.channel, self.generation, self.epoch = impl, self.connection.generation, self.epoch + 1
            self.next_seq, self.outstanding, self.done, self.nacked, self._mark = 1, deque(), set(), set(), 1
        return self.channel

    def publish(self, exchange: str, routing_key: str, body: bytes,
                properties: pika.BasicProperties) -> tuple[int, int]:
        channel = self._open()
        try:
            channel.basic_publish(exchange, routing_key, body, properties)
        except UNENCODABLE as error:
            raise unencodable(error) from None
        except AMQPChannelError as error:
            self._closed(error)
            raise SendError(describe(error)) from None
        except (AMQPConnectionError, OSError) as error:
            self.connection.lost(error)
            raise SendError(describe(error)) from None
        seq = self.next_seq
        self.next_seq += 1
        self.outstanding.append(seq)
        return self.epoch, seq

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        failed = isinstance(method, pika.spec.Basic.Nack)
        tag = method.delivery_tag
        if method.multiple:
            while self.outstanding and self.outstanding[0] <= tag:
                seq = self.outstanding.popleft()
                if failed and seq not in self.done:
                    self.nacked.add(seq)
        else:
            (self.nacked if failed else self.done).add(tag)
        while self.outstanding and (self.outstanding[0] in self.done or self.outstanding[0] in self.nacked):
            self.done.discard(self.outstanding.popleft())
        if not self.outstanding:
            self.done.clear()

    def void(self) -> None:
        """The connection was lost: every handle of this channel failed."""
        self._closed(None)

    def _closed(self, error: BaseException | None) -> None:
        """The channel is gone (the broker closed it, or the connection): its unconfirmed sends failed."""
        reason = self.connection.problem if error is None else f"the broker closed the channel ({describe(error)})"
        self.closed_why = reason or "the channel closed before the broker confirmed"
        self.channel, self.outstanding, self.done, self.epoch = None, deque(), set(), self.epoch + 1

    def flush(self, seconds: float) -> bool:
        """Wait for the confirms of every send; True once none is outstanding (a closed channel failed them).

        pika's wait ends early for a delivery, never for a confirm: it is taken in slices of 1 ms doubling to
        50 ms, so confirms that come at once end it at once (one 50 ms slice cost every batch that much)."""
        deadline = time.monotonic() + seconds
        wait = 0.001
        while self.outstanding:
            if not self._usable():
                reason = getattr(self.channel, "_closing_reason", None) if self.channel is not None else None
                self._closed(reason)
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.connection.pump(min(left, wait))
            wait = min(wait * 2, 0.05)
        return True

    def outcome(self, handle: tuple[int, int] | Batch) -> Exception | None:
        if isinstance(handle, Batch):  # a message sent in a Spring AMQP batch: the batch's publish
            if handle.error is not None or handle.sent is None:
                return handle.error or SendError("the batch it was in was not published")
            handle = handle.sent
        epoch, seq = handle
        if epoch != self.epoch:
            return SendError(self.closed_why)
        if seq in self.nacked:
            return SendError("the broker refused the message (basic.nack)")
        if (self.outstanding and seq >= self.outstanding[0] and seq not in self.done) or seq >= self.next_seq:
            return SendError("no confirm from the broker in time")
        return None

    def settled(self) -> bool:
        """Every send of this round confirmed, none refused (the producers share the channel: a round is the
        calls between two sets of sends; nacks of older rounds are forgotten)."""
        if self.next_seq != self._mark:
            self.nacked = {seq for seq in self.nacked if seq >= self._mark}
            self._mark = self.next_seq
        return not self.outstanding and not self.nacked and self._usable()


class Producer:
    """An output binding's exchange: persistent publishes, the routing key its destination (and partition); with
    ``batchingEnabled``, Spring AMQP batches, each published once full, stale, or at the flush (so the input is
    acknowledged only once the batches holding its outputs are confirmed)."""

    def __init__(self, client: Any, binding: str) -> None:
        self.client, self.publisher = client, client.publisher
        self.max_request_size = max(0, client.connection.frame_max - FRAME_HEADROOM) + 1024
        self.count = client.properties.get(output_properties(binding)["partition_count"])
        self.batcher = _batcher(client.properties, binding, self.publisher.publish)

    def partition_count(self, topic: str) -> int:
        return self.count

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, Any]] | None,
             partition: int | None) -> Any:
        properties, _ = _properties(headers)
        routing_key = topic if partition is None else f"{topic}-{partition}"
        if self.batcher is not None:
            return self.batcher.add(topic, routing_key, value or b"", properties)
        return self.publisher.publish(topic, routing_key, value or b"", properties)

    def quick(self, topic: str, value: bytes | None, headers: Sequence[tuple[str, Any]] | None) -> Any:
        if self.batcher is not None:
            return self.batcher.add(topic, topic, value or b"", _properties(headers)[0])
        return self.publisher.publish(topic, topic, value or b"", _properties(headers)[0])

    def flush(self, seconds: float) -> bool:
        if self.batcher is not None:
            self.batcher.release_all()
        return self.publisher.flush(seconds)

    def settled(self) -> bool:
        """No send refused this round: a batch whose publish raised (a header pika cannot encode) counts too."""
        failed = self.batcher is not None and self.batcher.failed
        if failed:
            self.batcher.failed = False
        return self.publisher.settled() and not failed

    def close(self, seconds: float) -> None:  # pika's close takes no timeout: the watchdog bounds it
        """Everything was flushed: close the connection (the consumer's close closes it too)."""
        self.client.close()


class RabbitDeadLetters:
    """The input's DLQ as Spring's Rabbit binder fills it: ``republishToDlq`` publishes the original body and
    properties to the DLX with ``x-exception-*`` and ``x-original-exchange``/``-routingKey`` (no fqcn, as
    Spring); without it the delivery is rejected without requeue and the broker dead-letters it (``x-death``)."""

    def __init__(self, client: Any) -> None:
        self.client, self.publisher = client, client.publisher
        self.limit = max(0, client.connection.frame_max - FRAME_HEADROOM) + 1024

    def partition_count(self, topic: str) -> int:
        return 1 << 30  # queues, not partitions: nothing for the Kafka provisioner to make

    def send(self, record: Any, cause: BaseException, trace: int | None) -> tuple[Any, int | None]:
        client = self.client
        if not client.republish:
            return client.reject((record.topic, record.partition), record.offset), trace
        headers = copied_headers(record, None)
        if trace is None:  # the room Spring's Kafka headers would take is left too: a copy as large as ever
            trace = self.limit - record_size(record, headers + kafka_headers(record, cause)) - TRACE_MARGIN
        properties, table = _properties(headers)
        for name in ORIGIN_HEADERS:  # a record dead-lettered before carries them: Spring's Rabbit binder has none
            table.pop(name, None)
        table["x-exception-message"] = str(cause).encode("utf-8", "replace").decode("utf-8", "replace")
        table["x-exception-stacktrace"] = stack_trace(cause, trace).decode("utf-8", "replace")
        table["x-original-exchange"] = record.topic
        table["x-original-routingKey"] = (record.key or b"").decode("utf-8", "replace")
        properties.headers = table
        queue = client.queue_name(record.topic, record.partition)
        return self.publisher.publish(client.dlx, client.dlq_key or queue, record.value or b"", properties), trace

    def flush(self, seconds: float) -> bool:
        return self.publisher.flush(seconds)

    def settled(self) -> bool:
        return self.publisher.settled() if self.client.republish else True

    def close(self, seconds: float) -> None:
        self.client.close()


def _batcher(properties: Any, binding: str, publish: Any) -> Batcher | None:
    """The output's Spring AMQP batching (``batchingEnabled``, ``batchSize``, ``batchBufferLimit``,
    ``batchTimeout``), or None."""
    declared = producer_properties(binding)
    if not properties.get(declared["batching_enabled"]):
        return None
    size = within(properties.get(declared["batch_size"]), declared["batch_size"].name, 1, 1 << 20)
    limit = within(properties.get(declared["batch_buffer_limit"]), declared["batch_buffer_limit"].name, 1, 1 << 30)
    timeout = within(properties.get(declared["batch_timeout"]), declared["batch_timeout"].name, 0, 1 << 31)
    return Batcher(size, limit, timeout / 1000, publish, check_encodable)


def _properties(headers: Sequence[tuple[str, Any]] | None) -> tuple[pika.BasicProperties, dict[str, Any]]:
    """AMQP properties from the loop's headers: ``contentType`` in ``content_type``, the rest in the table."""
    table: dict[str, Any] = {}
    content_type = None
    for key, value in headers or ():
        if key == TYPES_HEADER:
            continue
        if key == CONTENT_TYPE:
            content_type = _content_type(value)
            continue
        table[key] = value.value if isinstance(value, Native) else value
    return pika.BasicProperties(content_type=content_type, delivery_mode=2, headers=table or None), table


def _content_type(value: Any) -> str | None:
    value = text(value)
    if value and value.startswith("\""):
        try:
            return json.loads(value)
        except ValueError:
            return value.strip("\"")
    return value
