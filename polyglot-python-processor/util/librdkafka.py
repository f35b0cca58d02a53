"""The librdkafka transport (confluent-kafka): its client and producers (its consumer and settings are apart).

Sends report only failures (``delivery.report.only.error``): a flush that leaves nothing queued
acknowledges every send before it that no callback failed, so no handle is read unless one failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as _Producer
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from . import kafka_config
from .arguments import Properties
from .bindings import InputBinding
from .client_errors import AbortError, FatalError
from .librdkafka_consumer import MAX_POLL_RECORDS, Consumer, LagOffsets
from .librdkafka_settings import client_settings, consumer_settings, create, metadata, partitions

log = logging.getLogger(__name__)

NAME = "the kafka binder (librdkafka)"
TRANSACTION_SECONDS = 30.0  # the longest a transaction call (begin, offsets, commit, abort) may wait for the broker
# Refusals about the record itself: it takes its error path. Any other failure of a send is the broker's.
RECORD_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG,
                          KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD, KafkaError.INVALID_TIMESTAMP,
                          KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT, KafkaError._BAD_MSG,
                          KafkaError._VALUE_SERIALIZATION, KafkaError._KEY_SERIALIZATION})
SIZE_CODES = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
# A transactional producer that met these cannot go on: another instance took its id, or it may not use it.
FENCED_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                          KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED})
STEP = 0.5  # s: a blocking transaction call waits this long at a time, so that a signal is handled between waits


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
    return None if handle.batch.done else _timed_out()


def _timed_out() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "not acknowledged in time"))


class Producer:
    """One producer; ``send`` and ``quick`` return a handle that ``outcome`` reads once flushed."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._producer = create(_Producer, settings)  # first: librdkafka names a malformed value's key
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
        self._produce_waiting(topic, value, key, -1 if partition is None else partition, sent.report, headers)
        return sent

    def quick(self, topic: str, value: bytes | None, headers: Any) -> _Sent:
        """``send`` without key or partition, for the straight pass: positional, the queue's room not waited for
        unless it is full (keyword arguments cost a dictionary a record)."""
        sent = _Sent(self._batch)
        try:
            self._produce(topic, value, None, -1, sent.report, None, 0, headers)
        except BufferError:
            self._produce_waiting(topic, value, None, -1, sent.report, headers)
        return sent

    def _produce_waiting(self, topic: str, value: bytes | None, key: bytes | None, partition: int,
                         report: Callable[..., None] | None, headers: Any) -> None:
        """Produce; while the local queue is full, wait for room, as Java's send blocks up to max.block.ms."""
        deadline = 0.0
        while True:
            try:
                self._produce(topic, value, key, partition, report, None, 0, headers)
                return
            except BufferError:
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
            found = partitions(self._producer, topic)
            if not found:
                return 1
            self._counts[topic] = len(found)
        return self._counts[topic]

    def close(self, seconds: float) -> None:
        self._producer.flush(seconds)


class TransactionalProducer(Producer):
    """The app's one transactional producer: a batch's outputs and dead letters, and its offsets, in one transaction.

    librdkafka's transaction calls block: each waits in short steps (a retriable timeout is asked again) until
    its deadline. A producer fenced, failed for good or started again is never closed: librdkafka's close would
    retry its abort for ever (Tansu drops a fenced epoch's EndTxn, and refuses the epoch bump a send refused
    asks for); it is left to be freed.
    """

    def __init__(self, settings: dict[str, Any], transactional_id: str, seconds: float) -> None:
        self._settings = {**settings, "transactional.id": transactional_id}
        super().__init__(self._settings)
        self.transactional_id = transactional_id
        self.failed: str | None = None  # why it cannot go on
        self.open = False  # a transaction is open: something was sent since the last commit or abort
        self._call(self._producer.init_transactions, seconds, "initialising transactions")

    def _call(self, call: Callable[..., Any], seconds: float, what: str, *args: Any) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                call(*args, min(STEP, max(0.1, deadline - time.monotonic())))
                return
            except KafkaException as failure:
                error: KafkaError = failure.args[0]
                if error.fatal() or error.code() in FENCED_CODES:
                    self.failed = f"{what}: {error.str()}"
                    raise FatalError(f"transactional producer '{self.transactional_id}' {what}: {error.str()}"
                                     ) from None
                if not error.retriable() or time.monotonic() >= deadline or error.txn_requires_abort():
                    raise

    def flush(self, seconds: float) -> bool:
        """librdkafka's flush raises the producer's fatal error (a fence): a SystemError whose cause it is when a
        delivery report ran after it was raised. FatalError: the producer cannot go on."""
        try:
            return super().flush(seconds)
        except (KafkaException, SystemError) as failure:
            error = _fatal(failure)
            if error is None:
                raise
            self.failed = f"flushing: {error.str()}"
            raise FatalError(f"transactional producer '{self.transactional_id}' flushing: {error.str()}") from None

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: Any, partition: int | None) -> _Sent:
        if not self.open:  # a transaction begins with its first record: a batch that sends nothing has none
            self._begin()
        return super().send(topic, value, key, headers, partition)

    def quick(self, topic: str, value: bytes | None, headers: Any) -> _Sent:
        if not self.open:
            self._begin()
        return super().quick(topic, value, headers)

    def _begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as failure:
            raise FatalError(f"transactional producer '{self.transactional_id}' cannot begin a transaction: "
                             f"{failure.args[0].str()}") from None
        self.open = True

    def send_offsets(self, offsets: Mapping[tuple[str, int], int], consumer: Any, seconds: float) -> None:
        """librdkafka's call can outwait its timeout (up to socket.timeout.ms): it runs in a thread of its own,
        waited for in steps, so that a signal is handled meanwhile."""
        if not offsets:
            return
        sent = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
        try:
            self._call(_in_a_thread(self._producer.send_offsets_to_transaction), seconds, "sending offsets", sent,
                       consumer.group_metadata())
        except KafkaException as failure:
            raise AbortError(failure.args[0].str()) from None

    def commit(self, seconds: float) -> None:
        try:
            self._call(self._producer.commit_transaction, seconds, "committing")
        except KafkaException as failure:
            raise AbortError(failure.args[0].str()) from None
        self.open = False

    def abort(self, seconds: float, renew: bool = False) -> None:
        try:
            self._call(self._producer.abort_transaction, seconds, "aborting")
        except KafkaException as failure:  # never started again: it may have been fenced unawares
            self.failed = f"aborting: {failure.args[0].str()}"
            raise FatalError(f"transactional producer '{self.transactional_id}' could not abort its transaction "
                             f"({failure.args[0].str()}): a restart of this instance aborts it") from None
        self.open = False
        if not renew:
            return
        super().__init__(self._settings)  # the old one dropped, never closed (its close would purge and wait)
        try:
            self._call(self._producer.init_transactions, seconds, "starting again")
        except KafkaException as failure:
            self.failed = f"starting again: {failure.args[0].str()}"
            raise FatalError(f"transactional producer '{self.transactional_id}' could not start again "
                             f"({failure.args[0].str()}): a restart of this instance aborts its transaction") from None

    def close(self, seconds: float) -> None:
        if self.failed is None and self.open:
            try:
                self._call(self._producer.abort_transaction, seconds, "aborting")
            except (KafkaException, FatalError):
                return  # dropped: a restart of the id aborts it
        if self.failed is None:
            super().close(seconds)


def _in_a_thread(call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` run in a thread of its own, waited for in steps (signal handlers run between them); its outcome."""
    def waited(*args: Any) -> Any:
        outcome: list[Any] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append((call(*args), None))
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                outcome.append((None, error))
            finally:
                done.set()

        threading.Thread(target=run, name="librdkafka-transaction", daemon=True).start()
        while not done.wait(STEP):
            pass
        result, error = outcome[0]
        if error is not None:
            raise error
        return result
    return waited


def fenced(error: BaseException) -> bool:
    """A send refused because another producer took the transactional id."""
    return isinstance(error, KafkaException) and error.args[0].code() in FENCED_CODES


def _fatal(failure: BaseException) -> KafkaError | None:
    """The fatal KafkaError a flush raised, itself or as the cause of the SystemError it raised; else None."""
    for raised in (failure, failure.__cause__, failure.__context__):
        if isinstance(raised, KafkaException) and isinstance(raised.args[0], KafkaError) and raised.args[0].fatal():
            return raised.args[0]
    return None


class Client(kafka_config.KafkaClient):
    """librdkafka clients configured from the binder's properties."""

    name = NAME
    Error = KafkaException
    null_header = None  # librdkafka writes a null header value as null
    about_the_record = staticmethod(about_the_record)
    fenced = staticmethod(fenced)
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
            self._carry(settings, carries)
        return Producer(settings)

    def _carry(self, settings: dict[str, Any], carries: InputBinding) -> None:
        """A dead-lettered record is as big as the input topic let it be: the producer sends any it can fetch."""
        fetchable = kafka_config.whole_number("fetch.max.bytes", str(
            consumer_settings(self.properties, carries).get("fetch.max.bytes", 52_428_800)))
        given = kafka_config.whole_number("max.request.size", str(settings.get("message.max.bytes", 0)))
        settings["message.max.bytes"] = max(given, fetchable)

    def transactional(self, transactional_id: str, carries: InputBinding | None) -> TransactionalProducer:
        """The app's transactional producer (``binder.transaction.producer.*``); with ``carries``, it sends that
        input's dead letters too, as big as its consumer can fetch."""
        settings = client_settings(self.properties, None, "transaction")
        if carries is not None:
            self._carry(settings, carries)
        kafka_config.idempotent(settings.get("enable.idempotence"))
        settings["enable.idempotence"] = True
        return TransactionalProducer(settings, transactional_id, TRANSACTION_SECONDS)

    def consumer(self, binding: InputBinding) -> tuple[Consumer, str]:
        """The input binding's consumer and the offset it starts at when its group has none."""
        settings = consumer_settings(self.properties, binding)
        count = settings.pop("max.poll.records", MAX_POLL_RECORDS)
        return Consumer(settings, count), settings["auto.offset.reset"]

    def offsets(self, group: str) -> LagOffsets:
        """The lag gauge's consumer (``kafka_lag.py``): the binder's consumer settings, as Spring's, in ``group``."""
        settings = client_settings(self.properties, None, "consumer")
        settings.pop("max.poll.records", None)
        settings.update({"group.id": group, "enable.auto.commit": False})
        return LagOffsets(settings)

    # -- topics ---------------------------------------------------------------------------------
    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = create(AdminClient, client_settings(self.properties, None, "admin"))
        return self._admin

    def topic_partitions(self, topics: list[str]) -> dict[str, int]:
        found = metadata(self.admin)
        return {t: len(found[t].partitions) for t in topics if t in found and found[t].error is None}

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


