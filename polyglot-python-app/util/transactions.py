"""Exactly-once on Kafka: the transactional id, and a batch's transaction (its outputs, dead letters and input
offsets committed together, or aborted and its partitions rewound to what was committed).

As Spring's transactional binder with its DefaultAfterRollbackProcessor: a function failure, a send refused or a
commit that fails aborts the batch's transaction; every partition of the batch goes back to its committed offset
and the records come again, the failed one after its back-off, counting its attempts. A record that keeps failing
ends its batch: what came before it commits, then its dead-letter copy and its offset (``txCommitRecovered``)
commit in a transaction of their own. A transaction begins with a batch's first send: a batch that sent nothing
(a filter dropped it all) commits its offsets with the consumer. A sink has no producer: it commits its offsets
as it does without transactions. In batch mode the function is retried in place (a failed call sends nothing)
and a record given up is dead-lettered in its batch's transaction.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from .arguments import ConfigError, Properties
from .bindings import INSTANCE_INDEX, InputBinding
from .client_errors import AbortError, FatalError
from .kafka_config import TRANSACTION_ID_PREFIX
from .metrics import Metrics
from .settle import Delivery, Settlement, deliveries, describe, flush, where
from .shutdown import Shutdown
from .stalls import TP, Stalls
from .transport import TransactionalProducer

log = logging.getLogger(__name__)

# The longest a transaction's offsets or commit may wait for the broker, and its abort (which a live broker answers
# at once: one that does not may be a fence Tansu never answers); after SIGTERM, what is left of the drain's budget.
TRANSACTION_SECONDS, ABORT_SECONDS = 15.0, 10.0


class RollbackError(Exception):
    """A record's function failed with attempts left: the batch's transaction aborts, its records come again."""

    def __init__(self, record: Any, error: Exception) -> None:
        super().__init__(record, error)
        self.record, self.error = record, error


class RecoverError(Exception):
    """A record failed for good: its batch commits up to it, then its dead-letter copy commits on its own."""

    def __init__(self, record: Any, error: Exception, attempts: int, counted: bool) -> None:
        super().__init__(record, error)
        self.record, self.error, self.attempts, self.counted = record, error, attempts, counted
        self.offset = record.offset


def transactional_id(properties: Properties, client: Any, outputs: Mapping[str, Any]) -> str | None:
    """The app's transactional.id: ``transactionIdPrefix`` plus this instance's suffix; None without a prefix, or
    in a sink (nothing to send). ConfigError on the rabbit binder."""
    prefix = properties.get(TRANSACTION_ID_PREFIX)
    if prefix is None or not prefix.strip():  # as Spring's binder: an empty prefix turns transactions off
        return None
    if not hasattr(client, "transactional"):
        raise ConfigError(f"Property '{TRANSACTION_ID_PREFIX.name}' is the Kafka binder's: the rabbit binder has no "
                          "Kafka transactions; remove it, or use the Kafka binder")
    if not outputs:
        log.info("'%s' is set, but a sink sends nothing: it commits its offsets as without transactions",
                 TRANSACTION_ID_PREFIX.name)
        return None
    trees = [f"spring.cloud.stream.kafka.bindings.{name}.producer" for name in outputs]
    ignored = sorted(f"{tree}.{key}" for tree in trees for key in properties.subtree(tree))
    if ignored:  # as Spring's binder: its transactional producer factory serves every binding
        log.warning("Transactions: the bindings' own Kafka producer properties are ignored (%s); the transactional "
                    "producer takes spring.cloud.stream.kafka.binder.transaction.producer.*", ", ".join(ignored))
    return prefix.strip() + suffix(properties)


def suffix(properties: Properties) -> str:
    """Unique to this instance, and the same when it starts again (so that it fences its own last life and aborts
    the transaction that life left open): the instance index where the platform sets it (Data Flow's local
    deployer, and partitioned apps on Kubernetes), else the host name: a pod's own, which its restarted
    container keeps (an instance count is no help: Kubernetes gives a Deployment's pods no index)."""
    if properties.raw(INSTANCE_INDEX.name, *INSTANCE_INDEX.aliases) is not None:
        return str(properties.get(INSTANCE_INDEX))
    return os.environ.get("HOSTNAME") or socket.gethostname()


def producer(client: Any, transactional_id: str | None, source: InputBinding | None) -> Any:
    """The app's transactional producer, for every output and the dead letters (None without an id)."""
    if transactional_id is None:
        return None
    made = client.transactional(transactional_id, source if source is not None and source.dlq else None)
    log.info("Transactions: a batch's sends and offsets commit together, transactional.id '%s'", transactional_id)
    return made


class Transactions(Settlement):
    """The settlement of a transactional app: its batches committed or aborted whole (see the module's text)."""

    def __init__(self, producer: TransactionalProducer, attempts: dict[tuple[str, int, int], tuple[Any, ...]],
                 client: Any, consumer: Any, producers: Mapping[str, Any], source: InputBinding, metrics: Metrics,
                 stalls: Stalls, shutdown: Shutdown, budget: float) -> None:
        super().__init__(client, consumer, producers, source, metrics, stalls, shutdown, budget)
        self.producer = producer
        self.flushed = {"transaction": producer}  # every output and the dead letters share it: flushed once
        self.attempts = attempts  # the loop's: a record's attempts, and a mark on one given up when read again
        self.inline = source.batch_mode  # a record given up is dead-lettered in its batch's transaction
        self.rollback: RollbackError | None = None
        self.recovering: RecoverError | None = None
        self.copies = 0  # dead-letter copies of the batch's transaction (batch mode)
        self.pending: dict[TP, list[Delivery]] = {}  # the batch's sends, read once its offsets are in
        self.runs: Any = None
        self.until = 0.0

    def give_up(self, record: Any, error: Exception, attempts: int | None = None, counted: bool = False) -> Delivery:
        """With a DLQ, the record ends its batch (RecoverError); without, it is skipped in it."""
        if self.source.dlq and not self.inline:
            raise RecoverError(record, error, self.source.max_attempts if attempts is None else attempts, counted)
        return super().give_up(record, error, attempts, counted)

    def complete(self, pending: dict[TP, list[Delivery]], until: float, runs: Any = None) -> tuple[
            dict[TP, list[Delivery]], dict[TP, tuple[int, Exception]]]:
        """Kept for ``advance``: the batch's sends are read after its offsets went to the transaction (their round
        trips overlap the sends still on their way)."""
        self.pending, self.runs, self.until = pending, runs, until
        return {}, {}

    def advance(self, batch: Mapping[TP, list[Any]], held: dict[TP, list[Delivery]],
                rewinds: dict[TP, tuple[int, Exception | None]]) -> None:
        """Commit the batch's transaction with its offsets (up to a record that ended it), or abort it."""
        refused = {tp: error for tp, (_, error) in rewinds.items() if error is not None}
        rollback, self.rollback, recovering, self.recovering = self.rollback, None, self.recovering, None
        ends = {tp: rewinds.get(tp, (records[-1].offset + 1, None))[0] for tp, records in batch.items()}
        offsets = {tp: end for tp, end in ends.items() if end > batch[tp][0].offset}
        if rollback is None and not refused and self.producer.open:
            try:
                self.producer.send_offsets(offsets, self.consumer, self.seconds())
                refused = self._failures()
                if not refused:
                    self.producer.commit(self.seconds())
                    self.metrics.dead_lettered.inc(self.copies)
            except AbortError as why:
                log.warning("The batch's transaction did not commit (%s): aborting it", why)
                rollback = why
        elif rollback is None and not refused:
            self.commit(offsets)  # nothing sent: the offsets alone, with the consumer
        if rollback is not None or refused:
            if recovering is not None:  # given up when read again: its copy goes after what comes before it
                self.attempts[_key(recovering.record)] = (recovering.attempts, 0.0, recovering.error)
            self._roll_back(batch, refused, rollback)
            return
        for tp, end in ends.items():
            if end <= batch[tp][-1].offset:
                self.consumer.seek(tp, end)
            self.stalls.moved(tp)
        if recovering is not None:
            self._recover(recovering)

    def _failures(self) -> dict[TP, Exception]:
        """Flush; the partitions with a failed send. A send failed for the record's sake marks it given up
        (dead-lettered when read again); nothing is sent again in this transaction, which will abort."""
        flush(self.flushed, self.until, self.shutdown)
        self.copies = 0
        if self.producer.settled() and not self.irregular:
            return {}
        self.irregular, failed = False, {}
        made, pending = deliveries(self.runs) if self.runs else {}, self.pending
        for tp in {**made, **pending}:
            for sent in [*made.get(tp, ()), *pending.get(tp, ())]:
                error = sent.failure(self.client.outcome)
                if error is None:
                    self.copies += sent.cause is not None
                    continue
                if sent.cause is not None or self.client.about_the_record(error):
                    self.attempts[_key(sent.record)] = (self.source.max_attempts, 0.0, sent.cause or error)
                failed[tp] = error
                break
        return failed

    def _roll_back(self, batch: Mapping[TP, list[Any]], refused: dict[TP, Exception],
                   rollback: Exception | None = None) -> None:
        """Abort (sends refused: start the producer again); every partition of the batch back to its committed
        offset (its first record here). A send refused because another producer took the id: FatalError."""
        if fenced := next((error for error in refused.values() if self.client.fenced(error)), None):
            raise FatalError(f"transactional producer '{self.producer.transactional_id}' fenced: another instance "
                             f"took its transactional.id ({describe(fenced)})")
        if self.producer.open:
            self.producer.abort(self.seconds(ABORT_SECONDS), renew=bool(refused))
        if isinstance(rollback, RollbackError):
            log.info("Record %s failed (%s): the batch's transaction is aborted; its records come again",
                     where(rollback.record), describe(rollback.error))
        for tp, records in batch.items():
            self.consumer.seek(tp, records[0].offset)
        for tp, error in refused.items():
            log.error("Sending records from %s-%d failed (%s): the batch's transaction is aborted; retrying from "
                      "offset %d", *tp, describe(error), batch[tp][0].offset)
            self.stalls.stall(tp, batch[tp][0].offset, f"sends refused ({describe(error)})", self.budget)

    def _recover(self, failed: RecoverError) -> None:
        """The record that ended the batch: its dead-letter copy and offset in a transaction of their own; a copy
        refused for its size goes again with only its stack trace's last line. Refused: its partition waits."""
        record, tp = failed.record, (failed.record.topic, failed.record.partition)
        copy = super().give_up(record, failed.error, failed.attempts, failed.counted)
        while True:
            flush(self.flushed, time.monotonic() + self.budget, self.shutdown)
            error = copy.failure(self.client.outcome)
            if error is None:
                try:
                    self.producer.send_offsets({tp: record.offset + 1} if self.source.commit_recovered else {},
                                               self.consumer, self.seconds())
                    self.producer.commit(self.seconds())
                except AbortError as why:
                    error = why
                else:
                    self.metrics.dead_lettered.inc()
                    self.consumer.seek(tp, record.offset + 1)
                    return
            if self.client.fenced(error):
                raise FatalError(f"transactional producer '{self.producer.transactional_id}' fenced: another "
                                 f"instance took its transactional.id ({describe(error)})")
            if self.producer.open:
                self.producer.abort(self.seconds(ABORT_SECONDS), renew=not isinstance(error, AbortError))
            if not self.client.too_large(error) or copy.trace == 0:
                break
            copy = self.dead_letter(record, failed.error, 0)
        log.error("Record %s could not be sent to dead-letter topic '%s' (%s): its partition waits until it can",
                  where(record), self.source.dlq_topic(record.topic), describe(error))
        self.attempts[_key(record)] = (failed.attempts, 0.0, failed.error)
        self.stalls.stall(tp, record.offset, f"dead-letter copy refused ({describe(error)})", self.budget)

    def seconds(self, longest: float = TRANSACTION_SECONDS) -> float:
        return seconds(self.shutdown, longest)


def seconds(shutdown: Shutdown, longest: float = TRANSACTION_SECONDS) -> float:
    """How long a commit or abort may wait: ``longest``; after SIGTERM, what is left of the drain's budget."""
    if shutdown.stop.is_set():
        return max(0.5, min(longest, shutdown.deadline - time.monotonic()))
    return longest


def _key(record: Any) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset
