"""The librdkafka transport's settings and verdicts, and the choice of client (no broker needed)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from util import kafka_python, librdkafka, librdkafka_settings
from util.arguments import ConfigError, Properties
from util.bindings import resolve_input
from util.transport import open_client

CONFIG = "--spring.cloud.stream.kafka.binder.configuration"
BINDING = ["--spring.cloud.stream.bindings.input.destination=t", "--spring.cloud.stream.bindings.input.group=g"]


def test_java_keys_keep_their_names_or_are_translated_for_librdkafka(tmp_path: Path) -> None:
    ca, keystore = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    keystore.write_text("-----BEGIN CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\n")
    args = [*BINDING, f"{CONFIG}.max.poll.records=10",
            "--spring.cloud.stream.kafka.binder.consumerProperties.max.poll.records=20",
            "--spring.cloud.stream.kafka.bindings.input.consumer.configuration.max.poll.records=30",
            f"{CONFIG}.security.protocol=SASL_SSL", f"{CONFIG}.sasl.mechanism=SCRAM-SHA-512",
            f'{CONFIG}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required '
            'username="app" password="p@ss\\"w=rd";',
            f"{CONFIG}.ssl.truststore.location={ca}", f"{CONFIG}.ssl.keystore.location=file:{keystore}",
            f"{CONFIG}.ssl.truststore.password=changeit", f"{CONFIG}.fetch.max.wait.ms=10",
            f"{CONFIG}.queued.max.messages.kbytes=65536"]
    props = Properties(args, {})
    consumer = librdkafka_settings.consumer_settings(props, resolve_input(props))
    assert consumer["max.poll.records"] == 30
    assert (consumer["security.protocol"], consumer["sasl.mechanisms"]) == ("sasl_ssl", "SCRAM-SHA-512")
    assert (consumer["sasl.username"], consumer["sasl.password"]) == ("app", 'p@ss"w=rd')
    assert consumer["ssl.ca.location"] == str(ca)
    assert consumer["ssl.certificate.location"] == consumer["ssl.key.location"] == str(keystore)
    assert "ssl.truststore.password" not in consumer  # PEM files need none
    assert consumer["fetch.wait.max.ms"] == "10"
    assert consumer["queued.max.messages.kbytes"] == "65536"  # librdkafka's own keys pass as they are
    assert (consumer["group.id"], consumer["enable.auto.commit"], consumer["auto.offset.reset"]) == (
        "g", False, "earliest")
    producer = librdkafka_settings.client_settings(Properties([], {}), "output", "producer")
    assert (producer["acks"], producer["enable.idempotence"], producer["message.max.bytes"]) == ("1", False, 1 << 20)
    assert producer["delivery.report.only.error"] is True
    all_acks = librdkafka_settings.client_settings(
        Properties(["--spring.cloud.stream.kafka.binder.requiredAcks=-1"], {}), "output", "producer")
    assert (all_acks["acks"], all_acks["enable.idempotence"]) == ("all", True)


@pytest.mark.parametrize("transport", [librdkafka_settings, kafka_python], ids=["librdkafka", "kafka-python"])
@pytest.mark.parametrize("setting", ["ssl.enabled.protocols=TLSv1.3", "ssl.cipher.suites=TLS_AES_256_GCM_SHA384",
                                     "ssl.trustmanager.algorithm=PinningTrustManager",
                                     "sasl.login.callback.handler.class=com.example.OAuthHandler"])
def test_security_settings_a_client_cannot_honour_stop_the_app(transport: object, setting: str) -> None:
    props = Properties([f"{CONFIG}.{setting}"], {})
    with pytest.raises(ConfigError, match=rf"'{re.escape(setting.split('=')[0])}'.*weaken"):
        transport.client_settings(props, "input", "consumer")  # type: ignore[attr-defined]


def test_a_jks_store_is_a_clear_error_on_librdkafka_too(tmp_path: Path) -> None:
    store = tmp_path / "truststore.jks"
    store.write_bytes(b"\xfe\xed\xfe\xed")
    with pytest.raises(ConfigError, match="not a PEM file"):
        librdkafka_settings.client_settings(Properties([f"{CONFIG}.ssl.truststore.location={store}"], {}), "input",
                                   "consumer")


def test_unknown_keys_are_a_warning_and_bad_values_name_their_key(caplog: pytest.LogCaptureFixture) -> None:
    settings = librdkafka_settings.client_settings(
        Properties([f"{CONFIG}.no.such.key=1", f"{CONFIG}.max.block.ms=5"], {}), "output", "producer")
    with caplog.at_level(logging.WARNING):
        producer = librdkafka.Producer(settings)
    producer.close(2)
    assert "Kafka property 'no.such.key' is not supported by librdkafka and is ignored" in caplog.text
    assert "Kafka property 'max.block.ms' has no librdkafka meaning and is ignored" in caplog.text
    bad = librdkafka_settings.client_settings(Properties([f"{CONFIG}.linger.ms=soon"], {}), "output", "producer")
    with pytest.raises(ConfigError, match=r"linger\.ms"):
        librdkafka.Producer(bad)


def test_a_small_fetch_max_bytes_lowers_the_consumer_record_limit_as_librdkafka_requires() -> None:
    props = Properties([*BINDING, "--spring.cloud.stream.kafka.binder.consumerProperties.fetch.max.bytes=100000"], {})
    assert librdkafka_settings.consumer_settings(props, resolve_input(props))["message.max.bytes"] == 100_000


def test_librdkafka_refusals_about_the_record_take_its_error_path_and_the_brokers_rewind() -> None:
    def refusal(code: int) -> KafkaException:
        return KafkaException(KafkaError(code))

    about = [librdkafka.about_the_record(e) for e in (
        refusal(KafkaError.MSG_SIZE_TOO_LARGE), refusal(KafkaError.INVALID_RECORD), TypeError("a header"))]
    assert about == [True, True, True]
    broker = [librdkafka.about_the_record(e) for e in (
        refusal(KafkaError.TOPIC_AUTHORIZATION_FAILED), refusal(KafkaError._MSG_TIMED_OUT),
        refusal(KafkaError._QUEUE_FULL), BufferError("queue full"))]
    assert broker == [False, False, False, False]
    assert librdkafka.too_large(refusal(KafkaError.MSG_SIZE_TOO_LARGE))
    assert not librdkafka.too_large(refusal(KafkaError.INVALID_RECORD))


def test_the_client_property_picks_the_transport() -> None:
    assert open_client(Properties([], {})).name == "the kafka binder (librdkafka)"
    chosen = open_client(Properties(["--spring.cloud.stream.kafka.binder.client=kafka-python"], {}))
    assert chosen.name == "the kafka binder (kafka-python)"


@pytest.mark.parametrize(("args", "env", "binder"), [
    ([], {}, "kafka"),
    (["--spring.rabbitmq.host=mq"], {}, "rabbit"),
    ([], {"SPRING_RABBITMQ_ADDRESSES": "amqp://u:p@mq:5672"}, "rabbit"),
    ([], {"SPRING_RABBITMQ_VIRTUAL_HOST": "v"}, "rabbit"),
    (["--spring.rabbitmq.listener.simple.prefetch=5"], {}, "kafka"),  # not a connection property
    (["--spring.rabbitmq.host=mq", "--spring.cloud.stream.defaultBinder=kafka"],
     {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": "k:9092"}, "kafka"),
    (["--spring.cloud.stream.defaultBinder=rabbit"], {}, "rabbit"),
])
def test_the_binder_is_default_binder_or_the_connection_properties_set(
        args: list[str], env: dict[str, str], binder: str) -> None:
    from util.transport import binder as chosen_binder

    assert chosen_binder(Properties(args, env)) == binder
    with pytest.raises(ConfigError, match=r"spring\.cloud\.stream\.kafka\.binder\.client"):
        open_client(Properties(["--spring.cloud.stream.kafka.binder.client=java"], {}))


def test_rabbit_properties_this_binder_does_not_read_are_named() -> None:
    from util.rabbit_config import unsupported

    props = Properties(["--spring.cloud.stream.rabbit.bindings.input.consumer.prefix=p",
                        "--spring.cloud.stream.rabbit.bindings.input.consumer.autoBindDlq=true",
                        "--spring.cloud.stream.rabbit.default.producer.quorum.enabled=true",
                        "--spring.cloud.stream.rabbit.binder.adminAddresses=x"],
                       {"SPRING_CLOUD_STREAM_RABBIT_BINDINGS_INPUT_CONSUMER_MAXLENGTH": "5"})
    assert unsupported(props) == ["spring.cloud.stream.rabbit.binder.adminAddresses",
                                  "spring.cloud.stream.rabbit.bindings.input.consumer.prefix"]


def test_rabbit_queue_arguments_are_springs_for_the_same_properties() -> None:
    from util.rabbit_config import consumer_properties, queue_arguments

    args = ["--spring.cloud.stream.rabbit.bindings.input.consumer.autoBindDlq=true",
            "--spring.cloud.stream.rabbit.bindings.input.consumer.ttl=5000",
            "--spring.cloud.stream.rabbit.bindings.input.consumer.maxLength=10",
            "--spring.cloud.stream.rabbit.bindings.input.consumer.lazy=true",
            "--spring.cloud.stream.rabbit.default.consumer.deadLetterExchange=MYDLX"]
    props = Properties(args, {})
    settings = {key: props.get(prop) for key, prop in consumer_properties().items()}
    assert queue_arguments(settings, "d.g") == {"x-dead-letter-exchange": "MYDLX", "x-dead-letter-routing-key": "d.g",
                                                "x-max-length": 10, "x-message-ttl": 5000, "x-queue-mode": "lazy"}
    plain = Properties([], {})
    assert queue_arguments({key: plain.get(prop) for key, prop in consumer_properties().items()}, "d.g") == {}


def test_both_clients_read_uncommitted_as_java_unless_told_read_committed() -> None:
    """librdkafka's own default is read_committed, Java's and kafka-python's read_uncommitted: the binder sets
    Java's on both, so they read a transactional producer's output alike; the consumer properties change it."""
    from util import kafka_python

    plain = Properties([*BINDING], {})
    assert librdkafka_settings.consumer_settings(plain, resolve_input(plain))["isolation.level"] == "read_uncommitted"
    assert kafka_python.consumer_settings(plain, resolve_input(plain)).get(
        "isolation_level", "read_uncommitted") == "read_uncommitted"
    committed = Properties([*BINDING, "--spring.cloud.stream.kafka.binder.consumerProperties.isolation.level="
                                      "read_committed"], {})
    assert librdkafka_settings.consumer_settings(committed, resolve_input(committed))["isolation.level"] == \
        "read_committed"
    assert kafka_python.consumer_settings(committed, resolve_input(committed))["isolation_level"] == "read_committed"
