"""librdkafka's consumer for the loop: batches per partition, damaged fetches, synchronous commits, seek, pause."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from . import kafka_config
from .headers import UnreadableHeaders
from .librdkafka_settings import create, partitions

log = logging.getLogger(__name__)

TP = tuple[str, int]
REBALANCED = frozenset({KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                        KafkaError.UNKNOWN_MEMBER_ID, KafkaError.FENCED_INSTANCE_ID, KafkaError._ASSIGNMENT_LOST,
                        KafkaError.STALE_MEMBER_EPOCH, KafkaError.FENCED_MEMBER_EPOCH})
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


class Consumer:
    """The input binding's consumer: batches per partition, synchronous commits, seek, pause and resume."""

    def __init__(self, settings: dict[str, Any], max_poll_records: int) -> None:
        self._consumer = create(_Consumer, settings)  # first: librdkafka names a malformed value's key
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
        return partitions(self._consumer, topic) or {0}

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

    def group_metadata(self) -> Any:
        return self._consumer.consumer_group_metadata()


def _tps(partitions: list[TopicPartition]) -> list[TP]:
    return sorted((tp.topic, tp.partition) for tp in partitions)


class LagOffsets:
    """The offsets the lag gauge reads (``kafka_lag.py``), on a consumer of the group's own that never joins it."""

    TIMEOUT = 10.0  # s a request may take

    def __init__(self, settings: dict[str, Any]) -> None:
        self._consumer = create(_Consumer, settings)

    def partitions(self, topic: str) -> list[int]:
        self._consumer.poll(0)  # serves its log and error callbacks
        return sorted(partitions(self._consumer, topic))

    def watermarks(self, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
        return {p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), self.TIMEOUT) for p in partitions}

    def committed(self, topic: str, partitions: list[int]) -> dict[int, int | None]:
        found = self._consumer.committed([TopicPartition(topic, p) for p in partitions], self.TIMEOUT)
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in found}

    def close(self) -> None:
        self._consumer.close()
