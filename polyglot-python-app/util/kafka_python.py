"""The kafka-python transport: the operations of ``transport.py`` on kafka-python (its settings are apart)."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata
from kafka import TopicPartition as _TopicPartition
from kafka.admin import NewPartitions, NewTopic
from kafka.errors import (
    CommitFailedError,
    CorruptRecordError,
    InvalidProducerEpochError,
    InvalidRecordError,
    InvalidTimestampError,
    KafkaConfigurationError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFencedError,
    RecordListTooLargeError,
    TransactionalIdAuthorizationFailedError,
    UnknownError,
    UnsupportedCodecError,
    UnsupportedForMessageFormatError,
)
from kafka.serializer import Serializer

from . import kafka_config, kafka_records  # noqa: F401 - kafka_records mends kafka-python's record reading
from .arguments import ConfigError, Properties
from .bindings import InputBinding
from .client_errors import AbortError, FatalError
from .kafka_python_settings import client_settings, consumer_settings

log = logging.getLogger(__name__)

NAME = "the kafka binder (kafka-python)"
# Refusals about the record itself: it takes its error path. Any other failure of a send is the broker's.
RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, CorruptRecordError, InvalidRecordError,
                 InvalidTimestampError, UnsupportedForMessageFormatError)
SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError)
FENCED = (ProducerFencedError, InvalidProducerEpochError, TransactionalIdAuthorizationFailedError)
NULL_HEADER = b""  # kafka-python writes no null header value: such a header is forwarded with an empty one
TP = tuple[str, int]
def about_the_record(error: BaseException) -> bool:
    """A send failure the record itself caused: the client refused it (any non-Kafka error) or the broker did."""
    return isinstance(error, RECORD_ERRORS) or not isinstance(error, KafkaError)


def fenced(error: BaseException) -> bool:
    """A send refused because another producer took the transactional id."""
    return isinstance(error, FENCED)


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
        try:
            self._producer = KafkaProducer(key_serializer=_NullKey(), **settings)
        except (ValueError, RuntimeError, AssertionError, KafkaConfigurationError) as error:  # a setting it refuses
            raise ConfigError(f"Kafka producer setting refused by kafka-python: {error}") from None
        self._send = self._producer.send

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None,
             partition: int | None) -> Any:
        if key is None and value is None:
            key = _NullKey.NULL
        return self._send(topic, value=value, key=key, headers=headers, partition=partition)

    def quick(self, topic: str, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> Any:
        return self.send(topic, value, None, headers, None)

    def flush(self, seconds: float) -> bool:
        """True once every send is acknowledged or failed; False when ``seconds`` ran out first."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
                return True
            except KafkaTimeoutError:
                return False
            except UnknownError:  # "Future not done": a batch the broker refused as too large was split and sent
                if time.monotonic() >= deadline:  # again while the flush waited for it; its parts are waited for
                    return False

    def settled(self) -> bool:
        return False  # a future must be read to know: every handle is read

    def partition_count(self, topic: str) -> int:
        return len(self._producer.partitions_for(topic) or {0})

    def close(self, seconds: float) -> None:
        try:
            self._producer.close(timeout=seconds)
        except KafkaTimeoutError:  # sends still unacknowledged: uncommitted, they come again
            log.info("Closed the producer with sends not acknowledged: their records were not committed")


class TransactionalProducer(Producer):
    """The app's one transactional producer: a batch's outputs and dead letters, and its offsets, in one transaction.

    kafka-python's commit and abort wait without a bound: its transaction manager's results are waited for here,
    each until a deadline."""

    def __init__(self, settings: dict[str, Any], transactional_id: str) -> None:
        self.transactional_id = transactional_id
        self._settings = {**settings, "transactional_id": transactional_id, "enable_idempotence": True}
        self._start()

    def _start(self) -> None:
        super().__init__(self._settings)
        self._manager = self._producer._transaction_manager
        self.open = False  # a transaction is open: something was sent since the last commit or abort
        try:
            self._producer.init_transactions()
        except FENCED as error:
            raise FatalError(f"transactional producer '{self.transactional_id}' cannot initialise: {error}") from None

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None,
             partition: int | None) -> Any:
        if not self.open:  # a transaction begins with its first record: a batch that sends nothing has none
            self._begin()
        return super().send(topic, value, key, headers, partition)

    def _begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaError as error:
            raise FatalError(f"transactional producer '{self.transactional_id}' cannot begin a transaction: "
                             f"{error}") from None
        self.open = True

    def send_offsets(self, offsets: Mapping[TP, int], consumer: Any, seconds: float) -> None:
        if offsets:
            self._ask(lambda: self._manager.send_offsets_to_transaction(
                {_TopicPartition(*tp): OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()},
                consumer.group_metadata()), seconds, "sending offsets")

    def commit(self, seconds: float) -> None:
        self._ask(self._manager.begin_commit, seconds, "committing")
        self.open = False

    def _ask(self, request: Callable[[], Any], seconds: float, what: str) -> None:
        try:
            self._wait(request(), time.monotonic() + seconds)
        except KafkaError as error:
            if isinstance(error, FENCED) or self._manager.has_fatal_error():
                raise FatalError(f"transactional producer '{self.transactional_id}' {what}: {error}") from None
            raise AbortError(str(error) or type(error).__name__) from None

    def abort(self, seconds: float, renew: bool = False) -> None:
        if isinstance(self._manager.last_error, FENCED):  # never started again: it would take the id back
            raise FatalError(f"transactional producer '{self.transactional_id}' fenced: {self._manager.last_error}")
        try:
            self._wait(self._manager.begin_abort(), time.monotonic() + seconds)
        except (KafkaError, AbortError) as error:  # never started again: it may have been fenced unawares
            raise FatalError(f"transactional producer '{self.transactional_id}' could not abort its transaction "
                             f"({error}): a restart of this instance aborts it") from None
        self.open = False
        if not renew:
            return
        self._producer._sender.force_close()  # anything left unsent fails with it
        Producer.close(self, 1.0)
        try:
            self._start()
        except KafkaError as error:
            raise FatalError(f"transactional producer '{self.transactional_id}' could not start again ({error}): "
                             "a restart of this instance aborts its transaction") from None

    def _wait(self, result: Any, deadline: float) -> None:
        self._producer._sender.wakeup()
        if not result.wait(timeout_ms=max(0.0, deadline - time.monotonic()) * 1000):
            raise AbortError("the broker did not answer in time")

    def close(self, seconds: float) -> None:
        if self.open:
            with contextlib.suppress(FatalError):  # closed all the same: a restart of the id aborts it
                self.abort(seconds)
        super().close(seconds)


class Consumer:
    """The input binding's consumer: batches per partition, synchronous commits, seek, pause and resume."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._consumer = KafkaConsumer(**settings)
        self.max_poll_interval = self._consumer.config["max_poll_interval_ms"] / 1000
        self.damaged: dict[TP, tuple[int, str]] = {}

    def subscribe(self, topics: Iterable[str], assigned: Callable[[list[TP]], None],
                  revoked: Callable[[list[TP]], None]) -> None:
        self._consumer.subscribe(list(topics), listener=_Listener(assigned, revoked))

    def partitions(self, topic: str) -> set[int]:
        return self._consumer.partitions_for_topic(topic) or {0}

    def assign(self, partitions: list[TP]) -> None:
        self._consumer.assign([_TopicPartition(*tp) for tp in partitions])

    def poll(self, seconds: float) -> Mapping[TP, list[Any]]:
        """Records by partition (kafka-python's TopicPartition is a ``(topic, partition)`` tuple).

        A batch that fails its CRC check (or cannot be parsed, or is compressed with a codec this client lacks) is
        raised by kafka-python before any record of it is returned: its partition is ``damaged`` at its position,
        so the loop stalls it there.
        """
        try:
            return self._consumer.poll(timeout_ms=int(seconds * 1000))
        except KafkaConnectionError:  # the client reconnects by itself (with back-off); health says why meanwhile
            return {}
        except (CorruptRecordError, UnsupportedCodecError) as error:
            found = _PARTITION.search(str(error))
            partitions = [_TopicPartition(found[1], int(found[2]))] if found else list(self._consumer.assignment())
            for tp in partitions:  # unnamed (a record that cannot be parsed): every partition, fetched again
                self.damaged.setdefault((tp.topic, tp.partition), (self._consumer.position(tp), str(error)))
            # kafka-python keeps the failed batch's records as pending and, once its partition was paused and
            # resumed, never fetches that partition again: drop them, so the seek after the stall fetches anew.
            pending = getattr(self._consumer._fetcher, "_next_partition_records", None)
            if pending is not None:
                pending.drain()
            return {}

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

    def close(self, seconds: float) -> None:
        self._consumer.close(autocommit=False, timeout_ms=int(seconds * 1000))

    def group_metadata(self) -> Any:
        return self._consumer.group_metadata()


_PARTITION = re.compile(r"TopicPartition\(topic='(.*?)', partition=(\d+)\)")


class _Listener(ConsumerRebalanceListener):
    def __init__(self, assigned: Callable[[list[TP]], None], revoked: Callable[[list[TP]], None]) -> None:
        self.assigned, self.revoked = assigned, revoked

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned(sorted((tp.topic, tp.partition) for tp in assigned))


class Client(kafka_config.KafkaClient):
    """kafka-python clients configured from the binder's properties."""

    name = NAME
    Error = KafkaError
    null_header = NULL_HEADER
    about_the_record = staticmethod(about_the_record)
    fenced = staticmethod(fenced)
    too_large = staticmethod(too_large)
    outcome = staticmethod(outcome)

    def producer(self, binding: str | None, carries: InputBinding | None = None) -> Producer:
        """The producer of an output binding; with ``carries``, the DLQ producer of that input binding.

        A dead-lettered record is as big as the input topic let it be: the DLQ producer sends any record
        the consumer can fetch.
        """
        settings = client_settings(self.properties, binding, "producer")
        if carries is not None:
            self._carry(settings, carries)
        return Producer(settings)

    def _carry(self, settings: dict[str, Any], carries: InputBinding) -> None:
        fetchable = consumer_settings(self.properties, carries).get(
            "fetch_max_bytes", KafkaConsumer.DEFAULT_CONFIG["fetch_max_bytes"])
        settings["max_request_size"] = max(settings.get("max_request_size", 0), fetchable)

    def transactional(self, transactional_id: str, carries: InputBinding | None) -> TransactionalProducer:
        """The app's transactional producer (``binder.transaction.producer.*``); with ``carries``, it sends that
        input's dead letters too, as big as its consumer can fetch."""
        settings = client_settings(self.properties, None, "transaction")
        if carries is not None:
            self._carry(settings, carries)
        kafka_config.idempotent(settings.get("enable_idempotence"))
        return TransactionalProducer(settings, transactional_id)

    def consumer(self, binding: InputBinding) -> tuple[Consumer, str]:
        """The input binding's consumer and the offset it starts at when its group has none."""
        settings = consumer_settings(self.properties, binding)
        return Consumer(settings), settings["auto_offset_reset"]

    def offsets(self, group: str) -> LagOffsets:
        """The lag gauge's consumer (``kafka_lag.py``): the binder's consumer settings, as Spring's, in ``group``."""
        return LagOffsets({**client_settings(self.properties, None, "consumer"), "group_id": group,
                           "enable_auto_commit": False})

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


class LagOffsets:
    """The offsets the lag gauge reads, on a consumer of the group's own that never joins it."""

    TIMEOUT_MS = 10_000  # a request may take

    def __init__(self, settings: dict[str, Any]) -> None:
        self._consumer = KafkaConsumer(**settings)

    def partitions(self, topic: str) -> list[int]:
        return sorted(self._consumer.partitions_for_topic(topic))

    def watermarks(self, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
        tps = [_TopicPartition(topic, p) for p in partitions]
        ends = self._consumer.end_offsets(tps, self.TIMEOUT_MS)
        beginnings = self._consumer.beginning_offsets(tps, self.TIMEOUT_MS)
        return {tp.partition: (beginnings[tp], ends[tp]) for tp in tps}

    def committed(self, topic: str, partitions: list[int]) -> dict[int, int | None]:
        return {p: self._consumer.committed(_TopicPartition(topic, p), timeout_ms=self.TIMEOUT_MS) for p in partitions}

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=1000)


class _Admin:
    def __init__(self, properties: Properties) -> None:
        self.admin = KafkaAdminClient(**client_settings(properties, None, "admin"))

    def __enter__(self) -> KafkaAdminClient:
        return self.admin

    def __exit__(self, *_: object) -> None:
        self.admin.close()
