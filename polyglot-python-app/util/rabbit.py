"""The RabbitMQ transport (pika): its client, which declares Spring's exchanges and queues (arguments: rabbit_config).

The loop's operations on AMQP: a queue is a partition (``(destination, index)``), a message's number in its
channel is an offset (a Spring AMQP batch split into its messages takes one a message), a commit acknowledges
every delivery below it (``multiple``), a seek requeues every unacknowledged delivery from it on, a pause holds
deliveries back (``rabbit_consumer.py``). Sends are published persistent
on one channel in confirm mode, confirms pipelined (``rabbit_publisher.py``). Everything runs in the loop's
thread: pika's I/O happens in ``poll``, ``flush`` and ``commit``. A lost connection turns health DOWN;
``poll`` reconnects with back-off and declares everything again (``rabbit_connection.py``); the broker
redelivers what was not acknowledged.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from pika.exceptions import AMQPConnectionError, AMQPError, ChannelClosedByBroker

from . import amqp_values  # noqa: F401 - mends pika's codec of header values
from .arguments import Properties
from .bindings import InputBinding, output_properties
from .rabbit_config import ADDRESSES, HOST, consumer_properties, group_queue, producer_properties, unsupported
from .rabbit_connection import (
    AMQP_SHORT,
    RECONNECT_FIRST,
    RECONNECT_LONGEST,
    Connection,
    RecordError,
    connection_parameters,
    describe,
    within,
)
from .rabbit_consumer import Consumer
from .rabbit_publisher import Producer, Publisher, RabbitDeadLetters

log = logging.getLogger(__name__)

NAME = "the rabbit binder (pika)"


@dataclass(frozen=True)
class RabbitInput(InputBinding):
    """An input binding on RabbitMQ: the DLQ is the group queue's ``.dlq``."""

    queue_dlq: str = ""

    def dlq_topic(self, destination: str) -> str:
        return self.queue_dlq or f"{destination}.{self.group}.dlq"


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
        declared = consumer_properties()
        self.batching = (within(settings["batch_size"], declared["batch_size"].name, 1, 1 << 20),
                         within(settings["receive_timeout"], declared["receive_timeout"].name, 0, 1 << 31) / 1000
                         ) if settings["enable_batching"] else None
        self.republish, self.dlx, self.dlq_key = settings["republish"], settings["dlx"], settings["dlq_key"]
        within(self.prefetch, consumer_properties()["prefetch"].name, 1, AMQP_SHORT)
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

    def fenced(self, error: BaseException) -> bool:
        return False  # no transactional id here

    def outcome(self, handle: Any) -> Exception | None:
        return None if handle is None else self.publisher.outcome(handle)

    def _connected(self) -> None:
        """Connect at start, trying again with back-off while no broker answers (SIGTERM ends the wait)."""
        pause = RECONNECT_FIRST
        while self.connection.connection is None:
            try:
                self.connection.open()
            except AMQPConnectionError as error:
                self.connection.problem = f"RabbitMQ unreachable at {','.join(self.servers)} ({describe(error)})"
                log.warning("%s (property '%s'): trying again in %.0f s", self.connection.problem,
                            self.servers_property, pause)
                time.sleep(pause)  # a signal handler interrupts it: SIGTERM ends the start
                pause = min(pause * 2, RECONNECT_LONGEST)

    def producer(self, binding: str, carries: InputBinding | None = None) -> Producer:
        self._connected()
        self._declare_output(binding)
        return Producer(self, binding)

    def dead_letters(self, source: InputBinding, producer: Any = None) -> RabbitDeadLetters:
        """The republishing dead-letter sender (``producer``, Kafka's transactional one, is never given here)."""
        self._connected()
        return RabbitDeadLetters(self)

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

    def reject(self, tp: tuple[str, int], offset: int) -> None:
        if self.consumer_ is not None:
            self.consumer_.reject(tp, offset)

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
