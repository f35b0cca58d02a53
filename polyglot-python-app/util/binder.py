"""The Kafka binder: consume a batch, call the app's function, send, flush, commit; SIGTERM drains.

At-least-once: a partition's offset is committed only up to its first record whose output (or
dead-letter copy) the broker has not acknowledged. A record that keeps failing, or that the client or
broker refuses for its own sake (too large, malformed), goes to the DLQ or is logged and skipped, so
one bad record never blocks a partition. A send refused for any other reason (authorisation, the topic,
the cluster, a timeout) rewinds its partition; a dead-letter copy the broker refuses holds its
partition. Either way the partition pauses with back-off while the others flow, and health is DOWN
until it moves again. No batch outlives ``max.poll.interval.ms``: the group never evicts the app.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from . import kafka_config, logs, rabbit_config
from .actuator import PROPERTIES as ACTUATOR_PROPERTIES
from .actuator import Actuator
from .arguments import CONFIG_PROPERTIES, ConfigError, Properties, Property
from .bindings import (
    APP_LABEL,
    INSTANCE_COUNT,
    INSTANCE_INDEX,
    STREAM_NAME,
    InputBinding,
    OutputBinding,
    input_properties,
    output_properties,
    provision,
    resolve_input,
    resolve_output,
    too_few_partitions,
)
from .bindings import PROPERTIES as BINDING_PROPERTIES
from .headers import HeaderError, UnreadableRecordError, header_text, inbound_content_type, is_text, outbound_headers
from .metrics import ERROR_CHANNEL, Metrics, common_tags
from .metrics import PROPERTIES as METRICS_PROPERTIES
from .partitions import java_bytes_hash, java_string_hash, select_partition
from .transport import DEFAULT_BINDER, Consumer, Producer, open_client

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 1000  # how long an idle poll waits: bounds how late a SIGTERM is noticed
SHUTDOWN_SECONDS = 8.0  # the drain's budget after SIGTERM, inside Kubernetes' and Spring's 10 s
BROKER_CHECK_SECONDS = 2.0  # how often health checks that a broker takes a connection
OVERRUN_SECONDS = 1.5  # what closing the clients may add to it before the process leaves regardless
PAUSE_FIRST, PAUSE_LONGEST = 1.0, 30.0  # a stalled partition's back-off, doubling in between (s)
COMMON_PROPERTIES: tuple[Property, ...] = (*kafka_config.PROPERTIES, *BINDING_PROPERTIES, *ACTUATOR_PROPERTIES,
                                           *METRICS_PROPERTIES, *logs.PROPERTIES, *CONFIG_PROPERTIES)
TIMESTAMP_TYPES = {0: b"CreateTime", 1: b"LogAppendTime"}  # Java's TimestampType names; -1 is NoTimestampType
TP = tuple[str, int]  # a (topic, partition)
INPUT = "input"  # the input binding, and its channel's name in the metrics
SEND_SAMPLE = 64  # an output channel's send time is estimated from one send in this many (a power of two)


class Message(NamedTuple):
    """What the app's function sees and returns: payload bytes, inbound headers, content type."""

    payload: bytes
    headers: Sequence[tuple[str, bytes | None]]
    content_type: str

    def text(self) -> str:
        """The payload as UTF-8 text; UnicodeDecodeError sends the record down the error path."""
        return self.payload.decode("utf-8")

    def with_payload(self, payload: bytes, content_type: str | None = None) -> Message:
        return _new(Message, (payload, self.headers, content_type or self.content_type))


_new = tuple.__new__  # builds a Message in C, without its Python __new__: twice a record, on the hot path


# Kafka client settings pass through under these prefixes (``<key>`` is a Kafka client key).
PASS_THROUGH = ("spring.cloud.stream.kafka.binder.configuration.<key>",
                "spring.cloud.stream.kafka.binder.consumerProperties.<key>",
                "spring.cloud.stream.kafka.binder.producerProperties.<key>",
                "spring.cloud.stream.kafka.bindings.<binding>.consumer.configuration.<key>",
                "spring.cloud.stream.kafka.bindings.<binding>.producer.configuration.<key>")


def app_properties(outputs: Sequence[str], options: Mapping[str, Property],
                   group_fallback: Property | None = None, has_input: bool = True) -> list[Property]:
    """Every property an app with these output bindings reads: its own first, then the binders'."""
    bindings = [*(input_properties(group_fallback).values() if has_input else ()),
                *(p for name in outputs for p in output_properties(name).values())]
    rabbit = [*(rabbit_config.consumer_properties().values() if has_input else ()),
              *(p for name in outputs for p in rabbit_config.producer_properties(name).values())]
    return [*options.values(), *bindings, DEFAULT_BINDER, *COMMON_PROPERTIES, *rabbit_config.PROPERTIES, *rabbit]


# The app's function: a message in, the output binding's name and the message to send out (None: nothing).
Handler = Callable[..., tuple[str, Message] | None]


class _InterruptedError(Exception):
    """SIGTERM, or the end of the batch's time, arrived during a retry back-off at this record."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class _RewindError(Exception):
    """The broker refused a send for a reason that is not the record's: process it again, later."""

    def __init__(self, offset: int, error: Exception) -> None:
        super().__init__(offset, error)
        self.offset, self.error = offset, error


class _StartInterruptedError(BaseException):
    """SIGTERM arrived while connecting (a broker may be unreachable): nothing to drain, leave at once.

    A BaseException, so that no client code catching Exception swallows it.
    """


class TombstoneError(ValueError):
    """A record with a null value reached an app that has no output for it."""


@dataclass(slots=True)
class Delivery:
    """One record's send: its output, or (``cause`` set) its dead-letter copy; no future and no refusal: skipped."""

    record: Any
    future: Any = None
    refused: Exception | None = None  # the client refused the send at once
    cause: Exception | None = None  # a dead-letter copy: the record's own failure, for its x-exception-* headers
    trace: int | None = None  # a dead-letter copy: the bytes of stack trace it could carry (0: only the last line)

    def failure(self, outcome: Callable[[Any], Exception | None]) -> Exception | None:
        """None once acknowledged (or skipped); else why not, as the transport's ``outcome`` reads the future."""
        if self.refused is not None:
            return self.refused
        return None if self.future is None else outcome(self.future)


@dataclass
class Stalled:
    """A paused partition: rewound after the broker refused a send, or held at refused dead-letter copies."""

    resume: int  # the offset it continues from
    reason: str
    due: float
    copies: list[Delivery] = field(default_factory=list)  # oldest first: they must reach the DLQ before it moves


class Binder:
    """One app's consumer, producers and loop."""

    def __init__(self, properties: Properties, handler: Handler, options: Mapping[str, Any],
                 source: InputBinding, outputs: Mapping[str, OutputBinding], metrics: Metrics,
                 tombstones: str | None = None) -> None:
        self.properties = properties
        self.handler = partial(handler, **options)
        self.source, self.outputs, self.metrics = source, outputs, metrics
        self.tombstones = tombstones  # the output a tombstone passes to unchanged; None: its error path
        self.stop = threading.Event()
        self._stop_time = 0.0
        self.state = "starting"
        self.client = open_client(properties)
        self.source = None if source is None else self.client.input(source)
        self.servers = self.client.servers
        self._reachable: str | None = None  # why no broker takes a connection, as last checked
        self._checked = threading.Event()
        # at once, so that the first probe seldom waits for the first check
        threading.Thread(target=self._watch_brokers, name="broker-check", daemon=True).start()
        self.consumer: Consumer | None = None
        self.producers: dict[str, Producer] = {}
        self.partition_counts: dict[str, int] = {}
        self.sent = {name: metrics.sent.labels(name) for name in outputs}
        self._sent = dict.fromkeys(outputs, 0)  # records sent in this batch, per output: counted once per batch
        self._send_seconds = dict.fromkeys(outputs, 0.0)  # and the time their sends took
        self._given_up = 0  # records of this batch that failed for good
        self.channels = metrics.channels
        self._irregular = False  # a record of this batch failed or was dead-lettered: every send is settled
        self.stalled: dict[TP, Stalled] = {}
        self._pauses: dict[TP, float] = {}  # the last back-off of a partition that keeps stalling
        # A record whose retries its batch had no time for: attempts made, and when the next one is due.
        self._attempts: dict[tuple[str, int, int], tuple[int, float]] = {}
        self._budget = 150.0  # half of max.poll.interval.ms: the longest a batch may take
        self._until = 0.0  # when the current batch stops taking records
        self._dlq_limit = 0

    # -- health ---------------------------------------------------------------------------------
    def loop_check(self) -> str | None:
        return None if self.state in ("starting", "running") else f"consumer loop is {self.state}"

    def delivery_check(self) -> str | None:
        """DOWN while a partition is paused because the broker refuses its sends or dead-letter copies."""
        stalled = sorted(self.stalled.items(), key=lambda item: item[0])
        return "; ".join(f"{topic}-{partition} stalled at offset {s.resume if not s.copies else _first(s)}: "
                         f"{s.reason}" for (topic, partition), s in stalled) or None

    def broker_check(self) -> str | None:
        """The client's own verdict, else whether a broker takes a connection: checked every 2 s on a thread of its
        own, so a broker address that drops packets never holds up the actuator's one thread (nor a liveness probe)."""
        if (problem := self.client.problem()) is not None:
            return problem
        self._checked.wait(1.0)  # the first answer waits for the first check
        return self._reachable

    def _watch_brokers(self) -> None:
        while True:
            self._reachable = self._unreachable()
            self._checked.set()
            time.sleep(BROKER_CHECK_SECONDS)

    def _unreachable(self) -> str | None:
        reason = f"no broker reachable at {','.join(self.servers)}"
        for server in self.servers:
            refused = _refusal(server)
            if refused is None:
                reason = None
                break
            reason = f"no broker reachable at {','.join(self.servers)} ({server}: {refused})"
        return reason

    # -- start ----------------------------------------------------------------------------------
    def connect(self) -> None:
        """Provision topics, create producers and the consumer; the client's Error when no broker answers."""
        needed = self.source.concurrency * self.properties.get(INSTANCE_COUNT)
        asked_by = None if self.source.auto_rebalance else (  # a fixed assignment needs them all
            INSTANCE_COUNT.name if self.source.concurrency == 1 else
            f"{INSTANCE_COUNT.name}' x '{input_properties()['concurrency'].name}")
        topics = {d: (needed, asked_by) for d in self.source.destinations}
        self._open_outputs(topics)
        if self.source.dlq:
            self.producers["dlq"] = dlq = self.client.producer(None, carries=self.source)
            self._dlq_limit = dlq.max_request_size
            provision(self.properties, self.client,
                      {self.source.dlq_topic(d): (dlq.partition_count(d), None) for d in self.source.destinations})
        self.consumer, start = self.client.consumer(self.source)
        self._budget = self.consumer.max_poll_interval / 2
        if self.source.auto_rebalance:
            self.consumer.subscribe(self.source.destinations, self._assigned, self.forget)
        else:
            self.consumer.assign(self._static_assignment())
        origin = f"(from {self.source.group_from})" if self.source.group_from else "(no group set: anonymous)"
        log.info("Consuming %s as group '%s' %s starting at %s with %s; producing to %s",
                 ",".join(self.source.destinations), self.source.group, origin, start, self.client.name,
                 ", ".join(f"{o.name}={o.destination}" for o in self.outputs.values()) or "nothing (a sink)")

    def _open_outputs(self, topics: dict[str, tuple[int, str | None]]) -> None:
        """Provision ``topics`` and the outputs' topics; a producer per output binding."""
        topics.update({o.destination: (o.partition_count, _count_property(o)) for o in self.outputs.values()})
        provision(self.properties, self.client, topics)
        for output in self.outputs.values():
            self.producers[output.name] = producer = self.client.producer(output.name)
            found = producer.partition_count(output.destination)
            if found < output.partition_count:  # as Spring: the topic must have what partitionCount asks
                raise ConfigError(too_few_partitions(output.destination, output.partition_count, found,
                                                     _count_property(output)))
            self.partition_counts[output.destination] = found

    def _static_assignment(self) -> list[TP]:
        index, count = self.properties.get(INSTANCE_INDEX), self.properties.get(INSTANCE_COUNT)
        if not 0 <= index < count:
            raise ConfigError(f"Property '{INSTANCE_INDEX.name}' ({index}) must be below "
                              f"'{INSTANCE_COUNT.name}' ({count})")
        assert self.consumer is not None
        chosen = [(topic, p) for topic in self.source.destinations
                  for p in sorted(self.consumer.partitions(topic)) if p % count == index]
        log.info("Static assignment (instance %d of %d): %s", index, count, _names(chosen))
        return chosen

    # -- loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        assert self.consumer is not None
        self.state = "running"
        # Every record allocates a few short-lived tuples and lists, freed by reference counting: the cyclic
        # collector's default (a pass every 700 allocations) spent a third of the loop on them. What start-up
        # built is frozen out of its passes; young objects are collected every 10,000 allocations instead.
        gc.freeze()
        gc.set_threshold(10_000, 50, 100)
        while not self.stop.is_set():
            self._restart_stalled()
            batch = self.consumer.poll(self._poll_timeout())
            if self.consumer.damaged:
                batch = self._stall_damaged(batch)
            if batch:
                started = time.perf_counter()
                self._process_batch(batch)
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.state = "stopped"

    def _stall_damaged(self, batch: Mapping[TP, list[Any]]) -> Mapping[TP, list[Any]]:
        """Partitions whose fetched data the client found damaged (a CRC mismatch, a batch that cannot be
        decompressed): stalled at the damage, or at their first record of this batch, so nothing at or after it is
        passed on; fetched again after a back-off. Records before the damage are processed first: the stall then
        waits for the next poll. A partition already held (rewound) meets the damage again when fetched again."""
        damaged, self.consumer.damaged = self.consumer.damaged, {}
        batch = dict(batch)
        for tp, (offset, reason) in damaged.items():
            records = batch.pop(tp, None)
            if tp in self.stalled:
                continue
            if records and records[0].offset < offset:
                batch[tp] = [record for record in records if record.offset < offset]
                self.consumer.damaged[tp] = (offset, reason)
                continue
            resume = min(offset, records[0].offset) if records else offset
            log.error("Records of %s-%d from offset %d cannot be read (%s): fetching them again from offset %d after "
                      "a back-off; nothing from there on is passed on", *tp, offset, reason, resume)
            self.consumer.seek(tp, resume)
            self._stall(tp, resume, f"fetched records damaged ({reason})")
        return batch

    def _poll_timeout(self) -> float:
        """An idle poll's wait (s), shorter when a stalled partition is due sooner."""
        due = min((s.due for s in self.stalled.values()), default=float("inf"))
        return max(0.0, min(POLL_TIMEOUT_MS / 1000, due - time.monotonic()))

    def _process_batch(self, batch: Mapping[TP, list[Any]]) -> None:
        started = time.monotonic()
        self._until = started + self._budget
        done: dict[TP, list[Delivery]] = {}
        rewinds: dict[TP, tuple[int, Exception | None]] = {}
        partitions = [tp for tp in batch if tp not in self.stalled]  # a paused partition's late records come again
        handled, clock, self._given_up = 0, time.perf_counter(), 0
        for index, tp in enumerate(partitions):
            deliveries = done[tp] = []
            try:
                for record in batch[tp]:
                    deliveries.append(self._deliver(record))
            except _RewindError as rewind:
                rewinds[tp] = (rewind.offset, rewind.error)
            except _InterruptedError as interrupted:  # SIGTERM, or the poll interval is running out
                rewinds[tp] = (interrupted.offset, None)
                rewinds.update({later: (batch[later][0].offset, None) for later in partitions[index + 1:]})
                if not self.stop.is_set():
                    log.info("The batch has taken %.0f s, half of max.poll.interval.ms: committing what is done "
                             "and polling again", time.monotonic() - started)
                break
            finally:
                self.metrics.received.inc(len(deliveries))
                handled += len(deliveries)
        if handled > self._given_up:  # the input channel's sends that returned (Micrometer's timer)
            self.channels.send(INPUT, handled - self._given_up, time.perf_counter() - clock)
        for name, count in self._sent.items():
            if count:
                self.sent[name].inc(count)
                self.channels.send(name, count, self._send_seconds[name])
                self._sent[name] = 0
                self._send_seconds[name] = 0.0
        held, refused = self._complete(done, self._until + self._budget / 2)
        for tp, (offset, error) in refused.items():
            rewinds[tp] = min(rewinds.get(tp, (offset, error)), (offset, error), key=lambda r: r[0])
        self._advance({tp: batch[tp] for tp in partitions}, held, rewinds)

    def _deliver(self, record: Any) -> Delivery:
        """Send the function's output of one record, retrying the function; its dead-letter copy when it gives up."""
        if record.value is None and self.tombstones is None:
            return self._give_up(record, TombstoneError("a tombstone (null value): this app has no output for it"),
                                 attempts=0)
        made, not_before = self._attempts.pop(_key(record), (0, 0.0)) if self._attempts else (0, 0.0)
        for attempt in range(made + 1, self.source.max_attempts + 1):
            if not_before and (pause := not_before - time.monotonic()) > 0 and (
                    time.monotonic() + pause > self._until or self.stop.wait(pause)):
                self._attempts[_key(record)] = (attempt - 1, not_before)  # the next batch goes on from here
                raise _InterruptedError(record.offset)
            try:
                prepared = self._prepare(record)
            except Exception as error:  # noqa: BLE001 - whatever the function raises takes the error path
                self.channels.send(INPUT, 1, 0.0, error)
                if attempt == self.source.max_attempts or isinstance(error, UnreadableRecordError):
                    return self._give_up(record, error, attempts=attempt)
                initial, multiplier, longest = self.source.back_off
                delay = min(initial * multiplier ** (attempt - 1), longest, self._budget)
                not_before = time.monotonic() + delay
                log.debug("Record %s failed (attempt %d): %s; retrying in %.1f s", _where(record), attempt,
                          error, delay)
                continue
            if prepared is None:  # nothing to send: a sink, or a record the function filtered
                return Delivery(record)
            output, value, headers, partition, key = prepared
            timed = not self._sent[output.name] & SEND_SAMPLE - 1  # a clock read costs more than the send's share
            if timed:
                clock = time.perf_counter()
            try:
                future = self.producers[output.name].send(output.destination, value, key, headers, partition)
            except Exception as error:  # noqa: BLE001 - no refusal ends the loop: settled as an asynchronous one
                self.channels.send(output.name, 1, 0.0, error)
                self.channels.send(INPUT, 1, 0.0, error)
                if self.client.about_the_record(error):
                    return self._give_up(record, error, attempts=attempt, counted=True)
                raise _RewindError(record.offset, error) from None
            if timed:
                self._send_seconds[output.name] += (time.perf_counter() - clock) * SEND_SAMPLE
            self._sent[output.name] += 1
            return Delivery(record, future)
        return self._give_up(record, RuntimeError("no attempt left"), attempts=made)  # maxAttempts lowered meanwhile

    def _prepare(self, record: Any) -> tuple[OutputBinding, bytes | None, Any, int | None, Any] | None:
        """The function's output of a record: binding, value, headers, partition and key to send (None: none)."""
        headers = tuple(record.headers) if self.source.headers else ()
        media = inbound_content_type(headers, self.source.content_type)
        if record.value is None:  # a tombstone passes through, keyed as it came: its key is what it deletes
            output, payload, out_headers = self.outputs[self.tombstones], None, headers
            key = record.key
        else:
            result = self.handler(_new(Message, (record.value, headers, media)))
            if result is None:  # a sink's function returned, or a function filtered the record (as null in Spring)
                return None
            name, out = result
            if out is None:
                return None
            if name not in self.outputs:
                raise ValueError(f"the function returned unknown output binding '{name}'")
            output, payload, out_headers, media, key = (self.outputs[name], out.payload, out.headers,
                                                        out.content_type, None)
        media = output.content_type or media
        sent_headers = outbound_headers(out_headers, media, self.client.null_header) if output.headers else None
        partition = self._partition(output, payload or b"", out_headers, media) if output.partition_key else None
        return output, payload, sent_headers, partition, key

    def _partition(self, output: OutputBinding, payload: bytes, headers: Any, media_type: str) -> int:
        count = self.partition_counts[output.destination]
        if output.partition_key == "payload":
            if is_text(media_type):
                try:
                    return select_partition(java_string_hash(payload.decode("utf-8")), count)
                except UnicodeDecodeError:
                    pass
            return select_partition(java_bytes_hash(payload), count)
        key = header_text(headers, output.partition_key)
        if key is None:
            raise HeaderError(f"partition key header '{output.partition_key}' is missing")
        return select_partition(java_string_hash(key), count)

    def _give_up(self, record: Any, error: Exception, attempts: int | None = None, counted: bool = False) -> Delivery:
        """The record failed for good (counted once): its dead-letter copy, or a skip.

        As in Spring, the failure is sent to the error channel; ``counted``: the input channel's failed
        send was counted already (a failure the function raised is counted with its attempt).
        """
        self._irregular = True
        self._given_up += 1
        self.metrics.failed.inc()
        self.channels.send(ERROR_CHANNEL, 1, 0.0)
        if attempts == 0 and not counted:  # refused before the function ran (a tombstone)
            self.channels.send(INPUT, 1, 0.0, error)
        attempts = self.source.max_attempts if attempts is None else attempts
        reason = f"{type(error).__name__}: {error}"
        if not self.source.dlq:
            log.error("Record %s skipped after %d attempt(s): %s", _where(record), attempts, reason)
            return Delivery(record)
        log.warning("Record %s sent to dead-letter topic '%s' after %d attempt(s): %s", _where(record),
                    self.source.dlq_topic(record.topic), attempts, reason)
        return self._dead_letter(record, error, None)

    def _dead_letter(self, record: Any, cause: Exception, trace: int | None) -> Delivery:
        """Send a record's dead-letter copy: its key, value and headers plus Spring's ``x-*`` headers.

        ``trace`` bounds the stack trace (None: what the producer's max.request.size leaves room for).
        """
        null = self.client.null_header
        try:
            headers = [(k, null if v is None else v) for k, v in record.headers]
        except UnreadableRecordError:  # what the client could not decode cannot be copied: the record without them
            headers = []
        headers += _dlq_headers(record, cause)
        if trace is None:
            trace = self._dlq_limit - _size(record, headers) - 512
        headers.append(("x-exception-stacktrace", _stack_trace(cause, trace)))
        copy = Delivery(record, cause=cause, trace=trace)
        self._irregular = True
        try:
            producer = self.producers["dlq"]
            topic = self.source.dlq_topic(record.topic)
            copy.future = producer.send(topic, record.value, record.key, headers,
                                        record.partition % producer.partition_count(topic))
        except Exception as error:  # noqa: BLE001 - a refused copy holds its partition, never ends the loop
            copy.refused = error
        return copy

    def _complete(self, pending: dict[TP, list[Delivery]], until: float) -> tuple[
            dict[TP, list[Delivery]], dict[TP, tuple[int, Exception]]]:
        """Flush and settle sends until nothing more can be sent now: ``(held, rewinds)``.

        Outputs the broker refused for the record's sake get their dead-letter copy; a copy refused for
        its size is sent again with only the stack trace's last line; copies still refused are ``held``.
        An output refused for any other reason rewinds its partition to it (later outputs are re-sent).
        """
        held: dict[TP, list[Delivery]] = {}
        rewinds: dict[TP, tuple[int, Exception]] = {}
        while pending:
            self._flush(until)
            settled = [producer.settled() for producer in self.producers.values()]
            if all(settled) and not self._irregular:
                break  # every send acknowledged, none refused: no handle needs reading
            self._irregular = False
            again: dict[TP, list[Delivery]] = {}
            for tp, deliveries in pending.items():
                for sent in deliveries:
                    error = sent.failure(self.client.outcome)
                    if error is None:
                        if sent.cause is not None:
                            self.metrics.dead_lettered.inc()
                    elif sent.cause is None and not self.client.about_the_record(error):
                        rewinds[tp] = (sent.record.offset, error)
                        break
                    elif sent.cause is None:
                        again.setdefault(tp, []).append(self._give_up(sent.record, error, attempts=1))
                    elif self.client.too_large(error) and sent.trace != 0:
                        again.setdefault(tp, []).append(self._dead_letter(sent.record, sent.cause, 0))
                    else:
                        log.error("Record %s could not be sent to dead-letter topic '%s' (%s): its partition waits "
                                  "until it can", _where(sent.record), self.source.dlq_topic(sent.record.topic),
                                  _describe(error))
                        sent.refused = error
                        held.setdefault(tp, []).append(sent)
            pending = again
        return held, rewinds

    def _advance(self, batch: Mapping[TP, list[Any]], held: dict[TP, list[Delivery]],
                 rewinds: dict[TP, tuple[int, Exception | None]]) -> None:
        """Commit each partition up to its first unfinished record; pause the ones that stalled."""
        offsets = {}
        for tp, records in batch.items():
            first, resume = records[0].offset, records[-1].offset + 1
            rewind, error = rewinds.get(tp, (resume, None))
            copies = sorted(held.get(tp, []), key=lambda d: d.record.offset)
            committed = min([rewind, *(d.record.offset for d in copies)])
            if committed > first:
                offsets[tp] = committed
            if rewind < resume:
                self.consumer.seek(tp, rewind)
            if copies:
                self._hold(tp, rewind, copies)
            elif error is not None:
                log.error("Sending records from %s-%d failed (%s); rewinding to offset %d to retry them",
                          *tp, _describe(error), rewind)
                self._stall(tp, rewind, f"sends refused ({_describe(error)})")
            else:
                self._pauses.pop(tp, None)
        self._commit(offsets)

    def _stall(self, tp: TP, resume: int, reason: str, copies: list[Delivery] | None = None) -> None:
        """Pause a partition; it is tried again after a back-off that doubles while it keeps stalling."""
        pause = min(self._pauses.get(tp, PAUSE_FIRST / 2) * 2, PAUSE_LONGEST, self._budget)
        self._pauses[tp] = pause
        self.stalled[tp] = Stalled(resume, reason, time.monotonic() + pause, copies or [])
        self.consumer.pause(tp)

    def _hold(self, tp: TP, resume: int, copies: list[Delivery]) -> None:
        """Stall a partition at its refused dead-letter copies (oldest first)."""
        self._stall(tp, resume, f"dead-letter copies refused ({_describe(copies[0].refused)})", copies)

    def _restart_stalled(self) -> None:
        """Resend the held dead-letter copies that are due; resume partitions with nothing left to wait for."""
        if not self.stalled:
            return
        now = time.monotonic()
        due = {tp: s for tp, s in self.stalled.items() if s.due <= now}
        if not due:
            return
        self._until = now + self._budget
        resent = {tp: [self._dead_letter(d.record, d.cause, d.trace) for d in s.copies]
                  for tp, s in due.items() if s.copies}
        held, _ = self._complete(resent, self._until)
        offsets = {}
        for tp, stalled in due.items():
            copies = sorted(held.get(tp, []), key=lambda d: d.record.offset)
            if copies:
                offsets[tp] = copies[0].record.offset
                self._hold(tp, stalled.resume, copies)
                continue
            if stalled.copies:
                offsets[tp] = stalled.resume
                log.info("Every held record of %s-%d reached the dead-letter topic: the partition moves again", *tp)
            del self.stalled[tp]
            self.consumer.seek(tp, stalled.resume)
            self.consumer.resume(tp)
        self._commit(offsets)

    def _flush(self, until: float) -> None:
        """Wait for every send until ``until`` (after SIGTERM, the shutdown budget); later ones count as failed."""
        for producer in self.producers.values():
            while True:
                if self.stop.is_set():  # a SIGTERM during the wait shortens it to the drain's budget
                    until = min(until, self._deadline)
                if producer.flush(max(0.1, min(1.0, until - time.monotonic()))):
                    break
                if time.monotonic() > until:
                    log.warning("Sends not acknowledged in time are left uncommitted: they will be sent again")
                    return

    def _commit(self, offsets: dict[TP, int]) -> None:
        if offsets and (reason := self.consumer.commit(offsets)):
            log.warning("Offsets not committed (%s): the records will be redelivered", reason)

    def _assigned(self, partitions: list[TP]) -> None:
        log.info("Partitions assigned: %s", _names(partitions) or "none")

    def forget(self, partitions: Sequence[TP]) -> None:
        """Partitions revoked: their new owner starts from the committed offsets (offsets are committed
        before every poll, so nothing else needs doing)."""
        if partitions:
            log.info("Partitions revoked: %s", _names(partitions))
        for tp in partitions:
            self.stalled.pop(tp, None)
            self._pauses.pop(tp, None)
            if self.consumer is not None:
                self.consumer.damaged.pop(tp, None)
        gone = set(partitions)
        self._attempts = {where: made for where, made in self._attempts.items() if where[:2] not in gone}

    @property
    def _deadline(self) -> float:
        return self._stop_time + SHUTDOWN_SECONDS

    def request_stop(self, signum: int, _frame: Any) -> None:
        if not self.stop.is_set():
            self._stop_time = time.monotonic()
            log.info("Received %s: finishing the current batch, then closing", signal.Signals(signum).name)
            self.stop.set()
            overdue = threading.Timer(SHUTDOWN_SECONDS + OVERRUN_SECONDS, _overdue)
            overdue.daemon = True
            overdue.start()
            if self.state == "starting":
                raise _StartInterruptedError

    def close(self) -> None:
        """Input first, then outputs, as Spring; everything was flushed, so short timeouts suffice (after SIGTERM,
        what is left of the drain's budget: sends still queued then are not committed and come again)."""
        if self.consumer is not None:
            self.consumer.close(self._close_seconds())
        for producer in self.producers.values():
            producer.close(self._close_seconds())

    def _close_seconds(self) -> float:
        # a quarter of a second at least: kafka-python's own I/O thread logs errors when closed at once
        return min(2.0, max(0.25, self._deadline - time.monotonic())) if self.stop.is_set() else 2.0


def _refusal(server: str) -> str | None:
    """Why ``host:port`` is no broker: it takes no connection, or (a load balancer with no broker behind it)
    closes each one at once; None when it takes one and waits for the client to speak, as a broker does."""
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0) as probe:
            probe.settimeout(0.05)
            try:
                return "it closes every connection at once" if not probe.recv(1) else None
            except TimeoutError:
                return None
    except OSError as error:
        return error.strerror or type(error).__name__


def _overdue() -> None:
    """The drain outlived its budget (a wait no client bounds: a commit, a close, a blocked connection): leave
    now; what was not committed is delivered again."""
    log.error("Shutdown did not finish within %.0f s of SIGTERM: exiting now; records not committed will be "
              "delivered again", SHUTDOWN_SECONDS + OVERRUN_SECONDS)
    logging.shutdown()
    os._exit(1)


def _names(partitions: Sequence[TP]) -> str:
    return ", ".join(f"{topic}-{partition}" for topic, partition in sorted(partitions))


def _key(record: Any) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


def _where(record: Any) -> str:
    return f"{record.topic}-{record.partition}@{record.offset}"


def _first(stalled: Stalled) -> int:
    return min(d.record.offset for d in stalled.copies)


def _describe(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}"


def _count_property(output: OutputBinding) -> str:
    return output_properties(output.name)["partition_count"].name


def _size(record: Any, headers: Sequence[tuple[str, bytes | None]]) -> int:
    """About what a record takes in a produce request (a client refuses one over its max.request.size)."""
    return (len(record.value or b"") + len(record.key or b"") + 128
            + sum(len(key.encode("utf-8", "replace")) + len(value or b"") + 8 for key, value in headers))


def _stack_trace(error: BaseException, limit: int) -> bytes:
    """The stack trace, its tail when longer than ``limit`` bytes; below 256 bytes, the exception's line alone."""
    trace = "".join(traceback.format_exception(error)).encode("utf-8", "replace")
    if len(trace) <= limit:
        return trace
    if limit < 256:
        return "".join(traceback.format_exception_only(error)).encode("utf-8", "replace")[:1024]
    marker = b"[stack trace truncated to fit the dead-letter record]\n"
    return marker + trace[len(trace) - limit + len(marker):]


def _dlq_headers(record: Any, error: BaseException) -> list[tuple[str, bytes]]:
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


def run_app(handler: Handler, outputs: Sequence[str], options: Mapping[str, Property] | None = None,
            group_fallback: Property | None = None, tombstones: str | None = None, app_type: str = "app") -> None:
    """Run an app with one input and the named output bindings until SIGTERM; exit non-zero on failure.

    ``options`` maps the function's keyword arguments to the app's own properties; without an input
    group, ``group_fallback``'s value (say the stream name) is the group, else the consumer is anonymous.
    A tombstone (a record with a null value) passes unchanged to the ``tombstones`` output, without
    calling the function; with none, it takes the record's error path at once.
    """
    def create(properties: Properties, values: dict[str, Any], metrics: Metrics) -> Binder:
        source = resolve_input(properties, group_fallback)
        sinks = {name: resolve_output(properties, name) for name in outputs}
        return Binder(properties, handler, values, source, sinks, metrics, tombstones)

    _serve(create, options or {}, app_type)


def run_processor(transform: Callable[..., Message], options: Mapping[str, Property] | None = None) -> None:
    """A processor: ``transform(message, **options) -> message`` from ``input`` to ``output``."""
    run_app(lambda message, **kw: ("output", transform(message, **kw)), ("output",), options or {},
            tombstones="output", app_type="processor")  # as Spring's processors: a tombstone passes through


def run_sink(consume: Callable[..., object], options: Mapping[str, Property] | None = None,
             group_fallback: Property | None = None) -> None:
    """A sink: ``consume(message, **options)`` for each record of ``input``; its offset is committed after it
    returned. What it raises is retried, then dead-lettered or skipped, as in a processor."""
    def handle(message: Message, **kw: Any) -> None:
        consume(message, **kw)

    run_app(handle, (), options, group_fallback, app_type="sink")


def run_source(supply: Callable[..., Message | str | bytes | None],
               options: Mapping[str, Property] | None = None) -> None:
    """A source: ``supply(**options)`` is polled (``spring.integration.poller.*``); what it returns goes to
    ``output`` (None: nothing this time; text is sent as ``text/plain``, bytes as they are)."""
    from .source import Source, poller

    def create(properties: Properties, values: dict[str, Any], metrics: Metrics) -> Binder:
        return Source(properties, supply, values, {"output": resolve_output(properties, "output")}, metrics,
                      poller(properties))

    _serve(create, options or {}, "source")


def _serve(create: Callable[[Properties, dict[str, Any], Metrics], Binder], options: Mapping[str, Property],
        app_type: str) -> None:
    """Read the properties, start the actuator, connect and loop until SIGTERM; exit non-zero on failure."""
    logs.start_logging()
    try:
        properties = Properties()
        logs.configure_logging(properties)
        if properties.files:
            log.info("Properties read from %s", ", ".join(map(str, properties.files)))
        values = {name: properties.get(prop) for name, prop in options.items()}
        metrics = Metrics(common_tags(properties, app_type))
        binder = create(properties, values, metrics)
        actuator = Actuator({"binder": binder.loop_check, "broker": binder.broker_check,
                             "delivery": binder.delivery_check}, ("binder",),
                            lambda: _info(properties, binder, options, values), metrics.exposition)
        actuator.start(properties)
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        sys.exit(1)
    signal.signal(signal.SIGTERM, binder.request_stop)
    signal.signal(signal.SIGINT, binder.request_stop)
    try:
        binder.connect()
        binder.run()
    except _StartInterruptedError:
        log.info("Stopped while connecting to the brokers: nothing was consumed")
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        sys.exit(1)
    except binder.client.Error as error:
        log.error("Broker error at %s (property '%s'): %s", ",".join(binder.servers),
                  binder.client.servers_property, error)
        sys.exit(1)
    finally:
        binder.state = "stopped" if binder.stop.is_set() else "failed"
        binder.close()
        actuator.stop()
    log.info("Stopped cleanly")


def _info(properties: Properties, binder: Binder, options: Mapping[str, Property],
          values: Mapping[str, Any]) -> dict[str, Any]:
    """``/actuator/info``: names, bindings and config files only; no property that could hold a secret."""
    source, bindings = binder.source, {}
    if source is not None:
        bindings["input"] = {"destination": ",".join(source.destinations), "group": source.group,
                             "anonymous": source.anonymous, "startOffset": source.start_offset, "dlq": source.dlq}
    bindings.update({name: {"destination": sink.destination, "partitionKey": sink.partition_key,
                            "partitionCount": sink.partition_count} for name, sink in binder.outputs.items()})
    return {
        "app": {"name": Path(sys.argv[0]).stem, "version": os.environ.get("APP_VERSION", "dev")},
        "stream": {"name": properties.get(STREAM_NAME), "label": properties.get(APP_LABEL)},
        "bindings": bindings,
        "config": {"files": [str(path) for path in properties.files]},
        "properties": {prop.name: values[name] for name, prop in options.items() if not prop.secret},
    }
