"""Kafka client settings as the Spring binder takes them: brokers, the client, and the pass-through keys.

Each transport (``librdkafka.py``, ``kafka_python.py``) translates the merged Java keys to its own
client's names; what is shared lives here: the precedence of the pass-through prefixes, the broker
list, ``acks``, the SASL credentials of ``sasl.jaas.config``, PEM file checks and the refusal of keys
whose omission would weaken security.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .arguments import ConfigError, Properties, Property
from .bindings import BINDER, InputBinding
from .dead_letter import KafkaDeadLetters
from .logs import cut_secret, shown

log = logging.getLogger(__name__)

BROKERS = Property(f"{BINDER}.brokers", str, "localhost:9092",
                   "Comma list of Kafka brokers, host[:port], an optional PLAINTEXT:// style scheme allowed.")
DEFAULT_BROKER_PORT = Property(f"{BINDER}.defaultBrokerPort", int, 9092, "Port used for brokers listed without one.")
REQUIRED_ACKS = Property(f"{BINDER}.requiredAcks", str, "1", "Producer acks: 0, 1 or all (-1).")
CLIENT = Property(f"{BINDER}.client", str, "librdkafka",
                  "Kafka client: librdkafka (confluent-kafka, fast) or kafka-python (pure Python).",
                  choices=("librdkafka", "kafka-python"))
TRANSACTION_ID_PREFIX = Property(
    f"{BINDER}.transaction.transactionIdPrefix", str, None,
    "Exactly-once: every producer binding is transactional, one transaction a polled batch with the input offsets; "
    "transactional.id is this plus the instance's suffix (README: Exactly-once).", binder="kafka")
TRANSACTION_PRODUCER = f"{BINDER}.transaction.producer"  # the transactional producer's own properties
PROPERTIES = (BROKERS, DEFAULT_BROKER_PORT, REQUIRED_ACKS, CLIENT, TRANSACTION_ID_PREFIX)

# Set by the binder itself: a user value would break its offset and group handling.
MANAGED = frozenset({"group.id", "enable.auto.commit", "auto.commit.interval.ms", "key.deserializer",
                     "value.deserializer", "key.serializer", "value.serializer", "transactional.id"})
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


def bootstrap_servers(properties: Properties) -> list[str]:
    """Brokers from ``...binder.brokers`` (or its env var), scheme dropped, default port added."""
    value = properties.get(BROKERS)
    port = properties.get(DEFAULT_BROKER_PORT)
    servers = []
    for item in value.split(","):
        address = item.strip().split("://", 1)[-1].rstrip("/")
        if not address:
            continue
        host, sep, given = address.rpartition(":") if not address.endswith("]") else ("", "", "")
        if sep and not host.endswith(":"):
            if not (given.isascii() and given.isdigit()) or not 0 < int(given) < 65536:
                hidden = properties.secret(BROKERS) or cut_secret(value, item)
                raise ConfigError(f"Invalid broker {shown(item.strip(), hidden)} in property "
                                  f"'{BROKERS.name}': the port must be a number")
            servers.append(address)
        else:
            servers.append(f"{address}:{port}")
    if not servers:
        raise ConfigError(f"Property '{BROKERS.name}' lists no broker")
    return servers


def java_settings(properties: Properties, binding: str | None, role: str) -> dict[str, str]:
    """The Java client keys of a binding's consumer or producer (or the admin client), in the binder's order.

    ``binder.configuration`` < ``binder.consumerProperties``/``producerProperties`` <
    ``bindings.<binding>.consumer.configuration`` (or ``producer``). The ``transaction`` role (the transactional
    producer) takes ``binder.transaction.producer.configuration`` last instead, as Spring's binder does.
    """
    kafka = properties.subtree(f"{BINDER}.configuration")
    if role == "transaction":
        kafka.update(properties.subtree(f"{BINDER}.producerProperties"))
        kafka.update(properties.subtree(f"{TRANSACTION_PRODUCER}.configuration"))
        return kafka
    if role != "admin":
        kafka.update(properties.subtree(f"{BINDER}.{role}Properties"))
    if binding:
        kafka.update(properties.subtree(f"spring.cloud.stream.kafka.bindings.{binding}.{role}.configuration"))
    return kafka


def acks(value: str, name: str, secret: bool = True) -> str:
    """``0``, ``1`` or ``all`` (``-1`` is ``all``); a bad value is shown only when not ``secret``."""
    text = value.strip().lower()
    if text in ("all", "-1"):
        return "all"
    if text in ("0", "1"):
        return text
    raise ConfigError(f"Invalid value {shown(value.strip(), secret)} for property '{name}': expected 0, 1 or all")


def required_acks(properties: Properties, kafka: Mapping[str, str], role: str = "producer") -> str:
    """The producer's acks: a pass-through ``acks`` (not shown in an error: which source set it, a config tree or
    not, is not known here) wins over ``...binder.requiredAcks``. A transactional producer needs ``all`` (the
    binder's default 1 becomes all; 0 or 1 set is refused, as the Java client refuses it)."""
    if role == "transaction":
        given = acks(kafka["acks"], "acks") if "acks" in kafka else (
            acks(properties.get(REQUIRED_ACKS), REQUIRED_ACKS.name, properties.secret(REQUIRED_ACKS))
            if properties.raw(REQUIRED_ACKS.name) is not None else "all")
        if given != "all":
            named = "acks" if "acks" in kafka else REQUIRED_ACKS.name
            raise ConfigError(f"Property '{named}' is {given}, but '{TRANSACTION_ID_PREFIX.name}' makes the producer "
                              "transactional, which needs acks=all: set it to all or remove it")
        return given
    if "acks" in kafka:
        return acks(kafka["acks"], "acks")
    return acks(properties.get(REQUIRED_ACKS), REQUIRED_ACKS.name, properties.secret(REQUIRED_ACKS))


def idempotent(value: object) -> None:
    """A transactional producer is idempotent: ``enable.idempotence=false`` is refused, as the Java client does."""
    if str(value).strip().lower() == "false":
        raise ConfigError(f"Kafka property 'enable.idempotence' is false, but '{TRANSACTION_ID_PREFIX.name}' makes "
                          "the producer transactional, which needs it: remove it")


def withheld(key: str, value: str, weakening: Mapping[str, tuple[str | None, str]]) -> bool:
    """True for a key the binder keeps from the client: one it sets itself (a warning), or one the client
    cannot honour at its harmless value. One whose omission would weaken security stops the app."""
    if key in weakening:
        harmless, why = weakening[key]
        if value.strip() != harmless:
            raise ConfigError(f"Kafka property '{key}' cannot be honoured ({why}), and leaving it out would "
                              "weaken the connection's security: remove it or use a broker listener without it")
        return True
    if key in MANAGED:
        log.warning("Kafka property '%s' is ignored: the binder sets it itself", key)
        return True
    return False


def jaas_credentials(value: str) -> tuple[str, str]:
    """The username and password of a PLAIN or SCRAM login module; the values are never logged."""
    options = dict(_JAAS_OPTION.findall(value))
    if not any(module in value for module in ("PlainLoginModule", "ScramLoginModule")):
        raise ConfigError("Kafka property 'sasl.jaas.config': only the PlainLoginModule and ScramLoginModule "
                          "login modules are supported")
    if "username" not in options or "password" not in options:
        raise ConfigError("Kafka property 'sasl.jaas.config' needs username=\"...\" and password=\"...\"")
    return _unescape(options["username"]), _unescape(options["password"])


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def pem_file(key: str, location: str) -> str:
    """The path of a PEM file; a JKS or PKCS12 store gets a clear error instead of a TLS failure."""
    path = Path(location.removeprefix("file:"))
    try:
        head = path.read_bytes()[:4096]
    except OSError as error:
        raise ConfigError(f"Kafka property '{key}': cannot read '{path}' ({error.strerror})") from None
    if b"-----BEGIN" not in head:
        raise ConfigError(f"Kafka property '{key}': '{path}' is not a PEM file; convert the JKS/PKCS12 store "
                          "to PEM (keytool, openssl) and point the property at it")
    return str(path)


def whole_number(key: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"Invalid value for Kafka property '{key}': expected a whole number") from None


class KafkaClient:
    """What both Kafka clients answer alike: the brokers for health and logs, the input binding as it is, the
    dead letters as Spring's Kafka binder sends them."""

    null_header: bytes | None

    def __init__(self, properties: Properties) -> None:
        self.properties = properties
        self.servers = bootstrap_servers(properties)
        self.servers_property = BROKERS.name

    def problem(self) -> str | None:
        """Both clients reconnect by themselves: the binder's reachability check says when no broker answers."""
        return None

    def input(self, binding: InputBinding) -> InputBinding:
        return binding

    def dead_letters(self, source: InputBinding, producer: Any = None) -> KafkaDeadLetters:
        """The input binding's dead-letter sender, on a producer of its own (or on ``producer``, transactional)."""
        return KafkaDeadLetters(producer or self.producer(None, carries=source), source, self.null_header)
