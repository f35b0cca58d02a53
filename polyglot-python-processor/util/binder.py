"""The Kafka binder: consume a batch, call the app's function, send, flush, commit; SIGTERM drains.

At-least-once: offsets are committed only for partitions whose every output was acknowledged.
A record that keeps failing goes to the DLQ (or is logged and skipped) and its offset is committed,
so one bad record never blocks a partition. A failed send rewinds its partition instead.
"""

from __future__ import annotations

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from prometheus_client import CollectorRegistry, Counter, Histogram

from . import kafka_config, logs
from .actuator import PROPERTIES as ACTUATOR_PROPERTIES
from .actuator import Actuator
from .arguments import ConfigError, Properties, Property
from .bindings import (
    APP_LABEL,
    INSTANCE_COUNT,
    INSTANCE_INDEX,
    STREAM_NAME,
    InputBinding,
    OutputBinding,
    consumer_settings,
    input_properties,
    output_properties,
    provision,
    resolve_input,
    resolve_output,
)
from .bindings import PROPERTIES as BINDING_PROPERTIES
from .headers import HeaderError, content_type, header_text, is_text, outbound_headers
from .partitions import java_bytes_hash, java_string_hash, select_partition

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 1000  # how long an idle poll waits: bounds how late a SIGTERM is noticed
SHUTDOWN_SECONDS = 8.0  # the drain's budget after SIGTERM, inside Kubernetes' and Spring's 10 s
COMMON_PROPERTIES: tuple[Property, ...] = (*kafka_config.PROPERTIES, *BINDING_PROPERTIES, *ACTUATOR_PROPERTIES,
                                           *logs.PROPERTIES)


@dataclass(frozen=True)
class Message:
    """What the app's function sees and returns: payload bytes, inbound headers, content type."""

    payload: bytes
    headers: Sequence[tuple[str, bytes]]
    content_type: str

    def text(self) -> str:
        """The payload as UTF-8 text; UnicodeDecodeError sends the record down the error path."""
        return self.payload.decode("utf-8")

    def with_payload(self, payload: bytes, content_type: str | None = None) -> Message:
        return replace(self, payload=payload, content_type=content_type or self.content_type)


# Kafka client settings pass through under these prefixes (``<key>`` is a Kafka client key).
PASS_THROUGH = ("spring.cloud.stream.kafka.binder.configuration.<key>",
                "spring.cloud.stream.kafka.binder.consumerProperties.<key>",
                "spring.cloud.stream.kafka.binder.producerProperties.<key>",
                "spring.cloud.stream.kafka.bindings.<binding>.consumer.configuration.<key>",
                "spring.cloud.stream.kafka.bindings.<binding>.producer.configuration.<key>")


def app_properties(outputs: Sequence[str], options: Mapping[str, Property],
                   group_fallback: Property | None = None) -> list[Property]:
    """Every property an app with these output bindings reads: its own first, then the binder's."""
    bindings = [*input_properties(group_fallback).values(),
                *(p for name in outputs for p in output_properties(name).values())]
    return [*options.values(), *bindings, *COMMON_PROPERTIES]


# The app's function: a message in, the output binding's name and the message to send out.
Handler = Callable[..., tuple[str, Message]]


class _StopRequestedError(Exception):
    """SIGTERM arrived during a retry back-off: commit what is done and leave."""


class _StartInterruptedError(BaseException):
    """SIGTERM arrived while connecting (a broker may be unreachable): nothing to drain, leave at once.

    A BaseException, so that no client code catching Exception swallows it.
    """


class Metrics:
    """Prometheus counters of one app, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter("polyglot_records_received", "Records consumed from the input binding.",
                                ["binding"], registry=self.registry).labels("input")
        self.sent = Counter("polyglot_records_sent", "Records produced, per output binding.", ["binding"],
                            registry=self.registry)
        self.failed = Counter("polyglot_records_failed", "Records that failed every attempt.", ["binding"],
                              registry=self.registry).labels("input")
        self.dead_lettered = Counter("polyglot_records_dead_lettered", "Records sent to the dead-letter topic.",
                                     ["binding"], registry=self.registry).labels("input")
        self.batch_seconds = Histogram("polyglot_batch_processing_seconds",
                                       "Time to process, send, flush and commit one polled batch.",
                                       registry=self.registry)


class Binder:
    """One app's consumer, producers and loop."""

    def __init__(self, properties: Properties, handler: Handler, options: Mapping[str, Any],
                 source: InputBinding, outputs: Mapping[str, OutputBinding], metrics: Metrics) -> None:
        self.properties, self.handler, self.options = properties, handler, options
        self.source, self.outputs, self.metrics = source, outputs, metrics
        self.stop = threading.Event()
        self._stop_time = 0.0
        self.state = "starting"
        self.servers = kafka_config.bootstrap_servers(properties)
        self._reachable: tuple[float, str | None] = (0.0, None)
        self.consumer: KafkaConsumer | None = None
        self.producers: dict[str, KafkaProducer] = {}
        self.partition_counts: dict[str, int] = {}
        self.sent = {name: metrics.sent.labels(name) for name in outputs}

    # -- health ---------------------------------------------------------------------------------
    def loop_check(self) -> str | None:
        return None if self.state in ("starting", "running") else f"consumer loop is {self.state}"

    def broker_check(self) -> str | None:
        """Any bootstrap broker accepts a TCP connection (cached 2 s so probes stay cheap)."""
        checked, reason = self._reachable
        if time.monotonic() - checked < 2.0:
            return reason
        reason = f"no broker reachable at {','.join(self.servers)}"
        for server in self.servers:
            host, _, port = server.rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
                reason = None
                break
            except OSError:
                continue
        self._reachable = (time.monotonic(), reason)
        return reason

    # -- start ----------------------------------------------------------------------------------
    def connect(self) -> None:
        """Create topics, producers and the consumer; KafkaError when the brokers cannot be reached."""
        topics = {d: 1 for d in self.source.destinations}
        topics.update({o.destination: o.partition_count for o in self.outputs.values()})
        provision(self.properties, topics)
        for name in self.outputs:
            self.producers[name] = KafkaProducer(**kafka_config.client_settings(self.properties, name, "producer"))
        for output in self.outputs.values():
            found = self.producers[output.name].partitions_for(output.destination) or {0}
            self.partition_counts[output.destination] = max(output.partition_count, len(found))
        if self.source.dlq:
            settings = kafka_config.client_settings(self.properties, None, "producer")
            # A dead-lettered record is as big as the input topic let it be: send any the consumer can fetch.
            fetchable = consumer_settings(self.properties, self.source).get(
                "fetch_max_bytes", KafkaConsumer.DEFAULT_CONFIG["fetch_max_bytes"])
            settings["max_request_size"] = max(settings.get("max_request_size", 0), fetchable)
            self.producers["dlq"] = KafkaProducer(**settings)
            dlqs = {self.source.dlq_topic(d): len(self.producers["dlq"].partitions_for(d) or {0})
                    for d in self.source.destinations}
            provision(self.properties, dlqs)
        settings = consumer_settings(self.properties, self.source)
        self.consumer = KafkaConsumer(**settings)
        if self.source.auto_rebalance:
            self.consumer.subscribe(list(self.source.destinations), listener=_RebalanceLog())
        else:
            self.consumer.assign(self._static_assignment())
        origin = f"(from {self.source.group_from})" if self.source.group_from else "(no group set: anonymous)"
        log.info("Consuming %s as group '%s' %s starting at %s; producing to %s", ",".join(self.source.destinations),
                 self.source.group, origin, settings["auto_offset_reset"],
                 ", ".join(f"{o.name}={o.destination}" for o in self.outputs.values()))

    def _static_assignment(self) -> list[TopicPartition]:
        index, count = self.properties.get(INSTANCE_INDEX), self.properties.get(INSTANCE_COUNT)
        if not 0 <= index < count:
            raise ConfigError(f"Property '{INSTANCE_INDEX.name}' ({index}) must be below "
                              f"'{INSTANCE_COUNT.name}' ({count})")
        assert self.consumer is not None
        chosen = [TopicPartition(topic, p) for topic in self.source.destinations
                  for p in sorted(self.consumer.partitions_for_topic(topic) or {0}) if p % count == index]
        log.info("Static assignment (instance %d of %d): %s", index, count,
                 ", ".join(f"{tp.topic}-{tp.partition}" for tp in chosen))
        return chosen

    # -- loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        assert self.consumer is not None
        self.state = "running"
        while not self.stop.is_set():
            batch = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            if batch:
                started = time.perf_counter()
                self._process_batch(batch)
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.state = "stopped"

    def _process_batch(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        sent: dict[TopicPartition, list[tuple[Any, Any]]] = {}
        stopped: dict[TopicPartition, tuple[int, Exception]] = {}
        try:
            for tp, records in batch.items():
                pending = sent[tp] = []
                for record in records:
                    try:
                        pending.append((record, self._process(record)))
                    except KafkaError as error:  # the broker did not take the send: rewind, never skip
                        stopped[tp] = (record.offset, error)
                        break
                self.metrics.received.inc(len(records))
        except _StopRequestedError:
            log.info("Stopping during a retry back-off: committing the records already processed")
        self._flush()
        # Sends the broker refused for good take the record's error path; the first retriable failure rewinds.
        recovered: dict[TopicPartition, list[tuple[Any, Any]]] = {}
        for tp, pending in sent.items():
            dead, rewind = settle(pending)
            rewind = rewind or stopped.get(tp)
            recovered[tp] = []
            for record, error in dead:
                try:
                    recovered[tp].append((record, self._give_up(record, error)))
                except KafkaError as dlq_error:
                    rewind = (record.offset, dlq_error)
                    break
            stopped[tp] = rewind
        if any(recovered.values()):
            self._flush()
        offsets, rewound = {}, False
        for tp, pending in sent.items():
            rewind = _first_failure(recovered[tp]) or stopped[tp]  # any failed dead-letter send rewinds
            if rewind is not None:
                offset, error = rewind
                log.error("Sending records from %s-%d failed (%s); rewinding to offset %d to retry them",
                          tp.topic, tp.partition, error, offset)
                self.consumer.seek(tp, offset)
                rewound = True
                if offset > batch[tp][0].offset:
                    offsets[tp] = OffsetAndMetadata(offset, "", -1)
            elif pending:
                offsets[tp] = OffsetAndMetadata(pending[-1][0].offset + 1, "", -1)
        self._commit(offsets)
        if rewound:
            self.stop.wait(1.0)  # the broker is struggling: do not spin on it

    def _process(self, record: Any) -> Any:
        """Send the function's output (or the DLQ copy) of one record; None when it is skipped."""
        initial, multiplier, longest = self.source.back_off
        for attempt in range(1, self.source.max_attempts + 1):
            try:
                return self._send(*self._apply(record))
            except KafkaTimeoutError:
                raise  # no metadata or buffer space: a broker problem, not this record's
            except Exception as error:  # noqa: BLE001 - whatever the function or the send raises takes the error path
                if attempt == self.source.max_attempts:
                    return self._give_up(record, error)
                delay = min(initial * multiplier ** (attempt - 1), longest)
                log.debug("Record %s failed (attempt %d): %s; retrying in %.1f s", _where(record), attempt,
                          error, delay)
                if self.stop.wait(delay):
                    raise _StopRequestedError from None
        return None

    def _apply(self, record: Any) -> tuple[OutputBinding, Message]:
        headers = record.headers if self.source.headers else ()
        message = Message(record.value or b"", headers, content_type(headers, self.source.content_type))
        name, out = self.handler(message, **self.options)
        if name not in self.outputs:
            raise ValueError(f"the function returned unknown output binding '{name}'")
        return self.outputs[name], out

    def _send(self, output: OutputBinding, out: Message) -> Any:
        media_type = output.content_type or out.content_type
        headers = outbound_headers(out.headers, media_type) if output.headers else None
        partition = self._partition(output, out, media_type) if output.partition_key else None
        future = self.producers[output.name].send(output.destination, value=out.payload, headers=headers,
                                                  partition=partition)
        self.sent[output.name].inc()
        return future

    def _partition(self, output: OutputBinding, out: Message, media_type: str) -> int:
        count = self.partition_counts[output.destination]
        if output.partition_key == "payload":
            if is_text(media_type):
                try:
                    return select_partition(java_string_hash(out.payload.decode("utf-8")), count)
                except UnicodeDecodeError:
                    pass
            return select_partition(java_bytes_hash(out.payload), count)
        key = header_text(out.headers, output.partition_key)
        if key is None:
            raise HeaderError(f"partition key header '{output.partition_key}' is missing")
        return select_partition(java_string_hash(key), count)

    def _give_up(self, record: Any, error: Exception) -> Any:
        self.metrics.failed.inc()
        reason = f"{type(error).__name__}: {error}"
        if not self.source.dlq:
            log.error("Record %s skipped after %d attempt(s): %s", _where(record), self.source.max_attempts, reason)
            return None
        topic = self.source.dlq_topic(record.topic)
        producer = self.producers["dlq"]
        partitions = producer.partitions_for(topic) or {0}
        future = producer.send(topic, value=record.value, key=record.key, partition=record.partition % len(partitions),
                               headers=[*record.headers, *_dlq_headers(record, error)])
        self.metrics.dead_lettered.inc()
        log.warning("Record %s sent to dead-letter topic '%s' after %d attempt(s): %s", _where(record), topic,
                    self.source.max_attempts, reason)
        return future

    def _flush(self) -> None:
        """Wait for every send; after SIGTERM only as long as the shutdown budget allows."""
        for producer in self.producers.values():
            while True:
                try:
                    producer.flush(timeout=1.0)
                    break
                except KafkaTimeoutError:
                    if self.stop.is_set() and time.monotonic() > self._deadline:
                        log.warning("Unsent records are left uncommitted: they will be processed again")
                        return

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if not offsets:
            return
        try:
            self.consumer.commit(offsets, timeout_ms=10_000)
        except CommitFailedError:
            log.warning("Offsets not committed: the group rebalanced; the records will be redelivered")
        except KafkaError as error:
            log.warning("Offsets not committed (%s); the records will be redelivered", error)

    @property
    def _deadline(self) -> float:
        return self._stop_time + SHUTDOWN_SECONDS

    def request_stop(self, signum: int, _frame: Any) -> None:
        if not self.stop.is_set():
            self._stop_time = time.monotonic()
            log.info("Received %s: finishing the current batch, then closing", signal.Signals(signum).name)
            self.stop.set()
            if self.state == "starting":
                raise _StartInterruptedError

    def close(self) -> None:
        """Input first, then outputs, as Spring; everything was flushed, so short timeouts suffice."""
        if self.consumer is not None:
            self.consumer.close(autocommit=False, timeout_ms=2000)
        for producer in self.producers.values():
            producer.close(timeout=2)


class _RebalanceLog(ConsumerRebalanceListener):
    """Offsets are committed before every poll, so a rebalance only needs to be logged."""

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            log.info("Partitions revoked: %s", ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(revoked)))

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("Partitions assigned: %s",
                 ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(assigned)) or "none")


def _where(record: Any) -> str:
    return f"{record.topic}-{record.partition}@{record.offset}"


def settle(sent: Sequence[tuple[Any, Any]]) -> tuple[list[tuple[Any, Exception]], tuple[int, Exception] | None]:
    """Sort the sends of one partition, in order, once flushed: ``(dead, rewind)``.

    ``dead`` are the records whose send the broker refused for good (a non-retriable error), to take
    the error path; ``rewind`` is the offset (and error) of the first send that failed retriably or
    was never acknowledged: it and everything after it are processed again. A None future is a
    skipped record.
    """
    dead: list[tuple[Any, Exception]] = []
    for record, future in sent:
        if future is None or future.succeeded():
            continue
        error = _error(future)
        if getattr(error, "retriable", False):
            return dead, (record.offset, error)
        dead.append((record, error))
    return dead, None


def _first_failure(sent: Sequence[tuple[Any, Any]]) -> tuple[int, Exception] | None:
    """The offset and error of the first send that was not acknowledged, whatever the error."""
    return next(((record.offset, _error(future)) for record, future in sent
                 if future is not None and not future.succeeded()), None)


def _error(future: Any) -> Exception:
    """Why a send did not succeed; one still pending when the flush gave up counts as a retriable timeout."""
    return future.exception if future.is_done else KafkaTimeoutError("not acknowledged before the flush ended")


def _dlq_headers(record: Any, error: Exception) -> list[tuple[str, bytes]]:
    """The ``x-*`` headers Spring's Kafka binder adds to a dead-lettered record."""
    kind = type(error)
    return [
        ("x-original-topic", record.topic.encode()),
        ("x-original-partition", struct.pack(">i", record.partition)),
        ("x-original-offset", struct.pack(">q", record.offset)),
        ("x-original-timestamp", struct.pack(">q", record.timestamp)),
        ("x-original-timestamp-type", b"LogAppendTime" if record.timestamp_type == 1 else b"CreateTime"),
        ("x-exception-fqcn", f"{kind.__module__}.{kind.__qualname__}".encode()),
        ("x-exception-message", str(error).encode("utf-8", "replace")),
        ("x-exception-stacktrace", "".join(traceback.format_exception(error)).encode("utf-8", "replace")),
    ]


def run_app(handler: Handler, outputs: Sequence[str], options: Mapping[str, Property] | None = None,
            group_fallback: Property | None = None) -> None:
    """Run an app with one input and the named output bindings until SIGTERM; exit non-zero on failure.

    ``options`` maps the function's keyword arguments to the app's own properties; without an input
    group, ``group_fallback``'s value (say the stream name) is the group, else the consumer is anonymous.
    """
    logs.start_logging()
    options = options or {}
    try:
        properties = Properties()
        logs.configure_logging(properties)
        values = {name: properties.get(prop) for name, prop in options.items()}
        source = resolve_input(properties, group_fallback)
        sinks = {name: resolve_output(properties, name) for name in outputs}
        metrics = Metrics()
        binder = Binder(properties, handler, values, source, sinks, metrics)
        actuator = Actuator({"binder": binder.loop_check, "broker": binder.broker_check}, ("binder",),
                            lambda: _info(properties, source, sinks, options, values), metrics.registry)
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
    except KafkaError as error:
        log.error("Kafka error with brokers %s (property '%s'): %s", ",".join(binder.servers),
                  kafka_config.BROKERS.name, error)
        sys.exit(1)
    finally:
        binder.state = "stopped" if binder.stop.is_set() else "failed"
        binder.close()
        actuator.stop()
    log.info("Stopped cleanly")


def run_processor(transform: Callable[..., Message], options: Mapping[str, Property] | None = None) -> None:
    """A processor: ``transform(message, **options) -> message`` from ``input`` to ``output``."""
    run_app(lambda message, **kw: ("output", transform(message, **kw)), ("output",), options or {})


def _info(properties: Properties, source: InputBinding, sinks: Mapping[str, OutputBinding],
          options: Mapping[str, Property], values: Mapping[str, Any]) -> dict[str, Any]:
    """``/actuator/info``: names and bindings only; no property that could hold a secret."""
    return {
        "app": {"name": Path(sys.argv[0]).stem, "version": os.environ.get("APP_VERSION", "dev")},
        "stream": {"name": properties.get(STREAM_NAME), "label": properties.get(APP_LABEL)},
        "bindings": {
            "input": {"destination": ",".join(source.destinations), "group": source.group,
                      "anonymous": source.anonymous, "startOffset": source.start_offset, "dlq": source.dlq},
            **{name: {"destination": sink.destination, "partitionKey": sink.partition_key,
                      "partitionCount": sink.partition_count} for name, sink in sinks.items()},
        },
        "properties": {prop.name: values[name] for name, prop in options.items() if not prop.secret},
    }
