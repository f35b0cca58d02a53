"""Kafka client settings as the Spring binder takes them, translated to kafka-python arguments."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from .arguments import ConfigError, Properties, Property

log = logging.getLogger(__name__)

BINDER = "spring.cloud.stream.kafka.binder"
BROKERS = Property(f"{BINDER}.brokers", str, "localhost:9092",
                   "Comma list of Kafka brokers, host[:port], an optional PLAINTEXT:// style scheme allowed.")
DEFAULT_BROKER_PORT = Property(f"{BINDER}.defaultBrokerPort", int, 9092, "Port used for brokers listed without one.")
REQUIRED_ACKS = Property(f"{BINDER}.requiredAcks", str, "1", "Producer acks: 0, 1 or all (-1).")
PROPERTIES = (BROKERS, DEFAULT_BROKER_PORT, REQUIRED_ACKS)
PRODUCER_DEFAULTS = {"linger_ms": 5, "batch_size": 128 << 10}

_ASSIGNORS = {
    "rangeassignor": RangePartitionAssignor,
    "roundrobinassignor": RoundRobinPartitionAssignor,
    "cooperativestickyassignor": CooperativeStickyAssignor,
    "stickyassignor": StickyPartitionAssignor,
}
# Set by the binder itself: a user value would break its offset and group handling.
_MANAGED = frozenset({"group_id", "enable_auto_commit", "auto_commit_interval_ms", "key_deserializer",
                      "value_deserializer", "key_serializer", "value_serializer", "transactional_id"})
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')
# Java-only keys that kafka-python cannot honour and whose silent omission would weaken security:
# refused at start. The value each takes harmlessly (Java's default), if any, is let through.
_WEAKENING = {
    "ssl.enabled.protocols": (None, "kafka-python cannot restrict the TLS versions"),
    "ssl.protocol": ("TLSv1.3", "kafka-python cannot restrict the TLS version"),
    "ssl.cipher.suites": (None, "kafka-python cannot restrict the cipher suites by their Java names"),
    "ssl.truststore.certificates": (None, "kafka-python reads trusted certificates from a file: put them in a PEM "
                                          "file named by ssl.truststore.location"),
    "ssl.trustmanager.algorithm": ("PKIX", "kafka-python verifies certificates with OpenSSL only"),
    "sasl.login.callback.handler.class": (None, "kafka-python runs no Java login callback"),
    "sasl.client.callback.handler.class": (None, "kafka-python runs no Java client callback"),
}


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
            if not given.isdigit() or not 0 < int(given) < 65536:
                raise ConfigError(f"Invalid broker '{item.strip()}' in property '{BROKERS.name}': "
                                  "the port must be a number")
            servers.append(address)
        else:
            servers.append(f"{address}:{port}")
    if not servers:
        raise ConfigError(f"Property '{BROKERS.name}' lists no broker")
    return servers


def client_settings(properties: Properties, binding: str | None, role: str) -> dict[str, Any]:
    """kafka-python arguments for a binding's consumer or producer (or the admin client), in the binder's order.

    ``binder.configuration`` < ``binder.consumerProperties``/``producerProperties`` <
    ``bindings.<binding>.consumer.configuration`` (or ``producer``).
    """
    kafka = properties.subtree(f"{BINDER}.configuration")
    if role != "admin":
        kafka.update(properties.subtree(f"{BINDER}.{role}Properties"))
    if binding:
        kafka.update(properties.subtree(f"spring.cloud.stream.kafka.bindings.{binding}.{role}.configuration"))
    settings: dict[str, Any] = {"bootstrap_servers": bootstrap_servers(properties)}
    if role == "producer":
        acks = properties.get(REQUIRED_ACKS).strip().lower()
        settings["acks"] = _acks(acks, REQUIRED_ACKS.name)
        # Bigger batches, sent as they fill: the binder flushes at the end of every polled batch anyway,
        # so linger never holds a record past it (measured: twice the throughput of 0 ms and 16 KiB).
        settings.update(PRODUCER_DEFAULTS)
    settings.update(translate(kafka, role))
    if role == "producer":
        # As the Java client: idempotence needs acks=all, so it is off with the binder's default acks=1.
        settings.setdefault("enable_idempotence", settings["acks"] == "all")
    return settings


def translate(kafka: Mapping[str, str], role: str) -> dict[str, Any]:
    """Java Kafka client keys to kafka-python arguments; an unknown key is a warning, never a crash."""
    defaults = {"consumer": KafkaConsumer, "producer": KafkaProducer, "admin": KafkaAdminClient}[role].DEFAULT_CONFIG
    settings: dict[str, Any] = {}
    for key, value in kafka.items():
        name = key.replace(".", "_")
        if key == "sasl.jaas.config":
            settings.update(_jaas(value))
        elif key in ("ssl.truststore.location", "ssl.keystore.location"):
            settings["ssl_cafile" if "truststore" in key else "ssl_certfile"] = _pem_file(key, value)
        elif key == "ssl.key.password":
            settings["ssl_password"] = value
        elif key == "ssl.endpoint.identification.algorithm":
            settings["ssl_check_hostname"] = value.strip().lower() == "https"
        elif key in ("ssl.truststore.type", "ssl.keystore.type", "ssl.truststore.password", "ssl.keystore.password"):
            continue  # PEM files need neither; the location check says when a store is not PEM
        elif key == "bootstrap.servers":
            settings["bootstrap_servers"] = [s.strip() for s in value.split(",") if s.strip()]
        elif key == "acks":
            settings["acks"] = _acks(value.strip().lower(), key)
        elif key == "partition.assignment.strategy":
            settings["partition_assignment_strategy"] = _assignors(value)
        elif key in _WEAKENING:
            harmless, why = _WEAKENING[key]
            if value.strip() != harmless:
                raise ConfigError(f"Kafka property '{key}' cannot be honoured ({why}), and leaving it out would "
                                  "weaken the connection's security: remove it or use a broker listener without it")
        elif name in _MANAGED:
            log.warning("Kafka property '%s' is ignored: the binder sets it itself", key)
        elif name in defaults:
            settings[name] = _typed(key, value, defaults[name])
        else:
            log.warning("Kafka property '%s' is not supported by kafka-python and is ignored", key)
    return settings


def _typed(key: str, value: str, default: Any) -> Any:
    text = value.strip()
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if isinstance(default, (int, float)) or (default is None and text.lstrip("-").isdigit()):
            return int(text)
    except ValueError:
        raise ConfigError(f"Invalid value for Kafka property '{key}': expected "
                          f"{'true or false' if isinstance(default, bool) else 'a whole number'}") from None
    return text


def _acks(value: str, name: str) -> int | str:
    if value in ("all", "-1"):
        return "all"
    if value in ("0", "1"):
        return int(value)
    raise ConfigError(f"Invalid value '{value}' for property '{name}': expected 0, 1 or all")


def _assignors(value: str) -> tuple[type, ...]:
    chosen = []
    for name in value.split(","):
        simple = name.strip().rsplit(".", 1)[-1].lower()
        if simple not in _ASSIGNORS:
            raise ConfigError(f"Kafka property 'partition.assignment.strategy': '{name.strip()}' is not supported; "
                              "use RangeAssignor, RoundRobinAssignor, StickyAssignor or CooperativeStickyAssignor")
        chosen.append(_ASSIGNORS[simple])
    return tuple(chosen)


def _jaas(value: str) -> dict[str, str]:
    """PLAIN and SCRAM login modules carry a username and password; the values are never logged."""
    options = dict(_JAAS_OPTION.findall(value))
    if not any(module in value for module in ("PlainLoginModule", "ScramLoginModule")):
        raise ConfigError("Kafka property 'sasl.jaas.config': only the PlainLoginModule and ScramLoginModule "
                          "login modules are supported")
    if "username" not in options or "password" not in options:
        raise ConfigError("Kafka property 'sasl.jaas.config' needs username=\"...\" and password=\"...\"")
    return {"sasl_plain_username": _unescape(options["username"]),
            "sasl_plain_password": _unescape(options["password"])}


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _pem_file(key: str, location: str) -> str:
    """kafka-python reads PEM files; a JKS or PKCS12 store gets a clear error instead of a TLS failure."""
    path = Path(location.removeprefix("file:"))
    try:
        head = path.read_bytes()[:4096]
    except OSError as error:
        raise ConfigError(f"Kafka property '{key}': cannot read '{path}' ({error.strerror})") from None
    if b"-----BEGIN" not in head:
        raise ConfigError(f"Kafka property '{key}': '{path}' is not a PEM file; convert the JKS/PKCS12 store "
                          "to PEM (keytool, openssl) and point the property at it")
    return str(path)
