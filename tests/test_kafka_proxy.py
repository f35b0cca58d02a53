"""The test proxy itself (devkit/kafka_proxy.py): a refusal holds for its topic (or marked batch) alone, even
when a client sends the batches of several topics in one produce request, as a broker answers each on its own."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError, TopicAuthorizationFailedError

from conftest import Kafka
from devkit.kafka_proxy import KafkaProxy


def test_a_refused_topic_beside_an_allowed_one_in_one_request(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str]) -> None:
    kafka, proxy = proxied
    allowed, refused = kafka.create(names("allowed")), kafka.create(names("refused"))
    proxy.refuse(refused, TopicAuthorizationFailedError.errno)
    # A long linger puts both topics' batches in one request (kafka-python drains a broker's ready batches together).
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=False, acks="all",
                             linger_ms=300, retries=0)
    try:
        futures = [producer.send(topic, value) for topic, value in ((allowed, b"in"), (refused, b"out"))]
        producer.flush(30)
    finally:
        producer.close(5)
    assert futures[0].get(timeout=1).offset == 0
    with pytest.raises(TopicAuthorizationFailedError):
        futures[1].get(timeout=1)
    assert (proxy.refused, proxy.split) == (1, 1)
    assert [record.value for record in kafka.read(allowed, 1, 10)] == [b"in"]


def test_a_marked_refusal_holds_for_the_batches_that_carry_the_marker(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str]) -> None:
    """One request: the marked topic's batch with the marker (refused), its other partition's without it, and
    another topic's batch with the marker: only the first is refused."""
    kafka, proxy = proxied
    out, other = kafka.create(names("out"), 2), kafka.create(names("other"))
    proxy.refuse_marked(b"MARKED", out, MessageSizeTooLargeError.errno)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=False, acks="all",
                             linger_ms=300, retries=0)
    try:
        futures = [producer.send(topic, value, partition=partition) for topic, partition, value in (
            (out, 0, b"MARKED here"), (out, 1, b"plain"), (other, 0, b"MARKED copy"))]
        producer.flush(30)
    finally:
        producer.close(5)
    with pytest.raises(MessageSizeTooLargeError):
        futures[0].get(timeout=1)
    assert [future.get(timeout=1).offset for future in futures[1:]] == [0, 0]
    assert (proxy.refused, proxy.split) == (1, 1)
