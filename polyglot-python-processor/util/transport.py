"""What the stream loop needs of a transport's client, and the choice of client.

The loop (``binder.py``, ``settle.py``) knows records, offsets and outcomes, never a client class. A
transport (``librdkafka.py``, ``kafka_python.py``, ``rabbit.py``) creates topics, opens producers, the
dead-letter sender and the consumer, sends with a completion handle and flushes, commits, seeks and
pauses, and says whether a failed send was about the record itself. Partitions are ``(topic, partition)``
tuples; a record has ``topic``, ``partition``, ``offset``, ``key``, ``value``, ``headers``, ``timestamp``
and ``timestamp_type`` (-1 none, 0 create time, 1 log-append time). With a transaction id prefix, a Kafka
client's one transactional producer takes every output and dead letter of a batch (``transactions.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from .arguments import ConfigError, Properties, Property
from .bindings import InputBinding
from .kafka_config import BROKERS, CLIENT

DEFAULT_BINDER = Property("spring.cloud.stream.defaultBinder", str, None,
                          "kafka or rabbit; unset: rabbit when a spring.rabbitmq connection property is set and no "
                          "Kafka brokers are, else kafka.", choices=("kafka", "rabbit"))

TP = tuple[str, int]
Headers = Sequence[tuple[str, bytes | None]]


class Producer(Protocol):
    max_request_size: int

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: Headers | None,
             partition: int | None) -> Any:
        """Queue a record; the handle's outcome is read after a flush. Raises when refused at once."""

    def quick(self, topic: str, value: bytes | None, headers: Headers | None) -> Any:
        """``send`` without key or partition, as cheap as the client allows (the straight pass's)."""

    def flush(self, seconds: float) -> bool:
        """True once every send is acknowledged or failed; False when ``seconds`` ran out first."""

    def settled(self) -> bool:
        """True when every send since the last call was acknowledged: no handle needs reading."""

    def partition_count(self, topic: str) -> int: ...

    def close(self, seconds: float) -> None:
        """Close, waiting at most ``seconds`` for what is still queued."""


class TransactionalProducer(Producer, Protocol):
    """A producer whose first send begins a transaction, ended by ``commit`` or ``abort``."""

    transactional_id: str
    open: bool  # a transaction is open: something was sent since the last commit or abort

    def send_offsets(self, offsets: Mapping[TP, int], consumer: Any, seconds: float) -> None:
        """Add ``offsets`` (the consumer's group's, with its group metadata) to the open transaction. AbortError
        when it cannot; FatalError when the producer cannot go on (``client_errors.py``)."""

    def commit(self, seconds: float) -> None:
        """Commit the open transaction (its sends must have been read: kafka-python commits past a failed one).
        AbortError when it cannot; FatalError when the producer cannot go on."""

    def abort(self, seconds: float, renew: bool = False) -> None:
        """Abort the open transaction; then, with ``renew`` (the broker refused sends: the producer's sequence
        numbers are past what it has, and Tansu refuses the epoch bump that would mend them), start the producer
        again under its id. FatalError when fenced, when the abort failed (a producer that may have been fenced
        unawares is never started again: its start would take the id back), or when it could not start again."""


class DeadLetters(Protocol):
    """An input binding's dead-letter sender, with its transport's headers (``dead_letter.py`` on Kafka)."""

    def send(self, record: Any, cause: BaseException, trace: int | None) -> tuple[Any, int]:
        """Queue a record's copy: (its handle, the bytes of stack trace it carries); raises when refused at once.
        ``trace`` bounds the stack trace; None: what the largest request leaves room for."""

    def partition_count(self, topic: str) -> int:
        """The partitions of an input topic (its dead-letter topic is made with as many)."""

    def flush(self, seconds: float) -> bool: ...

    def settled(self) -> bool: ...

    def close(self, seconds: float) -> None: ...


class Consumer(Protocol):
    max_poll_interval: float
    # Partitions whose fetched data the client found damaged since the loop last looked: the offset the damage
    # starts at and why (say a CRC mismatch). The loop takes them and stalls each there.
    damaged: dict[TP, tuple[int, str]]

    def subscribe(self, topics: Iterable[str], assigned: Callable[[list[TP]], None],
                  revoked: Callable[[list[TP]], None]) -> None: ...

    def assign(self, partitions: list[TP]) -> None: ...

    def partitions(self, topic: str) -> set[int]: ...

    def poll(self, seconds: float) -> Mapping[TP, list[Any]]:
        """Records by partition, in offset order."""

    def commit(self, offsets: Mapping[TP, int]) -> str | None:
        """Commit, waiting for the broker; why not when it failed (the records will come again)."""

    def seek(self, tp: TP, offset: int) -> None: ...

    def pause(self, tp: TP) -> None: ...

    def resume(self, tp: TP) -> None: ...

    def close(self, seconds: float) -> None:
        """Leave the group, waiting at most ``seconds`` where the client can bound it."""

    def group_metadata(self) -> Any:
        """What a transaction's offsets carry of the group (its id, generation and member)."""


class Client(Protocol):
    name: str
    Error: type[Exception]  # what the client raises when no broker answers
    null_header: bytes | None  # what a null header value is written as
    servers: list[str]  # host:port of the brokers, for health and logs (no credentials)
    servers_property: str  # the property they come from

    def problem(self) -> str | None:
        """Why the broker cannot be used now (health DOWN), or None."""

    def input(self, binding: InputBinding) -> InputBinding:
        """The input binding as this binder has it (the rabbit binder's DLQ is the queue's)."""

    def about_the_record(self, error: BaseException) -> bool:
        """A send failure the record itself caused (too large, malformed), not the broker's state."""

    def too_large(self, error: BaseException) -> bool: ...

    def fenced(self, error: BaseException) -> bool:
        """A Kafka send refused because another producer took the transactional id."""

    def outcome(self, handle: Any) -> Exception | None:
        """None once acknowledged; else why not (unfinished when the last flush ended: a timeout)."""

    def producer(self, binding: str | None, carries: InputBinding | None = None) -> Producer: ...

    def dead_letters(self, source: InputBinding, producer: Producer | None = None) -> DeadLetters:
        """The input binding's dead-letter sender; on ``producer`` (the transactional one) when given."""

    def transactional(self, transactional_id: str, carries: InputBinding | None) -> TransactionalProducer:
        """The app's transactional producer, its transactions initialised; ``carries``: the input whose dead
        letters it sends too."""

    def consumer(self, binding: InputBinding) -> tuple[Consumer, str]: ...

    def topic_partitions(self, topics: list[str]) -> dict[str, int]: ...

    def create_topics(self, wanted: Mapping[str, int], replication: int) -> None: ...

    def grow(self, topic: str, total: int) -> None: ...


# The spring.rabbitmq.* connection properties whose presence chooses the rabbit binder (relaxed names; the
# environment's SPRING_RABBITMQ_VIRTUAL_HOST reads as virtual.host).
RABBIT_CONNECTION = ("host", "port", "addresses", "username", "password", "virtualhost", "virtual.host", "ssl")


def binder(properties: Properties) -> str:
    """``kafka`` or ``rabbit``: ``defaultBinder``, else what the connection properties set (both: an error)."""
    named = properties.get(DEFAULT_BINDER)
    if named is not None:
        return named
    rabbit = any(key == name or key.startswith(f"{name}.") for key in properties.subtree("spring.rabbitmq")
                 for name in RABBIT_CONNECTION)
    kafka = properties.raw(BROKERS.name, *BROKERS.aliases) is not None
    if rabbit and kafka:
        raise ConfigError(f"Both Kafka brokers ('{BROKERS.name}') and a RabbitMQ connection ('spring.rabbitmq.*') "
                          f"are set: choose one with '{DEFAULT_BINDER.name}' (kafka or rabbit)")
    return "rabbit" if rabbit else "kafka"


def open_client(properties: Properties) -> Client:
    """The binder's client (``...kafka.binder.client`` picks Kafka's); only that one is imported."""
    if binder(properties) == "rabbit":
        from .rabbit import Client as Rabbit

        return Rabbit(properties)
    if properties.get(CLIENT) == "kafka-python":
        from .kafka_python import Client as KafkaPython

        return KafkaPython(properties)
    from .librdkafka import Client as Librdkafka

    return Librdkafka(properties)
