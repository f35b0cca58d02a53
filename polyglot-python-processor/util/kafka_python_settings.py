"""kafka-python's clients as the binder makes them: arguments from its properties (Java keys translated, the
binder's defaults)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from . import kafka_config
from .arguments import ConfigError, Properties
from .bindings import InputBinding, start_offset

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS = {"linger_ms": 5, "batch_size": 128 << 10}
_ASSIGNORS = {
    "rangeassignor": RangePartitionAssignor,
    "roundrobinassignor": RoundRobinPartitionAssignor,
    "cooperativestickyassignor": CooperativeStickyAssignor,
    "stickyassignor": StickyPartitionAssignor,
}
# Java-only keys that kafka-python cannot honour and whose silent omission would weaken security:
# refused at start. The value each takes harmlessly (Java's default), if any, is let through.
_WEAKENING = {
    "ssl.enabled.protocols": (None, "kafka-python cannot restrict the TLS versions"),
    "ssl.protocol": ("TLSv1.3", "kafka-python cannot restrict the TLS version"),
    "ssl.cipher.suites": (None, "kafka-python cannot restrict the cipher suites by their Java names"),
    "ssl.truststore.certificates": (None, "kafka-python reads trusted certificates from a file: put them in a PEM "
                                          "file named by ssl.truststore.location"),
    "ssl.keystore.certificate.chain": (None, "kafka-python reads its certificate from a file: put it in a PEM "
                                             "file named by ssl.keystore.location"),
    "ssl.keystore.key": (None, "kafka-python reads its key from a file: put it in the PEM file named by "
                               "ssl.keystore.location"),
    "ssl.trustmanager.algorithm": ("PKIX", "kafka-python verifies certificates with OpenSSL only"),
    "sasl.login.callback.handler.class": (None, "kafka-python runs no Java login callback"),
    "sasl.client.callback.handler.class": (None, "kafka-python runs no Java client callback"),
}


def consumer_settings(properties: Properties, binding: InputBinding) -> dict[str, Any]:
    """kafka-python consumer arguments: pass-through settings, then the group rules the binder enforces."""
    settings = client_settings(properties, "input", "consumer")
    settings.update(auto_offset_reset=start_offset(properties, binding, settings.get("auto_offset_reset")),
                    group_id=binding.group, enable_auto_commit=False)
    return settings


def client_settings(properties: Properties, binding: str | None, role: str) -> dict[str, Any]:
    """kafka-python arguments for a binding's consumer or producer (or the admin client)."""
    kafka = kafka_config.java_settings(properties, binding, role)
    settings: dict[str, Any] = {"bootstrap_servers": kafka_config.bootstrap_servers(properties)}
    producer = role in ("producer", "transaction")
    if producer:
        acks = kafka_config.required_acks(properties, kafka, role)
        settings["acks"] = acks if acks == "all" else int(acks)
        # Bigger batches, sent as they fill: the binder flushes at the end of every polled batch anyway,
        # so linger never holds a record past it (measured: twice the throughput of 0 ms and 16 KiB).
        settings.update(PRODUCER_DEFAULTS)
    settings.update(translate(kafka, "producer" if producer else role))
    if producer:
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
            settings["sasl_plain_username"], settings["sasl_plain_password"] = kafka_config.jaas_credentials(value)
        elif key in ("ssl.truststore.location", "ssl.keystore.location"):
            settings["ssl_cafile" if "truststore" in key else "ssl_certfile"] = kafka_config.pem_file(key, value)
        elif key == "ssl.key.password":
            settings["ssl_password"] = value
        elif key == "ssl.endpoint.identification.algorithm":
            settings["ssl_check_hostname"] = value.strip().lower() == "https"
        elif key in ("ssl.truststore.type", "ssl.keystore.type", "ssl.truststore.password", "ssl.keystore.password"):
            continue  # PEM files need neither; the location check says when a store is not PEM
        elif key == "bootstrap.servers":
            settings["bootstrap_servers"] = [s.strip() for s in value.split(",") if s.strip()]
        elif key == "acks":
            continue  # read with the binder's requiredAcks
        elif key == "partition.assignment.strategy":
            settings["partition_assignment_strategy"] = _assignors(value)
        elif kafka_config.withheld(key, value, _WEAKENING):
            continue
        elif name in defaults:
            settings[name] = _typed(key, value, defaults[name])
        else:
            log.warning("Kafka property '%s' is not supported by kafka-python and is ignored", key)
    return settings


def _typed(key: str, value: str, default: Any) -> Any:
    text = value.strip()
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ConfigError(f"Invalid value for Kafka property '{key}': expected true or false")
        return text.lower() == "true"
    if isinstance(default, (int, float)) or (default is None and text.lstrip("-").isdigit()):
        return kafka_config.whole_number(key, text)
    return text


def _assignors(value: str) -> tuple[type, ...]:
    chosen = []
    for name in value.split(","):
        simple = name.strip().rsplit(".", 1)[-1].lower()
        if simple not in _ASSIGNORS:
            raise ConfigError(f"Kafka property 'partition.assignment.strategy': '{name.strip()}' is not supported; "
                              "use RangeAssignor, RoundRobinAssignor, StickyAssignor or CooperativeStickyAssignor")
        chosen.append(_ASSIGNORS[simple])
    return tuple(chosen)
