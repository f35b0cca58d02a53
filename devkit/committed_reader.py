"""What a read_committed consumer sees on Apache Kafka, read off a broker that does not filter aborted records.

Tansu hides an open transaction from a read_committed fetch (its last stable offset holds) but returns no
``aborted_transactions``, so a consumer sees an aborted transaction's records once its abort is written. This
reader fetches the raw record batches (READ_UNCOMMITTED) and applies the transaction markers itself, as Java's
consumer does with the aborted list: a transactional batch's records are held per producer id until a control
batch of that producer id, a COMMIT releases them, an ABORT drops them; what is still held at the end belongs to
an open transaction and is not visible, nor is what follows the first offset of the earliest open transaction
(Apache Kafka's last stable offset, computed here: Tansu's lags behind it when transactions overlap). Requests go
over a socket of its own, encoded by kafka-python's protocol classes (Metadata v9, Fetch v12); no consumer, no
group.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from kafka.errors import for_code
from kafka.protocol.consumer import FetchRequest, FetchResponse
from kafka.protocol.metadata import MetadataRequest, MetadataResponse
from kafka.record import MemoryRecords

from .waiting import wait_for

Upto = Literal["stable", "high_watermark"]
ABORT, COMMIT = 0, 1  # a control record's type (its key: version, type)
METADATA_VERSION, FETCH_VERSION = 9, 12  # names, not topic ids (Fetch v13 on); both flexible
PARTITION_BYTES = 1 << 20
FETCH_WAIT_MS = 100  # Tansu answers a fetch that may not wait (0 ms) with no partitions at all
UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION, while a topic is being created
_FetchTopic = FetchRequest.FetchTopic


@dataclass(frozen=True)
class CommittedRecord:
    """A record as a consumer returns it (the attribute names of kafka-python's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass
class PartitionLog:
    """One partition's batches from its start to ``high_watermark``, each record placed by the markers after it.

    ``decided``: non-transactional and committed records; ``open``: records of a transaction with no marker yet,
    by producer id; ``aborted``: records an ABORT dropped. ``last_stable_offset`` is the broker's, from the same
    fetch response as ``high_watermark`` (``stable_offset`` is Apache Kafka's).
    """

    topic: str
    partition: int
    high_watermark: int = -1
    last_stable_offset: int = -1
    next_offset: int = 0
    decided: list[CommittedRecord] = field(default_factory=list)
    open: dict[int, list[CommittedRecord]] = field(default_factory=dict)
    aborted: list[CommittedRecord] = field(default_factory=list)

    def add(self, batch: Any) -> None:
        """Place one record batch (kafka-python's ``DefaultRecordBatch`` or a legacy one), in offset order; a batch
        read before (a fetch answers from the start of the batch holding its offset) is passed over."""
        if batch.magic < 2:  # the old formats: no producer ids, no transactions
            records = self._records(batch)
            self.decided.extend(records)
            self.next_offset = records[-1].offset + 1 if records else self.next_offset
            return
        if batch.next_offset <= self.next_offset:
            return
        if batch.is_control_batch:
            for control in batch:
                if control.type in (ABORT, COMMIT):
                    held = self.open.pop(batch.producer_id, [])
                    (self.decided if control.type == COMMIT else self.aborted).extend(held)
        elif batch.is_transactional:
            self.open.setdefault(batch.producer_id, []).extend(self._records(batch))
        else:
            self.decided.extend(self._records(batch))
        self.next_offset = batch.next_offset

    def _records(self, batch: Any) -> list[CommittedRecord]:
        return [CommittedRecord(self.topic, self.partition, record.offset, record.timestamp, record.key,
                                record.value, list(record.headers)) for record in batch
                if self.next_offset <= record.offset < self.high_watermark]

    @property
    def stable_offset(self) -> int:
        """Apache Kafka's last stable offset: the first offset of the earliest transaction still open, else the high
        watermark. Tansu's (``last_stable_offset``) can lag behind it: Tansu holds it at the start of the first of
        overlapping transactions until none is open, though that one has ended."""
        firsts = [records[0].offset for records in self.open.values() if records]
        return min([*firsts, self.high_watermark])

    def visible(self, upto: Upto = "stable") -> list[CommittedRecord]:
        """What a read_committed consumer reads, in offset order: up to the last stable offset as on Apache Kafka
        (``"stable"``), or every record decided up to the high watermark, past an open transaction's first offset
        too (``"high_watermark"``: what a dead producer's transaction, which Tansu never times out, would hide)."""
        bound = self.stable_offset if upto == "stable" else self.high_watermark
        return sorted((record for record in self.decided if record.offset < bound), key=lambda r: r.offset)

    @property
    def open_count(self) -> int:
        return sum(len(records) for records in self.open.values())


class Connection:
    """One connection to one broker: a request (a kafka-python protocol message) at a time, each answered before
    the next is sent."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.correlation = itertools.count(1)

    def ask(self, request: Any, response_class: Any, version: int) -> Any:
        correlation_id = next(self.correlation)
        request.with_header(correlation_id=correlation_id, client_id="devkit-committed-reader")
        self.sock.sendall(request.encode(version=version, header=True, framed=True))
        (size,) = struct.unpack(">i", self._receive(4))
        response = response_class.decode(self._receive(size), version=version, header=True)
        if response.header.correlation_id != correlation_id:
            raise RuntimeError(f"response {response.header.correlation_id} to request {correlation_id}")
        return response

    def _receive(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return bytes(data)

    def close(self) -> None:
        self.sock.close()


def _leaders(bootstrap: Any, topic: str) -> tuple[dict[int, tuple[str, int]], dict[int, int]] | None:
    """The brokers (node id -> address) and each partition's leader, or None while the topic is unknown."""
    request = MetadataRequest(topics=[MetadataRequest.MetadataRequestTopic(name=topic)],
                              allow_auto_topic_creation=False)
    response = bootstrap.ask(request, MetadataResponse, METADATA_VERSION)
    (found,) = response.topics
    if found.error_code == UNKNOWN_TOPIC or not found.partitions:
        return None
    if found.error_code:
        raise for_code(found.error_code)(f"metadata of {topic}")
    brokers = {broker.node_id: (broker.host, broker.port) for broker in response.brokers}
    return brokers, {p.partition_index: p.leader_id for p in found.partitions}


def _fetch(broker: Connection, log: PartitionLog) -> Any | None:
    """One READ_UNCOMMITTED fetch of the partition from ``log.next_offset``: its partition data, if any."""
    wanted = _FetchTopic.FetchPartition(partition=log.partition, fetch_offset=log.next_offset,
                                        partition_max_bytes=PARTITION_BYTES)
    request = FetchRequest(replica_id=-1, max_wait_ms=FETCH_WAIT_MS, min_bytes=1, max_bytes=PARTITION_BYTES,
                           isolation_level=0, session_id=0, session_epoch=-1,
                           topics=[_FetchTopic(topic=log.topic, partitions=[wanted])], forgotten_topics_data=[],
                           rack_id="")
    response = broker.ask(request, FetchResponse, FETCH_VERSION)
    found = [data for topic in response.responses for data in topic.partitions]
    if not found:
        return None
    (data,) = found
    if data.error_code:
        raise for_code(data.error_code)(f"fetch of {log.topic}[{log.partition}] at {log.next_offset}")
    return data


def read_partition(broker: Connection, topic: str, partition: int, deadline: float) -> PartitionLog:
    """The partition from offset 0 up to the high watermark of the first fetch (a snapshot: later records
    are left for the next read)."""
    log = PartitionLog(topic, partition)
    while log.high_watermark < 0 or log.next_offset < log.high_watermark:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic}[{partition}] read to {log.next_offset} of {log.high_watermark}")
        data = _fetch(broker, log)
        if data is None:  # an answer without the partition: asked again
            continue
        if log.high_watermark < 0:  # the first answer fixes the snapshot
            log.high_watermark, log.last_stable_offset = data.high_watermark, data.last_stable_offset
        records = MemoryRecords(bytes(data.records or b""))
        while (batch := records.next_batch()) is not None and batch.base_offset < log.high_watermark:
            log.add(batch)
    return log


def read_logs(bootstrap: str, topic: str, timeout: float = 30) -> dict[int, PartitionLog]:
    """Every partition of ``topic`` read to its high watermark, the markers applied (waits for the topic)."""
    deadline = time.monotonic() + timeout
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    first = Connection(host, int(port))
    brokers = {(host, int(port)): first}
    try:
        nodes, leaders = wait_for(lambda: _leaders(first, topic), timeout, f"topic {topic}")
        logs = {}
        for partition, leader in sorted(leaders.items()):
            address = nodes[leader]
            broker = brokers.get(address) or brokers.setdefault(address, Connection(*address))
            logs[partition] = read_partition(broker, topic, partition, deadline)
        return logs
    finally:
        for broker in brokers.values():
            broker.close()


def read_committed(bootstrap: str, topic: str, count: int = 0, timeout: float = 30,
                   upto: Upto = "stable") -> list[CommittedRecord]:
    """What a read_committed consumer of ``topic`` reads from the beginning (partition by partition, each in
    offset order), read again until at least ``count`` records are visible or ``timeout`` s passed; then the
    last read, as ``devkit.topics.read_topic`` returns what it has."""
    deadline = time.monotonic() + timeout
    while True:
        logs = read_logs(bootstrap, topic, max(1.0, deadline - time.monotonic()))
        records = [record for log in logs.values() for record in log.visible(upto)]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)  # between reads, as wait_for polls
