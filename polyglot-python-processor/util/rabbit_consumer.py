"""Consuming on RabbitMQ: a queue is a partition, its records numbered as they come (each delivery's tag while no
Spring AMQP batch arrives: a batch takes one number a message in it), a commit one ``multiple`` ack."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from pika.exceptions import AMQPError

from .amqp_batches import BATCH_HEADERS, BatchFormatError, is_batch, split
from .amqp_values import Native, text
from .bindings import INSTANCE_COUNT, INSTANCE_INDEX
from .headers import CONTENT_TYPE, UnreadableHeaders
from .rabbit_connection import SendError, describe

MAX_BATCH = 1000  # deliveries one poll hands the loop (measured: 500 cost 15 % at the default prefetch)


class Record(NamedTuple):
    """One message, in the shape the loop reads: its number is the offset, the routing key the key."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes | None]]
    timestamp: int
    timestamp_type: int


class Consumer:
    """The input binding's queues, a channel each (delivery tags are per channel)."""

    max_poll_interval = 300.0  # no broker-side poll limit; the loop's batches stay within half of it

    def __init__(self, client: Any) -> None:  # rabbit.Client: its connection, settings and layout
        self.client = client
        self.damaged: dict[tuple[str, int], tuple[int, str]] = {}  # AMQP frames carry no CRC: never filled
        self.channels: dict[tuple[str, int], Any] = {}
        self.generation = -1
        self.buffered: dict[tuple[str, int], deque[Record]] = {}
        # Deliveries not acknowledged, in order: (tag, first offset, end offset); a batch's messages share one.
        self.unacked: dict[tuple[str, int], deque[tuple[int, int, int]]] = {}
        self.numbered: dict[tuple[str, int], int] = {}  # the next offset of each queue (its channel's)
        self.paused: set[tuple[str, int]] = set()
        self.cancelled: list[str] = []  # queues whose consumer the broker cancelled (the queue was deleted)
        self.queues: dict[tuple[str, int], str] = {}
        self._first_at: float | None = None  # consumer-side batching: when the oldest waiting delivery was seen
        self.assigned: Callable[[list[tuple[str, int]]], None] = lambda _partitions: None
        self.revoked: Callable[[list[tuple[str, int]]], None] = lambda _partitions: None

    def subscribe(self, topics: Iterable[str], assigned: Callable[[list[tuple[str, int]]], None],
                  revoked: Callable[[list[tuple[str, int]]], None]) -> None:
        index = self.client.properties.get(INSTANCE_INDEX) if self.client.partitioned else 0
        self.assigned, self.revoked = assigned, revoked
        self.assign([(topic, index) for topic in topics])

    def assign(self, partitions: list[tuple[str, int]]) -> None:
        for destination, index in partitions:
            self.queues[(destination, index)] = self.client.declare_input(destination, index)
        self._start()

    def partitions(self, topic: str) -> set[int]:
        """Static assignment: one partition queue per instance."""
        return set(range(self.client.properties.get(INSTANCE_COUNT)))

    def _start(self) -> None:
        """Open a channel and start consuming each queue (again after a reconnection)."""
        connection = self.client.connection.connection
        self.generation = self.client.connection.generation
        for tp, queue in self.queues.items():
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.client.prefetch)
            channel.basic_consume(queue, self._on_message(tp))
            channel.add_on_cancel_callback(lambda _frame, queue=queue: self.cancelled.append(queue))
            self.channels[tp] = channel
            self.buffered[tp], self.unacked[tp], self.numbered[tp] = deque(), deque(), 1
        self.assigned(list(self.queues))

    def _on_message(self, tp: tuple[str, int]) -> Callable[..., None]:
        destination, index = tp

        def on_message(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
            tag, first = method.delivery_tag, self.numbered[tp]
            try:
                headers = _headers(properties)
            except Exception as error:  # noqa: BLE001 - no message may end the loop: its error path instead
                headers = UnreadableHeaders(f"message {destination}-{index}@{first} has properties that cannot be "
                                            f"read: {describe(error)}")
            key = method.routing_key
            key = key if isinstance(key, bytes) else str(key).encode("utf-8", "replace")
            stamp = _stamp(properties.timestamp)
            bodies = [body]
            if not isinstance(headers, UnreadableHeaders) and is_batch(properties.headers, text):
                try:
                    bodies = split(body)
                    headers = [(k, v) for k, v in headers if k not in BATCH_HEADERS]
                except BatchFormatError as error:  # the AMQP message as it came takes the error path
                    headers = UnreadableHeaders(f"message {destination}-{index}@{first}: {error}", kept=headers)
            buffered = self.buffered[tp]
            for offset, payload in enumerate(bodies, first):
                buffered.append(Record(destination, index, offset, key, payload,
                                       headers if len(bodies) == 1 else list(headers), stamp, -1))
            self.numbered[tp] = first + len(bodies)
            self.unacked[tp].append((tag, first, first + len(bodies)))

        return on_message

    def _usable(self) -> bool:
        connection = self.client.connection
        if self.cancelled:  # reconnecting declares the queue again and consumes it anew
            connection.lost(RuntimeError(f"the broker cancelled the consumer of queue '{self.cancelled[0]}'"))
            self.cancelled.clear()
        if not connection.revive():
            return False
        if self.generation != connection.generation:
            self.revoked(list(self.queues))  # the loop forgets their stalls: nothing of them stays paused
            self.paused.clear()
            try:
                self._start()
            except (AMQPError, OSError) as error:  # say a queue gone between the declarations and the consume
                connection.lost(error)
                return False
        return True

    def poll(self, seconds: float) -> Mapping[tuple[str, int], list[Record]]:
        deadline = time.monotonic() + seconds
        while True:
            if self._usable():
                self.client.connection.pump(0.0)
                batch = {} if self._filling() else self._take()
                if batch:
                    return batch
            left = deadline - time.monotonic()
            if left <= 0:
                return {}
            if self.client.connection.connection is None:
                time.sleep(min(left, 0.1))
            else:
                self.client.connection.pump(min(left, 0.05))

    def _filling(self) -> bool:
        """Consumer-side batching (``enableBatching``): fewer than ``batchSize`` deliveries wait, and the first of
        them came less than ``receiveTimeout`` ago."""
        if self.client.batching is None:
            return False
        size, timeout = self.client.batching
        waiting = sum(len(queue) for tp, queue in self.buffered.items() if tp not in self.paused)
        if not waiting:
            self._first_at = None
            return True
        self._first_at = self._first_at or time.monotonic()
        return waiting < size and time.monotonic() - self._first_at < timeout

    def _take(self) -> dict[tuple[str, int], list[Record]]:
        batch: dict[tuple[str, int], list[Record]] = {}
        room = MAX_BATCH if self.client.batching is None else self.client.batching[0]
        self._first_at = None
        for tp, waiting in self.buffered.items():
            if tp in self.paused or not waiting or room <= 0:
                continue
            taken = [waiting.popleft() for _ in range(min(room, len(waiting)))]
            batch[tp] = taken
            room -= len(taken)
        return batch

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> str | None:
        """Acknowledge every delivery whose messages are all below each offset (one ``multiple`` ack a queue)."""
        if self.generation != self.client.connection.generation:
            return "the connection was lost: the broker delivers the messages again"
        try:
            for tp, offset in offsets.items():
                unacked = self.unacked.get(tp)
                last = None
                while unacked and unacked[0][2] <= offset:
                    last = unacked.popleft()[0]
                if last is not None:
                    self.channels[tp].basic_ack(last, multiple=True)
        except (AMQPError, OSError) as error:
            self.client.connection.lost(error)
            return describe(error)
        return None

    def reject(self, tp: tuple[str, int], offset: int) -> None:
        """Reject the delivery holding ``offset`` without requeue: the broker dead-letters it through the queue's
        arguments (a Spring AMQP batch whole, its other messages included)."""
        if self.generation != self.client.connection.generation:
            raise SendError("the connection was lost: the broker delivers the message again")
        unacked = self.unacked.get(tp, deque())
        for delivery in unacked:
            if delivery[1] <= offset < delivery[2]:
                try:
                    self.channels[tp].basic_reject(delivery[0], requeue=False)
                except (AMQPError, OSError) as error:
                    self.client.connection.lost(error)
                    raise SendError(describe(error)) from None
                unacked.remove(delivery)
                return

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        """Requeue every unacknowledged delivery holding ``offset`` or later: the broker delivers them again (a
        Spring AMQP batch whole: its messages before ``offset`` come again too)."""
        if self.generation != self.client.connection.generation:
            return
        unacked, kept = self.unacked.get(tp, deque()), deque()
        try:
            for delivery in unacked:
                if delivery[2] > offset:
                    self.channels[tp].basic_nack(delivery[0], multiple=False, requeue=True)
                else:
                    kept.append(delivery)
        except (AMQPError, OSError) as error:
            self.client.connection.lost(error)
            return
        self.unacked[tp] = kept
        self.buffered[tp] = deque(r for r in self.buffered.get(tp, ()) if r.offset < offset)

    def idle(self, seconds: float, stop: Any) -> bool:
        """A back-off waited out in place (no poll deadline here), the connection served meanwhile (heartbeats,
        deliveries buffered); False when ``stop`` (SIGTERM) is set first."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if self.client.connection.connection is None:
                stop.wait(min(left, 0.1))
            else:
                self.client.connection.pump(min(left, 0.1))
        return False

    def pause(self, tp: tuple[str, int]) -> None:
        self.paused.add(tp)

    def resume(self, tp: tuple[str, int]) -> None:
        self.paused.discard(tp)

    def close(self, seconds: float) -> None:  # pika's close takes no timeout: the watchdog bounds it
        """Closing the connection returns what was not acknowledged to the queues."""
        self.client.close()


def _headers(properties: Any) -> list[tuple[str, bytes | None]]:
    """The loop's headers of a delivery: its content type, then its AMQP table (values carried as they came)."""
    headers: list[tuple[str, bytes | None]] = []
    if properties.content_type:
        headers.append((CONTENT_TYPE, text(properties.content_type).encode("utf-8")))
    if properties.headers:
        headers += [(text(k), None if v is None else Native(v)) for k, v in properties.headers.items()]
    return headers


def _stamp(timestamp: Any) -> int:
    """An AMQP timestamp property (seconds) in milliseconds; -1 when absent or not a number."""
    try:
        return int(timestamp) * 1000 if timestamp else -1
    except (TypeError, ValueError, OverflowError):
        return -1
