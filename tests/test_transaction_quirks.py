"""What the test broker and the clients do with transactions where they differ from Apache Kafka and its Java
client, pinned so that exactly-once tests know it (and learn when a newer Tansu or client mends it): offsets alone,
fencing, epoch bumps, a record lost in a committed transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import confluent_kafka
import pytest
from kafka import KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError, ProducerFencedError
from kafka.protocol.producer import EndTxnRequest, EndTxnResponse, InitProducerIdRequest, InitProducerIdResponse

from conftest import Kafka
from devkit.committed_reader import Connection, read_logs
from devkit.kafka_proxy import KafkaProxy
from devkit.tansu import Tansu
from devkit.waiting import wait_for

UNKNOWN_SERVER_ERROR, UNKNOWN_PRODUCER_ID = -1, 59


class Transactional:
    """A transactional producer on either client, as the tests need it: records, offsets, commit."""

    def __init__(self, client: str, bootstrap: str, transactional_id: str) -> None:
        self.client, self.bootstrap = client, bootstrap
        self.fenced = False  # librdkafka's close() would abort: retried for ever in a transaction, else refused
        self.group_consumers: list[Any] = []
        if client == "librdkafka":
            self.producer: Any = confluent_kafka.Producer({"bootstrap.servers": bootstrap,
                                                           "transactional.id": transactional_id})
            self.producer.init_transactions(30)
        else:
            self.producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id,
                                          max_block_ms=30000)
            self.producer.init_transactions()

    def send(self, topic: str, value: bytes) -> None:
        if self.client == "librdkafka":
            self.producer.produce(topic, value)
            assert self.producer.flush(30) == 0
        else:
            self.producer.send(topic, value).get(30)

    def offsets(self, group: str, topic: str, offset: int) -> None:
        """The group's offset of partition 0 in the transaction (the group's metadata without a member: no join)."""
        if self.client == "librdkafka":
            consumer = confluent_kafka.Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
            self.group_consumers.append(consumer)
            self.producer.send_offsets_to_transaction([confluent_kafka.TopicPartition(topic, 0, offset)],
                                                      consumer.consumer_group_metadata(), 30)
        else:
            self.producer.send_offsets_to_transaction({TopicPartition(topic, 0): OffsetAndMetadata(offset, "", -1)},
                                                      group)

    def commit(self) -> None:
        if self.client == "librdkafka":
            self.producer.commit_transaction(30)
        else:
            self.producer.commit_transaction()

    def close(self) -> None:
        for consumer in self.group_consumers:
            consumer.close()
        if self.client == "kafka-python":
            self.producer.close(10)
        elif self.fenced:  # dropped: librdkafka's destroy ends its threads without an abort
            del self.producer
        else:
            self.producer.close()


@pytest.fixture
def transactional(broker: Tansu) -> Iterator[Callable[[str, str], Transactional]]:
    made: list[Transactional] = []

    def make(client: str, transactional_id: str) -> Transactional:
        made.append(Transactional(client, broker.bootstrap, transactional_id))
        return made[-1]

    yield make
    for producer in made:
        producer.close()


def test_a_transaction_of_offsets_alone_commits_them_only_as_the_producers_first(
        kafka: Kafka, names: Callable[[str], str], client: str,
        transactional: Callable[[str, str], Transactional]) -> None:
    """A batch with nothing to send (a sink, a filter that drops it all) commits its offsets alone: on Tansu that
    works in the producer's first transaction only; later ones answer EndTxn without error and write nothing."""
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    producer = transactional(client, names("tx"))
    for offset, record in ((2, False), (4, False), (5, True), (6, False)):
        producer.producer.begin_transaction()
        if record:
            producer.send(sink, b"out")
        producer.offsets(group, source, offset)
        producer.commit()
        expected = {2: 2, 4: 2, 5: 5, 6: 5}[offset]  # Apache Kafka: the offset each time
        assert kafka.committed(group) == {0: expected}, offset


def fenced_in_a_transaction(first: Transactional, topic: str) -> None:
    """The first producer's next record, once a second took its id while its transaction was open."""
    if first.client == "kafka-python":  # fatal at once
        with pytest.raises(ProducerFencedError):
            first.send(topic, b"late")
        with pytest.raises(KafkaError, match="ProducerFenced"):
            first.commit()
        return
    # librdkafka takes PRODUCER_FENCED on a record as an abortable error; Tansu answers the abort's EndTxn, of a
    # stale epoch, by closing the connection (Apache Kafka: PRODUCER_FENCED), so librdkafka retries it for ever
    first.fenced = True
    reports: list[Any] = []
    first.producer.produce(topic, b"late", on_delivery=lambda error, _: reports.append(error))
    first.producer.flush(30)
    assert [error.code() for error in reports] == [confluent_kafka.KafkaError.PRODUCER_FENCED]
    with pytest.raises(confluent_kafka.KafkaException) as raised:
        first.commit()
    assert raised.value.args[0].txn_requires_abort()
    with pytest.raises(confluent_kafka.KafkaException) as raised:
        first.producer.abort_transaction(2)
    assert raised.value.args[0].code() == confluent_kafka.KafkaError._TIMED_OUT
    assert raised.value.args[0].retriable()


def test_a_second_producer_of_the_id_aborts_the_open_transaction_and_fences_the_first(
        kafka: Kafka, names: Callable[[str], str], client: str,
        transactional: Callable[[str, str], Transactional]) -> None:
    topic, idle, tx = kafka.create(names("t")), kafka.create(names("idle")), names("tx")
    first = transactional(client, tx)
    first.producer.begin_transaction()
    first.send(topic, b"zombie")
    second = transactional(client, tx)
    assert [r.value for r in read_logs(kafka.bootstrap, topic)[0].aborted] == [b"zombie"]
    fenced_in_a_transaction(first, topic)
    second.producer.begin_transaction()
    second.send(idle, b"next")
    second.commit()
    transactional(client, tx)  # fences the second while it has no transaction open: its next one fails fatally
    second.producer.begin_transaction()
    if client == "librdkafka":
        second.fenced = True
        second.producer.produce(idle, b"fenced")
        with pytest.raises(confluent_kafka.KafkaException) as raised:
            second.commit()
        assert raised.value.args[0].code() == confluent_kafka.KafkaError._FENCED
        assert raised.value.args[0].fatal()
    else:
        with pytest.raises(ProducerFencedError):
            second.send(idle, b"fenced")
    assert [r.value for r in read_logs(kafka.bootstrap, idle)[0].visible()] == [b"next"]


def test_tansu_refuses_an_epoch_bump_and_drops_a_stale_end_txn(broker: Tansu, names: Callable[[str], str]) -> None:
    """KIP-360's bump (InitProducerId with the producer's id and epoch) is answered UNKNOWN_SERVER_ERROR, for a
    transactional id or none (Apache Kafka: the same id, the epoch plus one); an EndTxn of a fenced epoch closes
    the connection (Apache Kafka: PRODUCER_FENCED). A fresh InitProducerId bumps the epoch, and fences."""
    tx = names("tx")

    def init(connection: Connection, transactional_id: str | None, producer: int = -1, epoch: int = -1) -> Any:
        request = InitProducerIdRequest(transactional_id=transactional_id, transaction_timeout_ms=60000,
                                        producer_id=producer, producer_epoch=epoch)
        return connection.ask(request, InitProducerIdResponse, 4)

    connection = Connection("127.0.0.1", broker.port)
    try:
        first = init(connection, tx)
        assert (first.error_code, first.producer_epoch) == (0, 0)
        for transactional_id, given in ((tx, first), (None, init(connection, None))):
            refused = init(connection, transactional_id, given.producer_id, given.producer_epoch)
            assert (refused.error_code, refused.producer_id) == (UNKNOWN_SERVER_ERROR, -1)
        again = init(connection, tx)
        assert (again.error_code, again.producer_id, again.producer_epoch) == (0, first.producer_id, 1)
        stale = EndTxnRequest(transactional_id=tx, producer_id=first.producer_id, producer_epoch=0, committed=False)
        with pytest.raises(ConnectionError):
            connection.ask(stale, EndTxnResponse, 3)
    finally:
        connection.close()


def refusal(producer: Transactional) -> str:
    """What kafka-python says when asked for a transaction (while it bumps the epoch: an invalid transition)."""
    try:
        producer.producer.begin_transaction()
    except KafkaError as error:
        return str(error)
    raise AssertionError("a transaction began")


def test_a_refused_epoch_bump_leaves_each_client_stuck(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], client: str) -> None:
    """UNKNOWN_PRODUCER_ID on a record of a transaction asks for KIP-360's epoch bump, which Tansu refuses.
    librdkafka aborts (the marker is written), then retries the bump for ever: the abort times out, retriable, and
    close() would hang. kafka-python bumps at once, before any abort, and turns fatal: its transaction stays open
    (Tansu never times it out) until a new producer of the id takes over."""
    kafka, proxy = proxied
    topic, refused, tx = kafka.create(names("t")), kafka.create(names("refused")), names("tx")
    producer = Transactional(client, kafka.bootstrap, tx)
    try:
        producer.producer.begin_transaction()
        producer.send(topic, b"before")
        proxy.refuse(refused, UNKNOWN_PRODUCER_ID)
        if client == "librdkafka":
            producer.fenced = True
            producer.producer.produce(refused, b"refused")
            producer.producer.flush(30)
            with pytest.raises(confluent_kafka.KafkaException) as raised:
                producer.commit()
            assert raised.value.args[0].txn_requires_abort()
            with pytest.raises(confluent_kafka.KafkaException) as raised:
                producer.producer.abort_transaction(2)
            assert raised.value.args[0].retriable()
            assert [r.value for r in read_logs(kafka.bootstrap, topic)[0].aborted] == [b"before"]
        else:
            with pytest.raises(KafkaError):
                producer.send(refused, b"refused")
            wait_for(lambda: "InitProducerIdResponse" in refusal(producer), 30, "the refused bump")
            assert read_logs(kafka.bootstrap, topic)[0].open_count == 1
            successor = Transactional(client, kafka.bootstrap, tx)
            assert [r.value for r in read_logs(kafka.bootstrap, topic)[0].aborted] == [b"before"]
            successor.close()
    finally:
        producer.close()


@pytest.mark.one_client
def test_kafka_python_commits_a_transaction_one_of_whose_records_expired(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str]) -> None:
    """kafka-python 3.0.12 fails an expired batch without making the transaction abortable (the Java client does,
    KAFKA-5385; librdkafka too), so the commit goes through without it: a step must check every send before it
    commits."""
    kafka, proxy = proxied
    topic, held = kafka.create(names("t")), kafka.create(names("held"))
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=names("tx"), max_block_ms=30000,
                             request_timeout_ms=1000, delivery_timeout_ms=1500, linger_ms=0)
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, b"kept").get(30)
        proxy.hold(held)
        with pytest.raises(KafkaTimeoutError):
            producer.send(held, b"lost").get(30)
        producer.commit_transaction()
        assert [r.value for r in read_logs(kafka.bootstrap, topic)[0].visible()] == [b"kept"]
        assert read_logs(kafka.bootstrap, held)[0].high_watermark == 0
    finally:
        producer.close(10)


@pytest.mark.one_client
def test_offsets_of_a_member_the_group_has_left_behind_are_committed(
        kafka: Kafka, names: Callable[[str], str], transactional: Callable[[str, str], Transactional]) -> None:
    """KIP-447 fences a zombie by its group metadata: Apache Kafka refuses a TxnOffsetCommit of an old generation
    (ILLEGAL_GENERATION). Tansu takes it: a processor the group has replaced can still move the group's offsets."""
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    kafka.produce(source, [b"a"])

    def member() -> Any:
        consumer = confluent_kafka.Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group,
                                             "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                             "session.timeout.ms": 6000, "heartbeat.interval.ms": 2000})
        consumer.subscribe([source])
        wait_for(lambda: (consumer.poll(0.2), consumer.assignment())[1], 30, "a group join")
        return consumer

    zombie = member()
    stale = zombie.consumer_group_metadata()
    zombie.close()
    successor = member()
    try:
        producer = transactional("librdkafka", names("tx"))
        producer.producer.begin_transaction()
        producer.send(sink, b"out")
        producer.producer.send_offsets_to_transaction([confluent_kafka.TopicPartition(source, 0, 1)], stale, 30)
        producer.commit()
        assert kafka.committed(group) == {0: 1}
    finally:
        successor.close()
