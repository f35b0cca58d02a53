"""The librdkafka transport (confluent-kafka): the operations of ``transport.py``; settings in librdkafka_settings.

Sends report only failures (``delivery.report.only.error``): a flush that leaves nothing queued
acknowledges every send before it that no callback failed, so the hot path has no per-record callback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as _Producer
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from . import kafka_config
from .arguments import ConfigError, Properties
from .bindings import InputBinding
from .headers import UnreadableHeaders
from .librdkafka_settings import client_settings, consumer_settings

log = logging.getLogger(__name__)
client_log = logging.getLogger("librdkafka")
_probe_log = logging.getLogger("librdkafka.probe")  # silent: the clients made only to find a refused setting
_probe_log.disabled = True

NAME = "the kafka binder (librdkafka)"
TP = tuple[str, int]
# Refusals about the record itself: it takes its error path. Any other failure of a send is the broker's.
RECORD_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG,
                          KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD, KafkaError.INVALID_TIMESTAMP,
                          KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT, KafkaError._BAD_MSG,
                          KafkaError._VALUE_SERIALIZATION, KafkaError._KEY_SERIALIZATION})
SIZE_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
REBALANCED = frozenset({KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                        KafkaError.UNKNOWN_MEMBER_ID, KafkaError.FENCED_INSTANCE_ID, KafkaError._ASSIGNMENT_LOST,
                        KafkaError.STALE_MEMBER_EPOCH, KafkaError.FENCED_MEMBER_EPOCH})
_UNANSWERED = (KafkaError._TRANSPORT, KafkaError._TIMED_OUT)
UNREADABLE = frozenset({KafkaError._BAD_MSG, KafkaError._BAD_COMPRESSION})
MAX_POLL_RECORDS = 500  # Java's max.poll.records: the records one poll hands the loop
_new = tuple.__new__  # builds a NamedTuple in C, without its Python __new__: once a record, on the hot path


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any
    timestamp: int
    timestamp_type: int


def about_the_record(error: BaseException) -> bool:
    """A send failure the record itself caused: the client refused it (any non-Kafka error) or the broker did."""
    if isinstance(error, KafkaException):
        return error.args[0].code() in RECORD_CODES
    return not isinstance(error, BufferError)


def too_large(error: BaseException) -> bool:
    return isinstance(error, KafkaException) and error.args[0].code() in SIZE_CODES


class _Batch:
    """The sends between two complete flushes; ``done`` once a flush left nothing queued."""

    __slots__ = ("done", "failures", "sends")

    def __init__(self) -> None:
        self.done = False
        self.failures = 0
        self.sends = 0


class _Sent:
    """One send's completion handle: its failure, if the delivery callback reported one."""

    __slots__ = ("batch", "error")

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.error: KafkaError | None = None

    def report(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self.error = error
            self.batch.failures += 1


def outcome(handle: _Sent) -> Exception | None:
    if handle.error is not None:
        return KafkaException(handle.error)
    return None if handle.batch.done else KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT,
                                                                    "not acknowledged in time"))


class Producer:
    """One producer; ``send`` returns a handle that ``outcome`` reads once flushed."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._producer = _create(_Producer, settings)  # first: librdkafka names a malformed value's key
        self.max_request_size = kafka_config.whole_number(  # librdkafka also takes "1000abc" and "0x10"
            "max.request.size", str(settings.get("message.max.bytes", 1_000_000)))
        self._produce = self._producer.produce
        self._batch = _Batch()
        self._counts: dict[str, int] = {}
        self._settled = True  # no failure and nothing unfinished since ``settled`` was last asked

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: Any, partition: int | None) -> _Sent:
        batch = self._batch
        sent = _Sent(batch)
        batch.sends += 1
        deadline = 0.0
        while True:
            try:
                self._produce(topic, value, key, partition=-1 if partition is None else partition,
                              on_delivery=sent.report, headers=headers)
                return sent
            except BufferError:  # the local queue is full: wait for room, as Java's send blocks up to max.block.ms
                deadline = deadline or time.monotonic() + 30
                if time.monotonic() > deadline:
                    raise KafkaException(KafkaError(KafkaError._QUEUE_FULL, "the producer queue stayed full")) from None
                self._producer.poll(0.1)

    def flush(self, seconds: float) -> bool:
        if self._producer.flush(seconds):
            self._settled = False
            return False
        batch, self._batch = self._batch, _Batch()
        batch.done = True
        if batch.failures:
            self._settled = False
        return True

    def settled(self) -> bool:
        settled = self._settled and not self._batch.sends
        self._settled = True
        return settled

    def partition_count(self, topic: str) -> int:
        if topic not in self._counts:
            found = _partitions(self._producer, topic)
            if not found:
                return 1
            self._counts[topic] = len(found)
        return self._counts[topic]

    def close(self, seconds: float) -> None:
        self._producer.flush(seconds)


class Consumer:
    """The input binding's consumer: batches per partition, synchronous commits, seek, pause and resume."""

    def __init__(self, settings: dict[str, Any], max_poll_records: int) -> None:
        self._consumer = _create(_Consumer, settings)  # first: librdkafka names a malformed value's key
        self.max_poll_interval = kafka_config.whole_number(  # librdkafka also takes "1000abc" and "0x10"
            "max.poll.interval.ms", str(settings.get("max.poll.interval.ms", 300_000))) / 1000
        self.damaged: dict[TP, tuple[int, str]] = {}
        self._max = max_poll_records
        self._consume = self._consumer.consume
        self._warned: str | None = None

    def subscribe(self, topics: Iterable[str], assigned: Callable[[list[TP]], None],
                  revoked: Callable[[list[TP]], None]) -> None:
        def on_assign(_consumer: Any, partitions: list[TopicPartition]) -> None:
            assigned(_tps(partitions))

        def on_revoke(_consumer: Any, partitions: list[TopicPartition]) -> None:
            revoked(_tps(partitions))

        self._consumer.subscribe(list(topics), on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)

    def partitions(self, topic: str) -> set[int]:
        return _partitions(self._consumer, topic) or {0}

    def assign(self, partitions: list[TP]) -> None:
        self._consumer.assign([TopicPartition(*tp) for tp in partitions])

    def poll(self, seconds: float) -> Mapping[TP, list[Record]]:
        batch: dict[TP, list[Record]] = {}
        records: list[Record] = []
        current: TP | None = None
        for m in self._messages(seconds):
            if m.error() is not None:
                self._consumer_error(m)
                continue
            tp = (m.topic(), m.partition())
            if tp != current:
                current = tp
                records = batch.setdefault(tp, [])
            kind, stamp = m.timestamp()
            try:
                headers = m.headers() or ()
            except (UnicodeDecodeError, SystemError):  # a header key that is not UTF-8: the client cannot read any
                headers = UnreadableHeaders(f"record {tp[0]}-{tp[1]}@{m.offset()} has a header key that is not "
                                            "UTF-8 text: librdkafka cannot read its headers")
            records.append(_new(Record, (tp[0], tp[1], m.offset(), m.key(), m.value(), headers, stamp, kind - 1)))
        return batch

    def _messages(self, seconds: float) -> list[Any]:
        """What is queued, up to a batch; else the first record to arrive within ``seconds``, with any behind it.

        librdkafka's batch consume waits for a full batch (or the timeout): a record would wait up to the poll
        timeout at a low rate.
        """
        messages = self._consume(self._max, 0)
        if messages:
            return messages
        first = self._consumer.poll(seconds)
        if first is None:
            return []
        return [first, *self._consume(self._max - 1, 0)] if self._max > 1 else [first]

    def _consumer_error(self, message: Any) -> None:
        """An error event in the consumer queue: fatal ones stop the app, the others are logged once."""
        error: KafkaError = message.error()
        if error.fatal():
            raise KafkaException(error)
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.code() in UNREADABLE and message.topic():  # a batch that fails its CRC check, or cannot be
            # decompressed: nothing of it is passed on (librdkafka would skip it), its partition stalls there
            tp = (message.topic(), message.partition())
            self.damaged.setdefault(tp, (message.offset(), error.str()))
            return
        text = f"{message.topic() or ''}-{message.partition()}: {error.str()}" if message.topic() else error.str()
        if text != self._warned:
            self._warned = text
            log.warning("Consumer error (retried by the client): %s", text)

    def commit(self, offsets: Mapping[TP, int]) -> str | None:
        try:
            done = self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                         asynchronous=False)
        except KafkaException as failure:
            error = failure.args[0]
            return "the group rebalanced" if error.code() in REBALANCED else error.str()
        failed = [tp for tp in done or () if tp.error is not None]
        return "; ".join(f"{tp.topic}-{tp.partition}: {tp.error.str()}" for tp in failed) or None

    def seek(self, tp: TP, offset: int) -> None:
        """Rewind a partition; one revoked meanwhile is its new owner's. Any other failure stops the app: going
        on would skip the records it rewinds to, which a later commit would then pass."""
        try:
            self._consumer.seek(TopicPartition(tp[0], tp[1], offset))
        except KafkaException as failure:
            if any((p.topic, p.partition) == tp for p in self._consumer.assignment()):
                raise
            log.debug("Seek of %s-%d skipped: %s", *tp, failure)

    def pause(self, tp: TP) -> None:
        self._consumer.pause([TopicPartition(*tp)])

    def resume(self, tp: TP) -> None:
        self._consumer.resume([TopicPartition(*tp)])

    def close(self, seconds: float) -> None:  # librdkafka's close takes no timeout: the watchdog bounds it
        self._consumer.close()


def _tps(partitions: list[TopicPartition]) -> list[TP]:
    return sorted((tp.topic, tp.partition) for tp in partitions)


def _partitions(client: Any, topic: str) -> set[int]:
    """The partitions of a topic that exists (empty when it does not); the client's Error when no broker answers."""
    found = _metadata(client, topic).get(topic)
    return set(found.partitions) if found is not None and found.error is None else set()


def _metadata(client: Any, topic: str | None = None, seconds: float = 10) -> dict[str, Any]:
    """Topic metadata, asked in short waits: a signal (SIGTERM) is handled between them, not after 10 s."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return client.list_topics(topic, timeout=0.5).topics
        except KafkaException as failure:
            if failure.args[0].code() not in _UNANSWERED or time.monotonic() > deadline:
                raise
            if not isinstance(client, _Consumer):  # its log lines (why no broker answers) now, not at exit
                client.poll(0)


class Client(kafka_config.KafkaClient):
    """librdkafka clients configured from the binder's properties."""

    name = NAME
    Error = KafkaException
    null_header = None  # librdkafka writes a null header value as null
    about_the_record = staticmethod(about_the_record)
    too_large = staticmethod(too_large)
    outcome = staticmethod(outcome)

    def __init__(self, properties: Properties) -> None:
        super().__init__(properties)
        self._admin: AdminClient | None = None

    def producer(self, binding: str | None, carries: InputBinding | None = None) -> Producer:
        """The producer of an output binding; with ``carries``, the DLQ producer of that input binding.

        A dead-lettered record is as big as the input topic let it be: the DLQ producer sends any record
        the consumer can fetch.
        """
        settings = client_settings(self.properties, binding, "producer")
        if carries is not None:
            fetchable = kafka_config.whole_number("fetch.max.bytes", str(
                consumer_settings(self.properties, carries).get("fetch.max.bytes", 52_428_800)))
            given = kafka_config.whole_number("max.request.size", str(settings.get("message.max.bytes", 0)))
            settings["message.max.bytes"] = max(given, fetchable)
        return Producer(settings)

    def consumer(self, binding: InputBinding) -> tuple[Consumer, str]:
        """The input binding's consumer and the offset it starts at when its group has none."""
        settings = consumer_settings(self.properties, binding)
        count = settings.pop("max.poll.records", MAX_POLL_RECORDS)
        return Consumer(settings, count), settings["auto.offset.reset"]

    # -- topics ---------------------------------------------------------------------------------
    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = _create(AdminClient, client_settings(self.properties, None, "admin"))
        return self._admin

    def topic_partitions(self, topics: list[str]) -> dict[str, int]:
        metadata = _metadata(self.admin)
        return {t: len(metadata[t].partitions) for t in topics if t in metadata and metadata[t].error is None}

    def create_topics(self, wanted: Mapping[str, int], replication: int) -> None:
        futures = self.admin.create_topics([NewTopic(topic, count, replication) for topic, count in wanted.items()],
                                           operation_timeout=10, request_timeout=15)
        for topic, future in futures.items():
            try:
                future.result(timeout=30)
                log.info("Created topic '%s' with %s partition(s)", topic, wanted[topic])
            except KafkaException as failure:
                if failure.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another instance was first
                    log.warning("Could not create topic '%s': %s", topic, failure.args[0].str())

    def grow(self, topic: str, total: int) -> None:
        for future in self.admin.create_partitions([NewPartitions(topic, total)], request_timeout=15).values():
            future.result(timeout=30)


def _create(kind: Callable[[dict[str, Any]], Any], settings: dict[str, Any]) -> Any:
    """A client; a key librdkafka does not know is dropped with a warning, a bad value names its key."""
    while True:
        try:
            return kind({**settings, "logger": client_log, "error_cb": _client_error})
        except KafkaException as failure:
            error = failure.args[0]
            text = error.str()
            unknown = text.removeprefix("No such configuration property: ").strip('"')
            if text.startswith("No such configuration property") and unknown in settings:
                log.warning("Kafka property '%s' is not supported by librdkafka and is ignored", unknown)
                del settings[unknown]
                continue
            culprit = _culprit(kind, settings)
            raise ConfigError(f"Kafka client settings refused by librdkafka{culprit}: {text}") from None


def _culprit(kind: Callable[[dict[str, Any]], Any], settings: dict[str, Any]) -> str:
    """`` (property 'x')`` for the one setting librdkafka refuses alone (its message names its own alias)."""
    base = {key: settings[key] for key in ("bootstrap.servers", "group.id") if key in settings}
    for key, value in settings.items():
        try:
            kind({**base, key: value, "logger": _probe_log})
        except KafkaException:
            return f" (Kafka property '{key}')"
    return ""


_last_error: list[str] = [""]
_LOGGED_BY_CLIENT = (KafkaError._TRANSPORT, KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError._RESOLVE)


def _client_error(error: KafkaError) -> None:
    """librdkafka's own errors: retried by it, logged when they change (connection failures it logs itself)."""
    text = error.str()
    if error.fatal():
        log.error("Kafka client error (fatal): %s", text)
    elif text != _last_error[0] and error.code() not in _LOGGED_BY_CLIENT:
        log.warning("Kafka client error (retried by the client): %s", text)
    _last_error[0] = text
