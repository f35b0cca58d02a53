"""The kafka-python transport: the few operations the binder's loop needs of a Kafka client.

The loop (``binder.py``) knows records, offsets and outcomes, never a client class: a transport
creates topics, opens producers and the consumer, sends and flushes, commits, seeks and pauses, and
says whether a failed send was about the record itself. Partitions are ``(topic, partition)`` tuples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata
from kafka import TopicPartition as _TopicPartition
from kafka.admin import NewPartitions, NewTopic
from kafka.errors import (
    CommitFailedError,
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    UnsupportedForMessageFormatError,
)
from kafka.serializer import Serializer

from .arguments import Properties
from .bindings import InputBinding, input_properties
from .kafka_config import client_settings

log = logging.getLogger(__name__)

NAME = "kafka-python"
# Refusals about the record itself: it takes its error path. Any other failure of a send is the broker's.
RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, CorruptRecordError, InvalidRecordError,
                 InvalidTimestampError, UnsupportedForMessageFormatError)
SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError)
NULL_HEADER = b""  # kafka-python writes no null header value: such a header is forwarded with an empty one
TP = tuple[str, int]


def about_the_record(error: BaseException) -> bool:
    """A send failure the record itself caused: the client refused it (any non-Kafka error) or the broker did."""
    return isinstance(error, RECORD_ERRORS) or not isinstance(error, KafkaError)


def too_large(error: BaseException) -> bool:
    return isinstance(error, SIZE_ERRORS)


def outcome(future: Any) -> Exception | None:
    """None once acknowledged; else why not (still unfinished when the flush ended: a timeout)."""
    if future.succeeded():
        return None
    return future.exception if future.is_done else KafkaTimeoutError("not acknowledged in time")


class _NullKey(Serializer):
    """Lets a record with neither key nor value (a tombstone) through kafka-python, which refuses both None."""

    NULL = object()

    def serialize(self, topic: str, headers: Any, key: Any) -> Any:
        return None if key is self.NULL else key


class Producer:
    """One producer; ``send`` returns a future that ``outcome`` reads once flushed."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.max_request_size: int = settings.get("max_request_size", KafkaProducer.DEFAULT_CONFIG["max_request_size"])
        self._producer = KafkaProducer(key_serializer=_NullKey(), **settings)
        self._send = self._producer.send

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None,
             partition: int | None) -> Any:
        if key is None and value is None:
            key = _NullKey.NULL
        return self._send(topic, value=value, key=key, headers=headers, partition=partition)

    def flush(self, seconds: float) -> bool:
        """True once every send is acknowledged or failed; False when ``seconds`` ran out first."""
        try:
            self._producer.flush(timeout=seconds)
            return True
        except KafkaTimeoutError:
            return False

    def partition_count(self, topic: str) -> int:
        return len(self._producer.partitions_for(topic) or {0})

    def close(self) -> None:
        self._producer.close(timeout=2)


class Consumer:
    """The input binding's consumer: batches per partition, synchronous commits, seek, pause and resume."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._consumer = KafkaConsumer(**settings)
        self.max_poll_interval = self._consumer.config["max_poll_interval_ms"] / 1000

    def subscribe(self, topics: Iterable[str], assigned: Callable[[list[TP]], None],
                  revoked: Callable[[list[TP]], None]) -> None:
        self._consumer.subscribe(list(topics), listener=_Listener(assigned, revoked))

    def partitions(self, topic: str) -> set[int]:
        return self._consumer.partitions_for_topic(topic) or {0}

    def assign(self, partitions: list[TP]) -> None:
        self._consumer.assign([_TopicPartition(*tp) for tp in partitions])

    def poll(self, seconds: float) -> Mapping[TP, list[Any]]:
        """Records by partition (kafka-python's TopicPartition is a ``(topic, partition)`` tuple)."""
        return self._consumer.poll(timeout_ms=int(seconds * 1000))

    def commit(self, offsets: Mapping[TP, int]) -> str | None:
        """Commit, waiting for the broker; why not when it failed (the records will come again)."""
        try:
            self._consumer.commit({_TopicPartition(*tp): OffsetAndMetadata(offset, "", -1)
                                   for tp, offset in offsets.items()}, timeout_ms=10_000)
        except CommitFailedError:
            return "the group rebalanced"
        except KafkaError as error:
            return str(error)
        return None

    def seek(self, tp: TP, offset: int) -> None:
        self._consumer.seek(_TopicPartition(*tp), offset)

    def pause(self, tp: TP) -> None:
        self._consumer.pause(_TopicPartition(*tp))

    def resume(self, tp: TP) -> None:
        self._consumer.resume(_TopicPartition(*tp))

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=2000)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, assigned: Callable[[list[TP]], None], revoked: Callable[[list[TP]], None]) -> None:
        self.assigned, self.revoked = assigned, revoked

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned(sorted((tp.topic, tp.partition) for tp in assigned))


class Client:
    """kafka-python clients configured from the binder's properties."""

    name = NAME
    Error = KafkaError
    null_header = NULL_HEADER
    about_the_record = staticmethod(about_the_record)
    too_large = staticmethod(too_large)
    outcome = staticmethod(outcome)

    def __init__(self, properties: Properties) -> None:
        self.properties = properties

    def producer(self, binding: str | None, carries: InputBinding | None = None) -> Producer:
        """The producer of an output binding; with ``carries``, the DLQ producer of that input binding.

        A dead-lettered record is as big as the input topic let it be: the DLQ producer sends any record
        the consumer can fetch.
        """
        settings = client_settings(self.properties, binding, "producer")
        if carries is not None:
            fetchable = consumer_settings(self.properties, carries).get(
                "fetch_max_bytes", KafkaConsumer.DEFAULT_CONFIG["fetch_max_bytes"])
            settings["max_request_size"] = max(settings.get("max_request_size", 0), fetchable)
        return Producer(settings)

    def consumer(self, binding: InputBinding) -> tuple[Consumer, str]:
        """The input binding's consumer and the offset it starts at when its group has none."""
        settings = consumer_settings(self.properties, binding)
        return Consumer(settings), settings["auto_offset_reset"]

    # -- topics ---------------------------------------------------------------------------------
    def topic_partitions(self, topics: list[str]) -> dict[str, int]:
        """The partition count of each of ``topics`` that exists."""
        with _Admin(self.properties) as admin:
            present = set(admin.list_topics()) & set(topics)
            described = admin.describe_topics(sorted(present)) if present else []
        return {d["name"]: len(d["partitions"]) for d in described}

    def create_topics(self, wanted: Mapping[str, int], replication: int) -> None:
        with _Admin(self.properties) as admin:
            result = admin.create_topics([NewTopic(topic, count, replication) for topic, count in wanted.items()],
                                         raise_errors=False)
        for topic in result["topics"]:
            if topic["error_code"] == 0:
                log.info("Created topic '%s' with %s partition(s)", topic["name"], topic["num_partitions"])
            elif topic["error_code"] != 36:  # TOPIC_ALREADY_EXISTS: another instance was first
                log.warning("Could not create topic '%s': %s", topic["name"], topic["error_message"])

    def grow(self, topic: str, total: int) -> None:
        with _Admin(self.properties) as admin:
            admin.create_partitions({topic: NewPartitions(total_count=total)})


class _Admin:
    def __init__(self, properties: Properties) -> None:
        self.admin = KafkaAdminClient(**client_settings(properties, None, "admin"))

    def __enter__(self) -> KafkaAdminClient:
        return self.admin

    def __exit__(self, *_: object) -> None:
        self.admin.close()


def consumer_settings(properties: Properties, binding: InputBinding) -> dict[str, Any]:
    """kafka-python consumer arguments: pass-through settings, then the group rules the binder enforces."""
    settings = client_settings(properties, "input", "consumer")
    settings.setdefault("auto_offset_reset", binding.start_offset)
    if properties.raw(input_properties()["start_offset"].name):
        settings["auto_offset_reset"] = binding.start_offset
    settings.update(group_id=binding.group, enable_auto_commit=False)
    return settings
