"""Dead-letter copies as Spring's Kafka binder writes them: the record, its ``x-original-*`` and ``x-exception-*``.

A transport's client hands the loop its dead-letter sender (``Client.dead_letters``): on Kafka, the one
below; the rabbit binder's builds Spring's Rabbit headers from the same record and cause.
"""

from __future__ import annotations

import struct
import traceback
from collections.abc import Sequence
from typing import Any

from .headers import UnreadableRecordError

TIMESTAMP_TYPES = {0: b"CreateTime", 1: b"LogAppendTime"}  # Java's TimestampType names; -1 is NoTimestampType
TRACE_MARGIN = 512  # what a copy's stack trace leaves of the producer's largest request, beyond the record


def copied_headers(record: Any, null: bytes | None) -> list[tuple[str, bytes | None]]:
    """The record's headers for its copy (a null value as ``null``); when the client could not read them, those it
    kept (none unless it says)."""
    try:
        return [(k, null if v is None else v) for k, v in record.headers]
    except UnreadableRecordError:  # what the client could not decode cannot be copied: the headers it kept, if any
        return [(k, null if v is None else v) for k, v in record.headers.kept]


def record_size(record: Any, headers: Sequence[tuple[str, bytes | None]]) -> int:
    """About what a record takes in a produce request (a client refuses one over its max.request.size)."""
    return (len(record.value or b"") + len(record.key or b"") + 128
            + sum(len(key.encode("utf-8", "replace")) + len(value or b"") + 8 for key, value in headers))


def stack_trace(error: BaseException, limit: int) -> bytes:
    """The stack trace, its tail when longer than ``limit`` bytes; below 256 bytes, the exception's line alone."""
    trace = "".join(traceback.format_exception(error)).encode("utf-8", "replace")
    if len(trace) <= limit:
        return trace
    if limit < 256:
        return "".join(traceback.format_exception_only(error)).encode("utf-8", "replace")[:1024]
    marker = b"[stack trace truncated to fit the dead-letter record]\n"
    return marker + trace[len(trace) - limit + len(marker):]


def kafka_headers(record: Any, error: BaseException) -> list[tuple[str, bytes]]:
    """The ``x-*`` headers Spring's Kafka binder adds to a dead-lettered record, but the stack trace."""
    kind = type(error)
    return [
        ("x-original-topic", record.topic.encode()),
        ("x-original-partition", struct.pack(">i", record.partition)),
        ("x-original-offset", struct.pack(">q", record.offset)),
        ("x-original-timestamp", struct.pack(">q", record.timestamp)),
        ("x-original-timestamp-type", TIMESTAMP_TYPES.get(record.timestamp_type, b"NoTimestampType")),
        ("x-exception-fqcn", f"{kind.__module__}.{kind.__qualname__}".encode()),
        ("x-exception-message", str(error).encode("utf-8", "replace")),
    ]


class KafkaDeadLetters:
    """Sends copies to ``<dlq topic>``, the record's partition (modulo the topic's), as Spring's binder does."""

    def __init__(self, producer: Any, source: Any, null_header: bytes | None) -> None:
        self.producer, self.source, self.null = producer, source, null_header

    def send(self, record: Any, cause: BaseException, trace: int | None) -> tuple[Any, int]:
        """Queue a copy: (its handle, the stack trace's bound). ``trace`` None: what max.request.size leaves."""
        headers = copied_headers(record, self.null) + kafka_headers(record, cause)
        if trace is None:
            trace = self.producer.max_request_size - record_size(record, headers) - TRACE_MARGIN
        headers.append(("x-exception-stacktrace", stack_trace(cause, trace)))
        topic = self.source.dlq_topic(record.topic)
        partition = record.partition % self.producer.partition_count(topic)
        return self.producer.send(topic, record.value, record.key, headers, partition), trace

    def partition_count(self, topic: str) -> int:
        return self.producer.partition_count(topic)

    def flush(self, seconds: float) -> bool:
        return self.producer.flush(seconds)

    def settled(self) -> bool:
        return self.producer.settled()

    def close(self, seconds: float) -> None:
        self.producer.close(seconds)
