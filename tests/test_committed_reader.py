"""devkit/committed_reader.py on the real broker: transactional producers of both clients, the reader's view
against what Tansu hands a consumer (aborted records included: Tansu returns no aborted transactions)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.record import MemoryRecords
from kafka.record.legacy_records import LegacyRecordBatchBuilder

from conftest import Kafka
from devkit.committed_reader import PartitionLog, read_committed, read_logs
from devkit.tansu import Tansu
from devkit.waiting import wait_for

MakeProducer = Callable[..., Producer]


@pytest.fixture
def producers(broker: Tansu) -> Iterator[MakeProducer]:
    """confluent-kafka producers, transactional when given an id (transactions initialised); each closed at the end
    (close aborts a transaction still open)."""
    made: list[Producer] = []

    def make(transactional_id: str | None = None, **more: Any) -> Producer:
        settings = {"bootstrap.servers": broker.bootstrap, "linger.ms": 0, **more}
        settings |= {"transactional.id": transactional_id} if transactional_id else {"enable.idempotence": False}
        producer = Producer(settings)
        made.append(producer)
        if transactional_id:
            producer.init_transactions(30)
        return producer

    yield make
    for producer in made:
        producer.close()


def written(producer: Producer) -> None:
    """Every record produced so far is in the log (a transaction's records too, before its end)."""
    assert producer.flush(30) == 0


def values(records: list[Any]) -> list[bytes]:
    return [record.value for record in records]


def consumed(bootstrap: str, topic: str, count: int, isolation: str, timeout: float = 30) -> list[Any]:
    """What a kafka-python consumer (no group) reads from the beginning, until ``count`` records came."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             isolation_level=isolation)
    try:
        partitions = wait_for(lambda: consumer.partitions_for_topic(topic), 30, f"topic {topic}")
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def transaction(producer: Producer, topic: str, payloads: list[bytes], commit: bool = True,
                **produce: Any) -> None:
    producer.begin_transaction()
    for payload in payloads:
        producer.produce(topic, payload, **produce)
    if commit:
        producer.commit_transaction(30)
    else:
        written(producer)
        producer.abort_transaction(30)


def test_committed_records_are_visible_once_in_offset_order_the_markers_not_at_all(
        kafka: Kafka, names: Callable[[str], str], producers: MakeProducer) -> None:
    topic = kafka.create(names("t"))
    producer = producers(names("tx"))
    transaction(producer, topic, [b"a", b"b"], key=b"k", headers=[("h", b"v")])
    transaction(producer, topic, [b"c"])
    records = read_committed(kafka.bootstrap, topic, 3)
    assert values(records) == [b"a", b"b", b"c"]
    assert [r.offset for r in records] == [0, 1, 3]  # the commit marker of the first transaction took offset 2
    first, last = records[0], records[2]
    assert (first.key, first.headers, first.partition, first.topic) == (b"k", [("h", b"v")], 0, topic)
    assert (last.key, last.headers) == (None, [])
    assert values(read_committed(kafka.bootstrap, topic)) == [b"a", b"b", b"c"]  # read again: the same
    logs = read_logs(kafka.bootstrap, topic)
    assert (logs[0].high_watermark, logs[0].last_stable_offset, logs[0].open, logs[0].aborted) == (5, 5, {}, [])


def test_aborted_records_are_dropped_though_tansu_hands_them_to_read_committed_consumers(
        kafka: Kafka, names: Callable[[str], str], producers: MakeProducer) -> None:
    """The reason for the reader: Tansu's fetch names no aborted transactions, so a consumer sees the aborted
    records (read_committed too, once the abort is written); Apache Kafka's read_committed consumer would not."""
    topic = kafka.create(names("t"))
    producer = producers(names("tx"))
    transaction(producer, topic, [b"kept"])
    transaction(producer, topic, [b"dropped-1", b"dropped-2"], commit=False)
    transaction(producer, topic, [b"kept-too"])
    assert values(read_committed(kafka.bootstrap, topic, 2)) == [b"kept", b"kept-too"]
    assert [r.value for r in read_logs(kafka.bootstrap, topic)[0].aborted] == [b"dropped-1", b"dropped-2"]
    everything = [b"kept", b"dropped-1", b"dropped-2", b"kept-too"]
    assert values(kafka.read(topic, 4)) == everything
    # Tansu's quirk (a fixed Tansu fails this line: the reader is then no longer needed)
    assert values(consumed(kafka.bootstrap, topic, 4, "read_committed")) == everything


def test_an_open_transaction_is_not_visible_nor_what_follows_it_up_to_the_stable_offset(
        kafka: Kafka, names: Callable[[str], str], producers: MakeProducer) -> None:
    topic = kafka.create(names("t"))
    producer, plain = producers(names("tx")), producers()
    transaction(producer, topic, [b"before"])
    producer.begin_transaction()
    producer.produce(topic, b"open")
    written(producer)
    plain.produce(topic, b"after")
    written(plain)
    assert values(read_committed(kafka.bootstrap, topic)) == [b"before"]  # Java's consumer stops at the LSO
    assert values(read_committed(kafka.bootstrap, topic, upto="high_watermark")) == [b"before", b"after"]
    log = read_logs(kafka.bootstrap, topic)[0]
    assert (log.last_stable_offset, log.high_watermark, log.open_count) == (2, 4, 1)
    assert values(kafka.read(topic, 3)) == [b"before", b"open", b"after"]  # read_uncommitted sees it at once
    producer.commit_transaction(30)
    assert values(read_committed(kafka.bootstrap, topic, 3)) == [b"before", b"open", b"after"]


def test_interleaved_transactions_of_two_producers_on_one_partition(
        kafka: Kafka, names: Callable[[str], str], producers: MakeProducer) -> None:
    topic = kafka.create(names("t"))
    first, second = producers(names("tx1")), producers(names("tx2"))
    first.begin_transaction()
    second.begin_transaction()
    for producer, payload in ((first, b"x1"), (second, b"y1"), (first, b"x2"), (second, b"y2")):
        producer.produce(topic, payload)
        written(producer)  # one batch each, in this order in the log
    first.commit_transaction(30)
    # the second's transaction holds the stable offset at y1: x2 waits behind it, as on Apache Kafka
    assert values(read_committed(kafka.bootstrap, topic, 1)) == [b"x1"]
    log = read_logs(kafka.bootstrap, topic)[0]
    # Tansu's stable offset stays at the start of the first of overlapping transactions until none is open
    assert (log.stable_offset, log.last_stable_offset) == (1, 0)
    assert values(read_committed(kafka.bootstrap, topic, upto="high_watermark")) == [b"x1", b"x2"]
    second.abort_transaction(30)
    assert values(read_committed(kafka.bootstrap, topic, 2)) == [b"x1", b"x2"]
    transaction(second, topic, [b"y3"])
    transaction(first, topic, [b"x3"], commit=False)
    records = read_committed(kafka.bootstrap, topic, 3)
    assert values(records) == [b"x1", b"x2", b"y3"]
    assert [r.offset for r in records] == [0, 2, 6]


def test_non_transactional_records_between_transactional_ones(
        kafka: Kafka, names: Callable[[str], str], producers: MakeProducer) -> None:
    topic = kafka.create(names("t"))
    producer, plain = producers(names("tx")), producers()
    producer.begin_transaction()
    for payload, by in ((b"t1", producer), (b"n1", plain), (b"t2", producer), (b"n2", plain)):
        by.produce(topic, payload)
        written(by)
    producer.abort_transaction(30)
    assert values(read_committed(kafka.bootstrap, topic, 2)) == [b"n1", b"n2"]
    producer.begin_transaction()
    for payload, by in ((b"t3", producer), (b"n3", plain), (b"t4", producer)):
        by.produce(topic, payload)
        written(by)
    producer.commit_transaction(30)
    plain.produce(topic, b"n4")
    written(plain)
    assert values(read_committed(kafka.bootstrap, topic, 6)) == [b"n1", b"n2", b"t3", b"n3", b"t4", b"n4"]


def test_several_partitions_each_in_offset_order(
        kafka: Kafka, names: Callable[[str], str], producers: MakeProducer) -> None:
    topic = kafka.create(names("t"), partitions=3)
    producer = producers(names("tx"))
    producer.begin_transaction()
    for i in range(6):
        producer.produce(topic, f"c{i}".encode(), partition=i % 3)
    producer.commit_transaction(30)
    transaction(producer, topic, [b"aborted"], commit=False, partition=1)
    producer.begin_transaction()
    producer.produce(topic, b"open", partition=2)
    written(producer)
    records = read_committed(kafka.bootstrap, topic, 6)
    assert [(r.partition, r.value) for r in records] == [
        (0, b"c0"), (0, b"c3"), (1, b"c1"), (1, b"c4"), (2, b"c2"), (2, b"c5")]
    logs = read_logs(kafka.bootstrap, topic)
    assert [(p, log.high_watermark, log.last_stable_offset, log.open_count, len(log.aborted))
            for p, log in logs.items()] == [(0, 3, 3, 0, 0), (1, 5, 5, 0, 1), (2, 4, 3, 1, 0)]
    producer.abort_transaction(30)


def test_a_kafka_python_transactional_producer(kafka: Kafka, names: Callable[[str], str]) -> None:
    topic = kafka.create(names("t"))
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=names("tx"))
    try:
        producer.init_transactions()
        for payloads, commit in (([b"a", b"b"], True), ([b"gone"], False), ([b"c"], True)):
            producer.begin_transaction()
            for payload in payloads:
                producer.send(topic, payload, headers=[("h", b"v")])
            producer.flush(30)
            producer.commit_transaction() if commit else producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic, b"open")
        producer.flush(30)
        records = read_committed(kafka.bootstrap, topic, 3)
        assert values(records) == [b"a", b"b", b"c"]
        assert all(r.headers == [("h", b"v")] for r in records)
        assert read_logs(kafka.bootstrap, topic)[0].open_count == 1
        producer.abort_transaction()
    finally:
        producer.close(10)


def test_waits_for_the_topic_and_returns_what_it_has_at_the_deadline(
        kafka: Kafka, names: Callable[[str], str], producers: MakeProducer) -> None:
    topic = kafka.create(names("t"))
    assert read_committed(kafka.bootstrap, topic) == []
    producer = producers(names("tx"))
    producer.begin_transaction()
    producer.produce(topic, b"open")
    written(producer)
    started = time.monotonic()
    assert read_committed(kafka.bootstrap, topic, 1, timeout=1) == []
    assert time.monotonic() - started < 10
    with pytest.raises(TimeoutError, match="topic"):
        read_logs(kafka.bootstrap, names("missing"), timeout=1)


def test_compressed_transactional_batches(kafka: Kafka, names: Callable[[str], str],
                                          producers: MakeProducer) -> None:
    topic = kafka.create(names("t"))
    producer = producers(names("tx"), **{"compression.type": "gzip", "linger.ms": 50})
    transaction(producer, topic, [b"x" * 100] * 5)
    transaction(producer, topic, [b"y" * 100] * 5, commit=False)
    log = wait_for(lambda: (found := read_logs(kafka.bootstrap, topic)[0]).aborted and found, 30, "the abort")
    assert [r.offset for r in log.visible()] == [0, 1, 2, 3, 4]
    assert len(log.aborted) == 5


def test_records_of_the_old_formats_have_no_transactions() -> None:
    """No broker writes them here: message formats v0 and v1, built by kafka-python, placed by the reader's log."""
    for magic in (0, 1):
        builder = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 16)
        for offset in range(3):
            builder.append(offset, timestamp=1000 if magic else None, key=b"k", value=f"v{offset}".encode())
        records = MemoryRecords(bytes(builder.build()))
        log = PartitionLog("t", 0, high_watermark=3, last_stable_offset=3, next_offset=1)
        while (batch := records.next_batch()) is not None:
            log.add(batch)
        assert [(r.offset, r.value) for r in log.visible()] == [(1, b"v1"), (2, b"v2")]  # from next_offset on
        assert (log.next_offset, log.open, log.stable_offset) == (3, {}, 3)
