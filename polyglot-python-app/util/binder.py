"""The stream loop: poll a batch, call the app's function for each record, send; settle, commit; SIGTERM drains.

After the sends (at-least-once, dead letters, rewinds, commits): ``settle.py``, or ``transactions.py`` with a
transaction id; paused partitions are ``stalls.py``. Records reach the function one by one with retries; an
ordinary batch (no tombstone, no retry pending, no partition key) is sent in one straight pass first, and falls
back to the per-record path at the first record that fails. No batch outlives ``max.poll.interval.ms``: the
group never evicts the app.
"""

from __future__ import annotations

import gc
import importlib
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from . import kafka_lag, transactions
from .arguments import ConfigError, Properties
from .assignment import assigned, names, static_assignment
from .batches import BatchMode
from .bindings import (
    INSTANCE_COUNT,
    InputBinding,
    OutputBinding,
    input_properties,
    output_properties,
    provision,
    too_few_partitions,
)
from .broker_check import BrokerCheck
from .client_errors import FatalError
from .headers import UnreadableRecordError, inbound_content_type, outbound_headers
from .message import Handler, Message, build
from .metrics import BatchSends, Metrics
from .partitions import output_partition
from .settle import INPUT, Delivery, RewindError, Settlement, where
from .shutdown import Shutdown, StartInterruptedError
from .stalls import TP, Stalls
from .straight import Sent, StraightPass
from .transactions import RecoverError, RollbackError, Transactions
from .transport import Consumer, Producer, TransactionalProducer, open_client
from .values import ConversionError, outgoing

log = logging.getLogger(__name__)

NOT_RETRIED = (UnreadableRecordError, ConversionError)  # failures no attempt can change: the error path at once
POLL_TIMEOUT = 1.0  # how long an idle poll waits (s): bounds how late a SIGTERM is noticed


class _InterruptedError(Exception):
    """SIGTERM, or the end of the batch's time, arrived during a retry back-off at this record."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class TombstoneError(ValueError):
    """A record with a null value reached an app that has no output for it."""


class Binder:
    """One app's consumer, producers and loop.

    ``handler`` is the app's function with its options bound; with ``single`` set (a processor), it returns
    the message for that output alone. A tombstone passes unchanged to the ``tombstones`` output.
    """

    def __init__(self, properties: Properties, handler: Handler, source: InputBinding | None,
                 outputs: Mapping[str, OutputBinding], metrics: Metrics, tombstones: str | None = None,
                 single: str | None = None) -> None:
        self.properties, self.handler, self.single = properties, handler, single
        self.outputs, self.metrics, self.channels = outputs, metrics, metrics.channels
        self.tombstones = tombstones  # the output a tombstone passes to unchanged; None: its error path
        self.shutdown = Shutdown()
        self.stop = self.shutdown.stop
        self.state = "starting"
        self.client = open_client(properties)
        self.source = None if source is None else self.client.input(source)
        self.servers = self.client.servers
        self.brokers = BrokerCheck(self.servers)
        self.lag = kafka_lag.prepare(properties, self.client, self.source)  # the Kafka binder's lag gauge
        self.transactional_id = transactions.transactional_id(properties, self.client, outputs)  # None: none
        self.transactional: TransactionalProducer | None = None  # with an id: every output's and dead letter's
        self.consumer: Consumer | None = None
        self.producers: dict[str, Producer] = {}
        self.partition_counts: dict[str, int] = {}
        self.sends = BatchSends(metrics, outputs)
        self.stalls = Stalls()
        self.settle: Settlement | None = None
        self.attempts: dict[tuple[str, int, int], tuple[Any, ...]] = {}  # a record's: made, not before[, given up]
        self.straight: StraightPass | None = None
        self.batches: BatchMode | None = None  # batch mode: the function takes a poll's records as a list
        self.budget = 150.0  # half of max.poll.interval.ms: the longest a batch may take
        self.until = 0.0  # when the current batch stops taking records

    # -- health ---------------------------------------------------------------------------------
    def loop_check(self) -> str | None:
        return None if self.state in ("starting", "running") else f"consumer loop is {self.state}"

    def delivery_check(self) -> str | None:
        """DOWN while a partition is paused because the broker refuses its sends or dead-letter copies."""
        return self.stalls.check()

    def broker_check(self) -> str | None:
        """The client's own verdict, else whether a broker takes a connection (``broker_check.py``)."""
        if (problem := self.client.problem()) is not None:
            return problem
        return self.brokers.verdict()

    # -- start ----------------------------------------------------------------------------------
    def connect(self) -> None:
        """Provision topics, create producers and the consumer; the client's Error when no broker answers."""
        source = self.source
        needed = source.concurrency * self.properties.get(INSTANCE_COUNT)
        asked_by = None if source.auto_rebalance else (  # a fixed assignment needs them all
            INSTANCE_COUNT.name if source.concurrency == 1 else
            f"{INSTANCE_COUNT.name}' x '{input_properties()['concurrency'].name}")
        self._open_outputs({d: (needed, asked_by) for d in source.destinations})
        if source.dlq:
            self.producers["dlq"] = dlq = self.client.dead_letters(source, self.transactional)
            provision(self.properties, self.client,
                      {source.dlq_topic(d): (dlq.partition_count(d), None) for d in source.destinations})
        self.consumer, start = self.client.consumer(source)
        self.budget = self.consumer.max_poll_interval / 2
        if self.lag is not None:
            self.lag.start(self.metrics.registry)
        self.stalls.pause = self.consumer.pause
        parts = (self.client, self.consumer, self.producers, source, self.metrics, self.stalls, self.shutdown,
                 self.budget)
        self.settle = Settlement(*parts) if self.transactional is None else Transactions(
            self.transactional, self.attempts, *parts)
        self.straight = StraightPass(self.handler, self.single, source, self.outputs, self.producers,
                                     self.client.null_header, self.sends)
        if source.auto_rebalance:
            self.consumer.subscribe(source.destinations, assigned, self.forget)
        else:
            self.consumer.assign(static_assignment(self.properties, source, self.consumer))
        origin = f"(from {source.group_from})" if source.group_from else "(no group set: anonymous)"
        log.info("Consuming %s as group '%s' %s starting at %s with %s; producing to %s",
                 ",".join(source.destinations), source.group, origin, start, self.client.name,
                 ", ".join(f"{o.name}={o.destination}" for o in self.outputs.values()) or "nothing (a sink)")

    def _open_outputs(self, topics: dict[str, tuple[int, str | None]]) -> None:
        """Provision ``topics`` and the outputs' topics; a producer per output binding."""
        topics.update({o.destination: (o.partition_count, _count_property(o)) for o in self.outputs.values()})
        provision(self.properties, self.client, topics)
        self.transactional = transactions.producer(self.client, self.transactional_id, self.source)
        for output in self.outputs.values():
            self.producers[output.name] = producer = self.transactional or self.client.producer(output.name)
            found = producer.partition_count(output.destination)
            if found < output.partition_count:  # as Spring: the topic must have what partitionCount asks
                raise ConfigError(too_few_partitions(output.destination, output.partition_count, found,
                                                     _count_property(output)))
            self.partition_counts[output.destination] = found

    # -- loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        assert self.consumer is not None
        assert self.settle is not None
        self.state = "running"
        # Every record allocates a few short-lived tuples and lists, freed by reference counting: the cyclic
        # collector's default (a pass every 700 allocations) spent a third of the loop on them. What start-up
        # built is frozen out of its passes; young objects are collected every 10,000 allocations instead.
        gc.freeze()
        gc.set_threshold(10_000, 50, 100)
        while not self.stop.is_set():
            self.settle.restart_stalled()
            batch = self.consumer.poll(self.stalls.wait(POLL_TIMEOUT))
            if self.consumer.damaged:
                batch = self.stalls.damaged(self.consumer, batch, self.budget)
            if batch:
                started = time.perf_counter()
                self._process_batch(batch)
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.state = "stopped"

    def _process_batch(self, batch: Mapping[TP, list[Any]]) -> None:
        self.until = time.monotonic() + self.budget
        settle = self.settle
        partitions = [tp for tp in batch if tp not in self.stalls.stalled]  # a paused one's late records come again
        clock, settle.given_up = time.perf_counter(), 0
        runs: dict[TP, list[Sent]] = {}  # what the straight pass sent, per partition
        if self.batches is not None:
            done, rewinds = self.batches.process(batch, partitions)
            handled = sum(len(batch[tp]) for tp in partitions)
            self.metrics.received.inc(handled)
        else:
            done, rewinds, handled = self._one_by_one(batch, partitions, runs)
        if handled > settle.given_up:  # the input channel's sends that returned (Micrometer's timer)
            self.channels.send(INPUT, handled - settle.given_up, time.perf_counter() - clock)
        self.sends.publish()
        held, refused = settle.complete(done, self.until + self.budget / 2, runs)
        for tp, (offset, error) in refused.items():
            rewinds[tp] = min(rewinds.get(tp, (offset, error)), (offset, error), key=lambda r: r[0])
        settle.advance({tp: batch[tp] for tp in partitions}, held, rewinds)

    def _one_by_one(self, batch: Mapping[TP, list[Any]], partitions: list[TP], runs: dict[TP, list[Sent]]) -> tuple[
            dict[TP, list[Delivery]], dict[TP, tuple[int, Exception | None]], int]:
        """Each record through the function: a straight pass while they are ordinary, else one by one with retries.
        Deliveries per partition, the partitions to rewind, the records handled."""
        started = time.monotonic()
        done: dict[TP, list[Delivery]] = {}
        rewinds: dict[TP, tuple[int, Exception | None]] = {}
        handled = 0
        straight = self.straight.plain and not self.attempts
        for index, tp in enumerate(partitions):
            deliveries = done[tp] = []
            records, straight_count = batch[tp], 0
            try:
                if straight:
                    straight_count, stopped = self.straight.run(records, runs.setdefault(tp, []))
                    records = records[straight_count:]
                    if stopped is not None:  # the record the pass stopped at takes the per-record path from there
                        kind, error, output = stopped  # its first attempt failed so
                        deliveries.append(self._refused(records[0], 1, output, error) if kind == "send"
                                          else self.deliver(records[0], failed=error))
                        records = records[1:]
                for record in records:
                    deliveries.append(self.deliver(record))
            except RewindError as rewind:
                rewinds[tp] = (rewind.offset, rewind.error)
            except RollbackError as rollback:  # transactional: the batch aborts and comes again
                self.settle.rollback = rollback
                break
            except (_InterruptedError, RecoverError) as ended:  # SIGTERM, the poll interval running out, or
                rewinds[tp] = (ended.offset, None)  # (transactional) a record to dead-letter on its own, after
                rewinds.update({later: (batch[later][0].offset, None) for later in partitions[index + 1:]})
                if isinstance(ended, RecoverError):
                    self.settle.recovering, self.settle.given_up = ended, self.settle.given_up + 1
                    deliveries.append(Delivery(ended.record))  # counted as received
                elif not self.stop.is_set():
                    log.info("The batch has taken %.0f s, half of max.poll.interval.ms: committing what is done "
                             "and polling again", time.monotonic() - started)
                break
            finally:
                self.metrics.received.inc(straight_count + len(deliveries))
                handled += straight_count + len(deliveries)
        return done, rewinds, handled

    def deliver(self, record: Any, failed: Exception | None = None) -> Delivery:
        """Send the function's output of one record, retrying the function; its dead-letter copy when it gives up.
        ``failed``: the first attempt was made (in the straight pass) and raised this."""
        settle = self.settle
        if record.value is None and self.tombstones is None:
            return settle.give_up(record, TombstoneError("a tombstone (null value): this app has no output for it"),
                                  attempts=0)
        made, not_before = 0, 0.0
        if self.attempts and (carried := self.attempts.pop(_key(record), None)):
            if len(carried) == 3:  # its send failed for its own sake in an aborted transaction: given up
                return settle.give_up(record, carried[2], attempts=carried[0], counted=True)
            made, not_before = carried
        for attempt in range(made + 1, self.source.max_attempts + 1):
            if not_before and (pause := not_before - time.monotonic()) > 0 and not self.wait_out(pause):
                self.attempts[_key(record)] = (attempt - 1, not_before)  # the next batch goes on from here
                raise _InterruptedError(record.offset)
            if failed is None:
                try:
                    prepared = self._prepare(record)
                except Exception as error:  # noqa: BLE001 - whatever the function raises takes the error path
                    failed = error
            if failed is not None:
                error, failed = failed, None
                self.channels.send(INPUT, 1, 0.0, error)
                if attempt == self.source.max_attempts or isinstance(error, NOT_RETRIED):
                    return settle.give_up(record, error, attempts=attempt)
                initial, multiplier, longest = self.source.back_off
                delay = min(initial * multiplier ** (attempt - 1), longest, self.budget)
                not_before = time.monotonic() + delay
                log.debug("Record %s failed (attempt %d): %s; retrying in %.1f s", where(record), attempt,
                          error, delay)
                if self.transactional_id is not None and self.batches is None:  # after-rollback retries, as Spring
                    self.attempts[_key(record)] = (attempt, not_before)
                    raise RollbackError(record, error)
                continue
            if prepared is None:  # nothing to send: a sink, or a record the function filtered
                return Delivery(record)
            return self.send(record, attempt, *prepared)
        return settle.give_up(record, RuntimeError("no attempt left"), attempts=made)  # maxAttempts lowered meanwhile

    def send(self, record: Any, attempt: int, output: OutputBinding, value: bytes | None, headers: Any,
              partition: int | None, key: bytes | None) -> Delivery:
        """Send one record's output; a refusal about the record gives it up, any other rewinds its partition."""
        sends = self.sends
        timed = not sends.count[output.name] & sends.SAMPLE - 1  # a clock read costs more than the send's share
        if timed:
            clock = time.perf_counter()
        try:
            future = self.producers[output.name].send(output.destination, value, key, headers, partition)
        except Exception as error:  # noqa: BLE001 - no refusal ends the loop: settled as an asynchronous one
            return self._refused(record, attempt, output, error)
        if timed:
            sends.seconds[output.name] += (time.perf_counter() - clock) * sends.SAMPLE
        sends.count[output.name] += 1
        return Delivery(record, future)

    def wait_out(self, pause: float) -> bool:
        """Wait out a back-off; False when the batch has no time for it or SIGTERM came. A consumer with no poll
        deadline (``idle``: RabbitMQ, where a requeued message comes back under a new number and would lose
        its attempts) waits in place, serving its connection."""
        idle = getattr(self.consumer, "idle", None)
        if idle is not None:
            return idle(pause, self.stop)
        return time.monotonic() + pause <= self.until and not self.stop.wait(pause)

    def _refused(self, record: Any, attempt: int, output: OutputBinding, error: Exception) -> Delivery:
        """The client refused a send at once: about the record, it is given up; else its partition rewinds."""
        if isinstance(error, FatalError):  # the transaction's producer cannot go on
            raise error
        self.channels.send(output.name, 1, 0.0, error)
        self.channels.send(INPUT, 1, 0.0, error)
        if self.client.about_the_record(error):
            return self.settle.give_up(record, error, attempts=attempt, counted=True)
        raise RewindError(record.offset, error) from None

    def _prepare(self, record: Any) -> tuple[OutputBinding, bytes | None, Any, int | None, Any] | None:
        """The function's output of a record: binding, value, headers, partition and key to send (None: none)."""
        headers = tuple(record.headers) if self.source.headers else ()
        media = inbound_content_type(headers, self.source.content_type)
        if record.value is None:  # a tombstone passes through, keyed as it came: its key is what it deletes
            return self.addressed(self.tombstones, build(Message, (None, headers, media)), record.key)
        message = build(Message, (record.value, headers, media))
        result = self.handler(message)
        if self.single is not None:
            name, out = self.single, result
        elif result is None or not self.outputs:  # a sink's function returned, or one filtered the record
            return None
        else:
            name, out = result
        if type(out) is not Message:  # a value: bytes, text, JSON or a dataclass (None: nothing)
            out = outgoing(out, message)
        if out is None:  # the function filtered the record (as null in Spring)
            return None
        return self.addressed(name, out)

    def addressed(self, name: str, out: Message, key: bytes | None = None) -> tuple[
            OutputBinding, bytes | None, Any, int | None, Any]:
        """A message for output binding ``name`` as it is sent: binding, value, headers, partition and key."""
        output = self.outputs.get(name)
        if output is None:
            raise ValueError(f"the function returned unknown output binding '{name}'")
        media = output.content_type or out.content_type
        sent_headers = outbound_headers(out.headers, media, self.client.null_header) if output.headers else None
        count = self.partition_counts[output.destination]
        partition = output_partition(output.partition_key, count, out.payload or b"", out.headers,
                                     media) if output.partition_key else None
        return output, out.payload, sent_headers, partition, key

    def forget(self, partitions: Sequence[TP]) -> None:
        """Partitions revoked: their new owner starts from the committed offsets (offsets are committed
        before every poll, so nothing else needs doing)."""
        if partitions:
            log.info("Partitions revoked: %s", names(partitions))
        self.stalls.forget(partitions)
        if self.consumer is not None:
            for tp in partitions:
                self.consumer.damaged.pop(tp, None)
        gone = set(partitions)
        for key in [key for key in self.attempts if key[:2] in gone]:  # in place: the settlement holds it too
            del self.attempts[key]

    # -- stop -----------------------------------------------------------------------------------
    def request_stop(self, signum: int, _frame: Any) -> None:
        if not self.stop.is_set():
            self.shutdown.request(signum)
            if self.state == "starting":
                raise StartInterruptedError

    def close(self) -> None:
        """Input first, then outputs, as Spring; everything was flushed, so short timeouts suffice (after SIGTERM,
        what is left of the drain's budget: sends still queued then are not committed and come again)."""
        if self.lag is not None:
            self.lag.stop()
        if self.consumer is not None:
            self.consumer.close(self.shutdown.close_seconds())
        for producer in [self.transactional] if self.transactional else self.producers.values():
            producer.close(self.shutdown.close_seconds())


def __getattr__(name: str) -> Any:
    """The entry points' old home: a step written as ``from util.binder import run_processor`` still runs, with a
    DeprecationWarning (``from util import run_processor`` is the form to use). The one import up the ladder:
    made only when an old step asks, never by the loop."""
    if name not in ("run_app", "run_processor", "run_sink", "run_source"):
        raise AttributeError(f"module 'util.binder' has no attribute '{name}'")
    warnings.warn(f"'from util.binder import {name}' is deprecated: use 'from util import {name}'",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(".steps", __package__), name)


def _key(record: Any) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


def _count_property(output: OutputBinding) -> str:
    return output_properties(output.name)["partition_count"].name
