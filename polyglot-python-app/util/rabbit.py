"""The RabbitMQ transport (pika): exchanges, queues and routing keys as Spring's Rabbit binder lays them out.

The loop's operations on AMQP: a queue is a partition (``(destination, index)``), a delivery tag is an
offset, a commit acknowledges every delivery below it (``multiple``), a seek requeues every unacknowledged
delivery from it on, a pause holds deliveries back. Sends are published persistent on one channel in
confirm mode; confirms are pipelined (pika's blocking channel waits for each one, about 1,300 messages/s:
this publishes through its underlying asynchronous channel and waits only in ``flush``). Everything runs in
the loop's thread: pika's I/O happens in ``poll``, ``flush`` and ``commit``. A lost connection turns health
DOWN; ``poll`` reconnects with back-off and declares everything again; the broker redelivers what was not
acknowledged. Dead letters: ``republishToDlq`` publishes the copy to the DLX with Spring's ``x-*``
headers; without it the delivery is rejected without requeue and the broker dead-letters it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import ssl
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import pika
from pika.exceptions import AMQPChannelError, AMQPConnectionError, AMQPError, ChannelClosedByBroker

from . import amqp_values  # noqa: F401 - mends pika's codec of header values
from .arguments import ConfigError, Properties
from .bindings import INSTANCE_COUNT, INSTANCE_INDEX, InputBinding, output_properties
from .headers import CONTENT_TYPE, TYPES_HEADER, UnreadableHeaders
from .rabbit_config import (
    ADDRESSES,
    CONNECTION_TIMEOUT,
    HEARTBEAT,
    HOST,
    SSL_VALIDATE,
    SSL_VERIFY_HOSTNAME,
    addresses,
    consumer_properties,
    group_queue,
    producer_properties,
    unsupported,
)

log = logging.getLogger(__name__)

NAME = "the rabbit binder (pika)"
AMQP_SHORT = 65535  # the largest prefetch count and heartbeat AMQP carries
MAX_BATCH = 1000  # deliveries one poll hands the loop (measured: 500 cost 15 % at the default prefetch)
FRAME_HEADROOM = 20_000  # Spring's frameMaxHeadroom: what a dead letter's stack trace leaves of frame_max
RECONNECT_FIRST, RECONNECT_LONGEST = 1.0, 30.0


class Record(NamedTuple):
    """One delivery, in the shape the loop reads: the tag is the offset, the routing key the key."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes | None]]
    timestamp: int
    timestamp_type: int


class Native(bytes):
    """A header value as the loop passes bytes on, carrying its AMQP value so it is written back as it came."""

    value: Any

    def __new__(cls, value: Any) -> Native:
        text = value if isinstance(value, bytes) else (value if isinstance(value, str) else
                                                          json.dumps(_jsonable(value))).encode("utf-8")
        made = super().__new__(cls, text)
        made.value = value
        return made

    def __eq__(self, other: object) -> bool:
        return type(other) is Native and other.value == self.value and type(other.value) is type(self.value)

    def __hash__(self) -> int:
        return hash((bytes(self), type(self.value).__name__))


def _jsonable(value: Any) -> Any:
    """An AMQP value (tables and arrays of any depth) as JSON takes it: keys pika could not decode as UTF-8 (left
    as bytes) read with replacement characters; dates, decimals and bytes as their text."""
    if isinstance(value, dict):
        return {_text(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return _text(value)


class SendError(Exception):
    """A publish the broker did not confirm: a nack, a lost connection, or no confirm in time."""


class RecordError(SendError):
    """A publish refused for the message itself (too large, a header AMQP cannot carry)."""


@dataclass(frozen=True)
class RabbitInput(InputBinding):
    """An input binding on RabbitMQ: the DLQ is the group queue's ``.dlq``."""

    queue_dlq: str = ""

    def dlq_topic(self, destination: str) -> str:
        return self.queue_dlq or f"{destination}.{self.group}.dlq"


def connection_parameters(properties: Properties) -> tuple[list[pika.ConnectionParameters], list[str]]:
    """pika's parameters, one per address, and the ``host:port`` list (no credentials) for logs and health."""
    parameters, servers = [], []
    heartbeat = _within(properties.get(HEARTBEAT), HEARTBEAT.name, 0, AMQP_SHORT)  # 0: none
    timeout = _within(properties.get(CONNECTION_TIMEOUT), CONNECTION_TIMEOUT.name, 0, 2**31 - 1)  # 0: no limit
    for host, port, user, password, virtual_host, secure in addresses(properties):
        options: dict[str, Any] = {}
        if secure:
            context = ssl.create_default_context()
            if not properties.get(SSL_VALIDATE):
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            elif not properties.get(SSL_VERIFY_HOSTNAME):
                context.check_hostname = False
            options["ssl_options"] = pika.SSLOptions(context, host)
        parameters.append(pika.ConnectionParameters(
            host=host, port=port, virtual_host=virtual_host, credentials=pika.PlainCredentials(user, password),
            heartbeat=heartbeat, blocked_connection_timeout=60, socket_timeout=timeout / 1000 or None,
            connection_attempts=1, **options))
        servers.append(f"{host}:{port}")
    return parameters, servers


def _within(value: int, name: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ConfigError(f"Invalid value '{value}' for property '{name}': expected {low} to {high}")
    return value


class Connection:
    """The app's one AMQP connection: declarations, consumer channels, the confirmed publishing channel."""

    def __init__(self, parameters: list[pika.ConnectionParameters], servers: list[str]) -> None:
        self.parameters, self.servers = parameters, servers
        self.connection: pika.BlockingConnection | None = None
        self.generation = 0  # a new one at every connection: older delivery tags and publish handles are void
        self.problem: str | None = "not connected yet"
        self.blocked: str | None = None  # the broker blocks publishing (a memory or disk alarm): health DOWN
        self.declarations: list[Callable[[Any], None]] = []  # run again on every connection
        self._retry_at, self._pause = 0.0, RECONNECT_FIRST / 2
        self.publisher: Publisher | None = None
        self.frame_max = 131_072

    def open(self) -> None:
        """Connect (trying each address), declare everything; AMQPError when no broker answers."""
        self.connection = pika.BlockingConnection(self.parameters)
        self.generation += 1
        self.blocked = None
        self.connection.add_on_connection_blocked_callback(self._blocked)
        self.connection.add_on_connection_unblocked_callback(self._unblocked)
        self.frame_max = self.connection._impl.params.frame_max
        channel = self.connection.channel()
        for declare in self.declarations:
            declare(channel)
        channel.close()
        self.problem, self._pause = None, RECONNECT_FIRST / 2
        log.info("Connected to RabbitMQ at %s", ",".join(self.servers))

    def _blocked(self, _connection: Any, frame: Any) -> None:
        self.blocked = f"RabbitMQ blocks publishing ({getattr(frame.method, 'reason', '') or 'a resource alarm'})"
        log.warning("%s: sends wait until it unblocks", self.blocked)

    def _unblocked(self, _connection: Any, _frame: Any) -> None:
        if self.blocked is not None:
            log.info("RabbitMQ unblocked publishing")
        self.blocked = None

    def declare(self, declaration: Callable[[Any], None]) -> None:
        """Run a declaration now and again after every reconnection (as Spring's RabbitAdmin does)."""
        self.declarations.append(declaration)
        channel = self.connection.channel()
        try:
            declaration(channel)
        finally:
            if channel.is_open:
                channel.close()

    def lost(self, error: BaseException) -> None:
        """The connection failed: everything of this generation is void until ``revive`` reconnects."""
        if self.problem is None:
            log.warning("Lost the connection to RabbitMQ at %s (%s): reconnecting", ",".join(self.servers),
                        _describe(error))
        self.problem = f"RabbitMQ connection lost ({_describe(error)})"
        self.generation += 1
        if self.publisher is not None:
            self.publisher.void()
        try:
            if self.connection is not None and self.connection.is_open:
                self.connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail any way
            pass
        self.connection = None
        self._retry_at = 0.0

    def revive(self) -> bool:
        """Reconnect when due (back-off doubling to 30 s); True when connected."""
        if self.connection is not None and self.problem is None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            self.open()
            return True
        except AMQPError as error:
            self._pause = min(self._pause * 2, RECONNECT_LONGEST)
            self._retry_at = time.monotonic() + self._pause
            self.problem = f"RabbitMQ unreachable at {','.join(self.servers)} ({_describe(error)})"
            log.warning("%s: trying again in %.0f s", self.problem, self._pause)
            if self.connection is not None:
                self.lost(error)
            return False

    def pump(self, seconds: float) -> None:
        """Let pika read and dispatch for up to ``seconds``; a failure marks the connection lost."""
        if self.connection is None:
            return
        try:
            self.connection.process_data_events(time_limit=seconds)
        except (AMQPError, OSError) as error:
            self.lost(error)


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
                raise SendError(_describe(error)) from None
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
        except (TypeError, ValueError, AssertionError, OverflowError, struct.error) as error:  # pika cannot encode it
            raise RecordError(f"message not encodable: {error}") from None
        except AMQPChannelError as error:
            self._closed(error)
            raise SendError(_describe(error)) from None
        except (AMQPConnectionError, OSError) as error:
            self.connection.lost(error)
            raise SendError(_describe(error)) from None
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
        reason = self.connection.problem if error is None else f"the broker closed the channel ({_describe(error)})"
        self.closed_why = reason or "the channel closed before the broker confirmed"
        self.channel, self.outstanding, self.done, self.epoch = None, deque(), set(), self.epoch + 1

    def flush(self, seconds: float) -> bool:
        """Wait for the confirms of every send; True once none is outstanding (a closed channel failed them)."""
        deadline = time.monotonic() + seconds
        while self.outstanding:
            if not self._usable():
                reason = getattr(self.channel, "_closing_reason", None) if self.channel is not None else None
                self._closed(reason)
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.connection.pump(min(left, 0.05))
        return True

    def outcome(self, handle: tuple[int, int]) -> Exception | None:
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
    """An output binding's exchange; with ``dead_letters``, an input's DLQ (republished, or rejected)."""

    def __init__(self, client: Client, binding: str | None, dead_letters: RabbitInput | None = None) -> None:
        self.client, self.dead_letters = client, dead_letters
        self.publisher = client.publisher
        self.count = 1
        self.max_request_size = max(0, client.connection.frame_max - FRAME_HEADROOM) + 1024
        if binding is not None:
            self.count = client.properties.get(output_properties(binding)["partition_count"])

    def partition_count(self, topic: str) -> int:
        return self.count if self.dead_letters is None else 1 << 30

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, Any]] | None,
             partition: int | None) -> Any:
        properties, table = _properties(headers)
        if self.dead_letters is not None:
            return self._dead_letter(value or b"", key, properties, table)
        routing_key = topic if partition is None else f"{topic}-{partition}"
        return self.publisher.publish(topic, routing_key, value or b"", properties)

    def _dead_letter(self, value: bytes, key: bytes | None, properties: pika.BasicProperties,
                     table: dict[str, Any]) -> Any:
        """Spring's republishToDlq headers from the loop's; or, with republishing off, a reject."""
        origin = {k: table.pop(k, None) for k in ("x-original-topic", "x-original-partition", "x-original-offset",
                                                  "x-original-timestamp", "x-original-timestamp-type",
                                                  "x-exception-fqcn")}
        destination = _text(origin["x-original-topic"])
        index = struct.unpack(">i", bytes(origin["x-original-partition"]))[0]
        tag = struct.unpack(">q", bytes(origin["x-original-offset"]))[0]
        if not self.client.republish:
            return self.client.reject((destination, index), tag)
        for name in ("x-exception-message", "x-exception-stacktrace"):
            if name in table:
                table[name] = _text(table[name])
        table["x-original-exchange"] = destination
        table["x-original-routingKey"] = (key or b"").decode("utf-8", "replace")
        properties.headers = table
        queue = self.client.queue_name(destination, index)
        return self.publisher.publish(self.client.dlx, self.client.dlq_key or queue, value, properties)

    def flush(self, seconds: float) -> bool:
        return self.publisher.flush(seconds)

    def settled(self) -> bool:
        return self.publisher.settled() if self.dead_letters is None or self.client.republish else True

    def close(self, seconds: float) -> None:  # pika's close takes no timeout: the watchdog bounds it
        """Everything was flushed: close the connection (the consumer's close closes it too)."""
        self.client.close()


class Consumer:
    """The input binding's queues, a channel each (delivery tags are per channel)."""

    max_poll_interval = 300.0  # no broker-side poll limit; the loop's batches stay within half of it

    def __init__(self, client: Client) -> None:
        self.client = client
        self.damaged: dict[tuple[str, int], tuple[int, str]] = {}  # AMQP frames carry no CRC: never filled
        self.channels: dict[tuple[str, int], Any] = {}
        self.generation = -1
        self.buffered: dict[tuple[str, int], deque[Record]] = {}
        self.unacked: dict[tuple[str, int], deque[int]] = {}  # delivery tags not acknowledged, in order
        self.paused: set[tuple[str, int]] = set()
        self.cancelled: list[str] = []  # queues whose consumer the broker cancelled (the queue was deleted)
        self.queues: dict[tuple[str, int], str] = {}
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
            self.buffered[tp], self.unacked[tp] = deque(), deque()
        self.assigned(list(self.queues))

    def _on_message(self, tp: tuple[str, int]) -> Callable[..., None]:
        destination, index = tp

        def on_message(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
            tag = method.delivery_tag
            try:
                headers = _headers(properties)
            except Exception as error:  # noqa: BLE001 - no message may end the loop: its error path instead
                headers = UnreadableHeaders(f"message {destination}-{index}@{tag} has properties that cannot be "
                                            f"read: {_describe(error)}")
            key = method.routing_key
            stamp = _stamp(properties.timestamp)
            self.buffered[tp].append(Record(destination, index, tag, key if isinstance(key, bytes) else
                                            str(key).encode("utf-8", "replace"), body, headers, stamp, -1))
            self.unacked[tp].append(tag)

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
                batch = self._take()
                if batch:
                    return batch
            left = deadline - time.monotonic()
            if left <= 0:
                return {}
            if self.client.connection.connection is None:
                time.sleep(min(left, 0.1))
            else:
                self.client.connection.pump(min(left, 0.05))

    def _take(self) -> dict[tuple[str, int], list[Record]]:
        batch: dict[tuple[str, int], list[Record]] = {}
        room = MAX_BATCH
        for tp, waiting in self.buffered.items():
            if tp in self.paused or not waiting or room <= 0:
                continue
            taken = [waiting.popleft() for _ in range(min(room, len(waiting)))]
            batch[tp] = taken
            room -= len(taken)
        return batch

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> str | None:
        """Acknowledge every delivery below each offset (one ``multiple`` ack a queue)."""
        if self.generation != self.client.connection.generation:
            return "the connection was lost: the broker delivers the messages again"
        try:
            for tp, offset in offsets.items():
                tags = self.unacked.get(tp)
                last = None
                while tags and tags[0] < offset:
                    last = tags.popleft()
                if last is not None:
                    self.channels[tp].basic_ack(last, multiple=True)
        except (AMQPError, OSError) as error:
            self.client.connection.lost(error)
            return _describe(error)
        return None

    def reject(self, tp: tuple[str, int], tag: int) -> None:
        """Reject one delivery without requeue: the broker dead-letters it through the queue's arguments."""
        if self.generation != self.client.connection.generation:
            raise SendError("the connection was lost: the broker delivers the message again")
        tags = self.unacked.get(tp)
        if tags and tag in tags:
            try:
                self.channels[tp].basic_reject(tag, requeue=False)
            except (AMQPError, OSError) as error:
                self.client.connection.lost(error)
                raise SendError(_describe(error)) from None
            tags.remove(tag)

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        """Requeue every unacknowledged delivery from ``offset`` on: the broker delivers them again."""
        if self.generation != self.client.connection.generation:
            return
        tags, kept = self.unacked.get(tp, deque()), deque()
        try:
            for tag in tags:
                if tag >= offset:
                    self.channels[tp].basic_nack(tag, multiple=False, requeue=True)
                else:
                    kept.append(tag)
        except (AMQPError, OSError) as error:
            self.client.connection.lost(error)
            return
        self.unacked[tp] = kept
        self.buffered[tp] = deque(r for r in self.buffered.get(tp, ()) if r.offset < offset)

    def pause(self, tp: tuple[str, int]) -> None:
        self.paused.add(tp)

    def resume(self, tp: tuple[str, int]) -> None:
        self.paused.discard(tp)

    def close(self, seconds: float) -> None:  # pika's close takes no timeout: the watchdog bounds it
        """Closing the connection returns what was not acknowledged to the queues."""
        self.client.close()


class Client:
    """The rabbit binder's connection, declarations, producers and consumer."""

    name = NAME
    Error = AMQPError
    null_header = None

    def __init__(self, properties: Properties) -> None:
        self.properties = properties
        parameters, self.servers = connection_parameters(properties)
        self.servers_property = ADDRESSES.name if properties.get(ADDRESSES) else HOST.name
        self.connection = Connection(parameters, self.servers)
        self.publisher = Publisher(self.connection)
        settings = {key: properties.get(prop) for key, prop in consumer_properties().items()}
        self.input_settings = settings
        self.prefetch, self.partitioned = settings["prefetch"], settings["partitioned"]
        self.republish, self.dlx, self.dlq_key = settings["republish"], settings["dlx"], settings["dlq_key"]
        _within(self.prefetch, consumer_properties()["prefetch"].name, 1, AMQP_SHORT)
        self.source: RabbitInput | None = None
        self.consumer_: Consumer | None = None
        if ignored := unsupported(properties):
            log.warning("Rabbit binder properties this binder does not support, ignored: %s", ", ".join(ignored))

    # -- what the loop asks of every transport --------------------------------------------------
    def problem(self) -> str | None:
        """Why the broker cannot be used now (health DOWN), or None."""
        return self.connection.problem or self.connection.blocked

    def input(self, binding: InputBinding) -> RabbitInput:
        """The input binding with the rabbit binder's DLQ: ``autoBindDlq``, on the group queue."""
        values = {f.name: getattr(binding, f.name) for f in fields(binding)}
        dlq = self.input_settings["auto_bind_dlq"] and not binding.anonymous
        values.update(dlq=dlq, dlq_name=None)
        self.source = RabbitInput(**values, queue_dlq=self.input_settings["dlq_name"] or "")
        return self.source

    def about_the_record(self, error: BaseException) -> bool:
        return isinstance(error, RecordError) or (isinstance(error, ChannelClosedByBroker)
                                                  and "message size" in str(error).lower())

    def too_large(self, error: BaseException) -> bool:
        return "size" in str(error).lower() or "frame" in str(error).lower()

    def outcome(self, handle: Any) -> Exception | None:
        return None if handle is None else self.publisher.outcome(handle)

    def _connected(self) -> None:
        """Connect at start, trying again with back-off while no broker answers (SIGTERM ends the wait)."""
        pause = RECONNECT_FIRST
        while self.connection.connection is None:
            try:
                self.connection.open()
            except AMQPConnectionError as error:
                self.connection.problem = f"RabbitMQ unreachable at {','.join(self.servers)} ({_describe(error)})"
                log.warning("%s (property '%s'): trying again in %.0f s", self.connection.problem,
                            self.servers_property, pause)
                time.sleep(pause)  # a signal handler interrupts it: SIGTERM ends the start
                pause = min(pause * 2, RECONNECT_LONGEST)

    def producer(self, binding: str | None, carries: InputBinding | None = None) -> Producer:
        self._connected()
        if binding is not None:
            self._declare_output(binding)
        return Producer(self, binding, self.source if carries is not None else None)

    def consumer(self, binding: InputBinding) -> tuple[Consumer, str]:
        self._connected()
        self.consumer_ = Consumer(self)
        return self.consumer_, "the queue's first unacknowledged message"

    def topic_partitions(self, topics: list[str]) -> dict[str, int]:
        """Exchanges have no partitions: nothing for the Kafka provisioner to create or grow."""
        return dict.fromkeys(topics, 1 << 30)

    def create_topics(self, wanted: Mapping[str, int], replication: int) -> None:
        """Never called: ``topic_partitions`` reports every destination present."""

    def grow(self, topic: str, total: int) -> None:
        """Never called."""

    def reject(self, tp: tuple[str, int], tag: int) -> None:
        if self.consumer_ is not None:
            self.consumer_.reject(tp, tag)

    def close(self) -> None:
        connection = self.connection.connection
        self.connection.connection = None
        if connection is not None and connection.is_open:
            with contextlib.suppress(AMQPError, OSError):
                connection.close()

    # -- Spring's layout --------------------------------------------------------------------------
    def queue_name(self, destination: str, index: int) -> str:
        assert self.source is not None
        base = f"{destination}.{self.source.group}"
        return f"{base}-{index}" if self.partitioned else base

    def declare_input(self, destination: str, index: int) -> str:
        """The exchange and the input's queue (with its DLQ), as Spring's provisioner declares them."""
        assert self.source is not None
        settings = self.input_settings
        if self.source.anonymous:
            suffix = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            queue = f"{destination}.anonymous.{suffix}"

            def anonymous(channel: Any) -> None:
                channel.exchange_declare(destination, "topic", durable=True)
                channel.queue_declare(queue, durable=False, exclusive=True, auto_delete=True,
                                      arguments={"x-queue-master-locator": "client-local"})
                channel.queue_bind(queue, destination, settings["binding_key"] or "#")

            self.connection.declare(anonymous)
            return queue
        queue = self.queue_name(destination, index)
        key = settings["binding_key"] or (destination if self.partitioned else "#")
        if self.partitioned:
            key = f"{key}-{index}"
        self.connection.declare(group_queue(destination, queue, key, settings,
                                             base=f"{destination}.{self.source.group}"))
        return queue

    def _declare_output(self, binding: str) -> None:
        """The output's exchange, and the queues of its required groups (partition queues when partitioned)."""
        declared = output_properties(binding)
        destination = self.properties.get(declared["destination"])
        count = self.properties.get(declared["partition_count"])
        partitioned = self.properties.get(declared["partition_key"]) is not None
        mine = {key: self.properties.get(prop) for key, prop in producer_properties(binding).items()}
        groups = [g.strip() for g in (mine.pop("required_groups") or "").split(",") if g.strip()]

        def exchange(channel: Any) -> None:
            channel.exchange_declare(destination, "topic", durable=True)

        self.connection.declare(exchange)
        for group in groups:
            base = f"{destination}.{group}"
            if partitioned:
                for index in range(count):
                    key = f"{mine['binding_key'] or destination}-{index}"
                    self.connection.declare(group_queue(destination, f"{base}-{index}", key, mine, base))
            else:
                self.connection.declare(group_queue(destination, base, mine["binding_key"] or "#", mine, base))


def _headers(properties: Any) -> list[tuple[str, bytes | None]]:
    """The loop's headers of a delivery: its content type, then its AMQP table (values carried as they came)."""
    headers: list[tuple[str, bytes | None]] = []
    if properties.content_type:
        headers.append((CONTENT_TYPE, _text(properties.content_type).encode("utf-8")))
    if properties.headers:
        headers += [(_text(k), None if v is None else Native(v)) for k, v in properties.headers.items()]
    return headers


def _stamp(timestamp: Any) -> int:
    """An AMQP timestamp property (seconds) in milliseconds; -1 when absent or not a number."""
    try:
        return int(timestamp) * 1000 if timestamp else -1
    except (TypeError, ValueError, OverflowError):
        return -1


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
    text = _text(value)
    if text and text.startswith("\""):
        try:
            return json.loads(text)
        except ValueError:
            return text.strip("\"")
    return text


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Native):
        value = value.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
