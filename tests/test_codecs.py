"""Header codec (both Spring generations), Java hash codes, grapheme reversal, Kafka settings."""

import json
import re
from pathlib import Path

import pytest

from python_processor import reverse, transform
from util.arguments import ConfigError, Properties
from util.bindings import partition_key, resolve_input
from util.headers import HeaderError, content_type, decode_text, outbound_headers
from util.kafka_config import bootstrap_servers
from util.kafka_python import client_settings, consumer_settings
from util.message import Message
from util.partitions import java_bytes_hash, java_string_hash, select_partition

SCST2 = [("contentType", b'"text/plain"'), ("originalContentType", b'"text/plain;charset=UTF-8"'),
         ("spring_json_header_types", b'{"contentType":"java.lang.String","originalContentType":"java.lang.String"}')]
SCST3 = [("contentType", b"text/plain"), ("http_requestMethod", b"POST")]


def test_content_type_read_leniently_in_both_generations() -> None:
    assert content_type(SCST2, "application/json") == "text/plain;charset=UTF-8"
    assert content_type(SCST3, "application/json") == "text/plain"
    assert content_type([], "application/json") == "application/json"
    assert decode_text("contentType", b'{"type":"text","subtype":"plain"}') == "text/plain"


def test_outbound_headers_forward_and_type_content_type() -> None:
    inbound = [*SCST2, ("id", b"x"), ("kafka_offset", b"1"), ("scst_partition", b"0"), ("http_requestUrl", b"/")]
    out = dict(outbound_headers(inbound, "text/plain"))
    assert out["contentType"] == b'"text/plain"'
    assert out["http_requestUrl"] == b"/"
    assert not {"id", "kafka_offset", "scst_partition", "originalContentType"} & set(out)
    assert json.loads(out["spring_json_header_types"]) == {"contentType": "java.lang.String"}
    # A 3.x consumer decodes the typed JSON value, a 2.x one needs exactly this shape.
    assert json.loads(out["contentType"]) == "text/plain"


def test_malformed_header_is_a_header_error() -> None:
    with pytest.raises(HeaderError, match="contentType"):
        content_type([("contentType", b"\xff\xfe")], "application/json")


def test_java_hash_codes_match_known_values() -> None:
    assert java_string_hash("") == 0
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("Aa") == java_string_hash("BB") == 2112
    assert java_string_hash("polygenelubricants") == -2**31
    assert java_string_hash("\U0001F44B") == 0xD83D * 31 + 0xDC4B  # one code point, two UTF-16 units
    assert java_bytes_hash(b"") == 1
    assert java_bytes_hash(b"hello") == 127791473
    assert java_bytes_hash(b"\xff") == 30


def test_partition_selection_as_spring() -> None:
    assert select_partition(java_string_hash("polygenelubricants"), 7) == 0
    assert select_partition(-7, 4) == 3
    assert select_partition(99162322, 3) == 99162322 % 3


def test_partition_key_expressions() -> None:
    assert partition_key("payload", "p") == "payload"
    assert partition_key("headers['key']", "p") == "key"
    assert partition_key('headers["key"]', "p") == "key"
    assert partition_key("headers.key", "p") == "key"
    with pytest.raises(ConfigError, match="'p'"):
        partition_key("payload.id", "p")


def test_reverse_by_grapheme_clusters() -> None:
    assert reverse("hello world") == "dlrow olleh"
    assert reverse("héllo 👋🏽") == "👋🏽 olléh"
    assert reverse("e\u0301a") == "ae\u0301"  # combining accent stays on its letter
    assert reverse("👨‍👩‍👧 ok") == "ko 👨‍👩‍👧"


def test_transform_reverses_text_and_passes_other_payloads() -> None:
    text = Message("héllo".encode(), [], "text/plain")
    assert transform(text, reverse_string=True).payload == "olléh".encode()
    assert transform(text, reverse_string=False) is text
    binary = Message(b"\xff\x00", [], "application/octet-stream")
    assert transform(binary, reverse_string=True) is binary
    with pytest.raises(UnicodeDecodeError):
        transform(Message(b"\xff", [], "text/plain"), reverse_string=True)


def test_brokers_from_binder_property_or_env() -> None:
    props = Properties(["--spring.cloud.stream.kafka.binder.brokers=PLAINTEXT://k1,SSL://k2:9093, k3:1"], {})
    assert bootstrap_servers(props) == ["k1:9092", "k2:9093", "k3:1"]
    env = {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": "kafka-broker",
           "SPRING_CLOUD_STREAM_KAFKA_BINDER_DEFAULTBROKERPORT": "29092"}
    assert bootstrap_servers(Properties([], env)) == ["kafka-broker:29092"]
    with pytest.raises(ConfigError, match=r"binder\.brokers"):
        bootstrap_servers(Properties(["--spring.cloud.stream.kafka.binder.brokers=k:x"], {}))


def test_named_group_starts_at_earliest_anonymous_at_latest() -> None:
    named = Properties(["--spring.cloud.stream.bindings.input.destination=t",
                        "--spring.cloud.stream.bindings.input.group=s"], {})
    settings = consumer_settings(named, resolve_input(named))
    assert (settings["group_id"], settings["auto_offset_reset"], settings["enable_auto_commit"]) == (
        "s", "earliest", False)
    anonymous = Properties(["--spring.cloud.stream.bindings.input.destination=t"], {})
    settings = consumer_settings(anonymous, resolve_input(anonymous))
    assert settings["group_id"].startswith("anonymous.")
    assert settings["auto_offset_reset"] == "latest"
    override = Properties(["--spring.cloud.stream.bindings.input.destination=t",
                           "--spring.cloud.stream.kafka.bindings.input.consumer.startOffset=latest",
                           "--spring.cloud.stream.bindings.input.group=s"], {})
    assert consumer_settings(override, resolve_input(override))["auto_offset_reset"] == "latest"


def test_kafka_pass_through_precedence_and_security(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    args = ["--spring.cloud.stream.kafka.binder.configuration.max.poll.records=10",
            "--spring.cloud.stream.kafka.binder.consumerProperties.max.poll.records=20",
            "--spring.cloud.stream.kafka.bindings.input.consumer.configuration.max.poll.records=30",
            "--spring.cloud.stream.kafka.binder.configuration.security.protocol=SASL_SSL",
            "--spring.cloud.stream.kafka.binder.configuration.sasl.mechanism=SCRAM-SHA-512",
            '--spring.cloud.stream.kafka.binder.configuration.sasl.jaas.config=org.apache.kafka.common.security.'
            'scram.ScramLoginModule required username="app" password="p@ss\\"w=rd";',
            f"--spring.cloud.stream.kafka.binder.configuration.ssl.truststore.location={ca}",
            "--spring.cloud.stream.kafka.binder.configuration.no.such.key=1"]
    settings = client_settings(Properties(args, {}), "input", "consumer")
    assert settings["max_poll_records"] == 30
    assert settings["security_protocol"] == "SASL_SSL"
    assert settings["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (settings["sasl_plain_username"], settings["sasl_plain_password"]) == ("app", 'p@ss"w=rd')
    assert settings["ssl_cafile"] == str(ca)
    assert "no_such_key" not in settings
    producer = client_settings(Properties([], {}), "output", "producer")
    assert (producer["acks"], producer["enable_idempotence"]) == (1, False)


@pytest.mark.parametrize("setting", ["ssl.enabled.protocols=TLSv1.3", "ssl.cipher.suites=TLS_AES_256_GCM_SHA384",
                                     "ssl.truststore.certificates=-----BEGIN CERTIFICATE-----",
                                     "ssl.trustmanager.algorithm=PinningTrustManager",
                                     "sasl.login.callback.handler.class=com.example.OAuthHandler"])
def test_security_settings_kafka_python_cannot_honour_stop_the_app(setting: str) -> None:
    props = Properties([f"--spring.cloud.stream.kafka.binder.configuration.{setting}"], {})
    with pytest.raises(ConfigError, match=rf"'{re.escape(setting.split('=')[0])}'.*weaken"):
        client_settings(props, "input", "consumer")


def test_java_defaults_of_security_settings_are_let_through() -> None:
    props = Properties(["--spring.cloud.stream.kafka.binder.configuration.ssl.trustmanager.algorithm=PKIX",
                        "--spring.cloud.stream.kafka.binder.configuration.ssl.protocol=TLSv1.3"], {})
    assert "ssl_trustmanager_algorithm" not in client_settings(props, "input", "consumer")


def test_jks_truststore_is_a_clear_error(tmp_path: Path) -> None:
    store = tmp_path / "truststore.jks"
    store.write_bytes(b"\xfe\xed\xfe\xed")
    props = Properties([f"--spring.cloud.stream.kafka.binder.configuration.ssl.truststore.location={store}"], {})
    with pytest.raises(ConfigError, match="not a PEM file"):
        client_settings(props, "input", "consumer")


def test_header_caches_hold_no_large_headers_and_a_bounded_count() -> None:
    """Records each with a different 0.9 MB header kept 480 MB alive in the old per-count caches."""
    from util import headers as codec

    for i in range(40):
        big = (("contentType", b"text/plain"), ("blob", bytes([i % 256]) * 900_000))
        assert codec.inbound_content_type(big, "application/json") == "text/plain"
        assert outbound_headers(big, "text/plain")[0] == big[1]
    assert not any(len(dict(key[0]).get("blob", b"")) > 1000 for key in [*codec._CONTENT_TYPES, *codec._OUTBOUND])
    for i in range(2 * codec.CACHED):
        small = (("contentType", b"text/plain"), ("n", str(i).encode()))
        codec.inbound_content_type(small, "application/json")
        outbound_headers(small, "text/plain")
    assert len(codec._CONTENT_TYPES) == len(codec._OUTBOUND) == codec.CACHED
