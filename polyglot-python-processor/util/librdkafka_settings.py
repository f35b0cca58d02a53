"""librdkafka's clients as the binder makes them: settings from its properties (Java keys translated, the binder's
defaults), clients created from them (a refused setting named), and topic metadata."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaError, KafkaException

from . import kafka_config
from .arguments import ConfigError, Properties
from .bindings import InputBinding, start_offset

log = logging.getLogger(__name__)
client_log = logging.getLogger("librdkafka")
_probe_log = logging.getLogger("librdkafka.probe")  # silent: the clients made only to find a refused setting
_probe_log.disabled = True

_UNANSWERED = (KafkaError._TRANSPORT, KafkaError._TIMED_OUT)

# Java's max.request.size (1 MiB) and linger; librdkafka's own batch.size (1 MB) fills well before a flush.
PRODUCER_DEFAULTS = {"message.max.bytes": 1 << 20, "linger.ms": 5}
# The consumer's prefetch. librdkafka's defaults queue up to 100,000 records a partition (or 64 MiB) and,
# once over that, wait 1 s before fetching again: a small queue topped up every 5 ms keeps the loop fed at
# full speed in a fraction of the memory (measured in `make bench`; see the README).
# check.crcs as Java's default (librdkafka's is off: a batch damaged on the way or on disk was passed on).
# isolation.level as Java's and kafka-python's default (librdkafka's is read_committed): both clients read a
# transactional producer's records alike; read_committed through the consumer properties.
CONSUMER_DEFAULTS = {"queued.min.messages": 1000, "queued.max.messages.kbytes": 1024, "fetch.queue.backoff.ms": 5,
                     "max.partition.fetch.bytes": 128 << 10, "check.crcs": True, "isolation.level": "read_uncommitted"}
# Every client: reconnects at most once a second (Java's longest back-off). When every broker is down librdkafka
# re-bootstraps at once, with new broker connections whose back-off starts anew at reconnect.backoff.ms (librdkafka
# issue 5546): with its 100 ms an address that resets every connection (a load balancer with no broker behind it)
# was reconnected to 35 times a second. metadata.recovery.strategy=none keeps the back-off growing, but librdkafka
# 2.16 then crashed (SIGSEGV) when the broker restarted.
CONNECTION_DEFAULTS = {"reconnect.backoff.ms": 1000, "reconnect.backoff.max.ms": 1000}
# Java keys that librdkafka spells differently.
RENAMED = {"fetch.max.wait.ms": "fetch.wait.max.ms", "max.request.size": "message.max.bytes",
            "receive.buffer.bytes": "socket.receive.buffer.bytes", "send.buffer.bytes": "socket.send.buffer.bytes",
            "ssl.truststore.location": "ssl.ca.location", "ssl.truststore.certificates": "ssl.ca.pem",
            "ssl.keystore.certificate.chain": "ssl.certificate.pem", "ssl.keystore.key": "ssl.key.pem",
            "sasl.mechanism": "sasl.mechanisms"}
# Java-only keys with no librdkafka meaning: a warning, then ignored.
JAVA_ONLY = frozenset({"max.block.ms", "default.api.timeout.ms", "interceptor.classes", "metric.reporters",
                       "metrics.num.samples", "metrics.recording.level", "metrics.sample.window.ms",
                       "exclude.internal.topics", "partitioner.class", "security.providers",
                       "ssl.keymanager.algorithm", "ssl.secure.random.implementation", "ssl.engine.factory.class",
                       "ssl.truststore.type", "ssl.keystore.type", "ssl.truststore.password",
                       "ssl.keystore.password", "auto.include.jmx.reporter", "enable.metrics.push",
                       "sasl.login.class"})
# Java-only keys whose silent omission would weaken security: refused at start, but for Java's default.
WEAKENING = {
    "ssl.enabled.protocols": (None, "librdkafka takes the TLS versions from OpenSSL's configuration"),
    "ssl.protocol": ("TLSv1.3", "librdkafka takes the TLS version from OpenSSL's configuration"),
    "ssl.cipher.suites": (None, "librdkafka names cipher suites as OpenSSL does, not by their Java names"),
    "ssl.trustmanager.algorithm": ("PKIX", "librdkafka verifies certificates with OpenSSL only"),
    "sasl.login.callback.handler.class": (None, "librdkafka runs no Java login callback"),
    "sasl.client.callback.handler.class": (None, "librdkafka runs no Java client callback"),
}
_ASSIGNORS = {"rangeassignor": "range", "roundrobinassignor": "roundrobin",
              "cooperativestickyassignor": "cooperative-sticky"}


def client_settings(properties: Properties, binding: str | None, role: str) -> dict[str, Any]:
    """librdkafka settings for a binding's consumer or producer (or the admin client)."""
    kafka = kafka_config.java_settings(properties, binding, role)
    settings: dict[str, Any] = {"bootstrap.servers": ",".join(kafka_config.bootstrap_servers(properties)),
                                **CONNECTION_DEFAULTS}
    if role in ("producer", "transaction"):
        settings.update(acks=kafka_config.required_acks(properties, kafka, role), **PRODUCER_DEFAULTS)
    elif role == "consumer":
        settings.update(CONSUMER_DEFAULTS)
    settings.update(translate(kafka))
    if role == "consumer" and "fetch.max.bytes" in settings and "message.max.bytes" not in settings:
        # librdkafka wants fetch.max.bytes >= message.max.bytes; like Java's, it still fetches a bigger record
        settings["message.max.bytes"] = min(1_000_000, kafka_config.whole_number("fetch.max.bytes",
                                                                                 settings["fetch.max.bytes"]))
    if role in ("producer", "transaction"):
        # As the Java client: idempotence needs acks=all, so it is off with the binder's default acks=1.
        settings.setdefault("enable.idempotence", settings["acks"] == "all")
        settings["delivery.report.only.error"] = True
    return settings


def translate(kafka: Mapping[str, str]) -> dict[str, Any]:
    """Java Kafka client keys to librdkafka's: most are the same name; the client rejects what it does not know."""
    settings: dict[str, Any] = {}
    for key, value in kafka.items():
        if key == "sasl.jaas.config":
            settings["sasl.username"], settings["sasl.password"] = kafka_config.jaas_credentials(value)
        elif key == "ssl.truststore.location":
            settings["ssl.ca.location"] = kafka_config.pem_file(key, value)
        elif key == "ssl.keystore.location":
            path = kafka_config.pem_file(key, value)
            settings["ssl.certificate.location"] = path
            if b"PRIVATE KEY-----" in _read(path):
                settings["ssl.key.location"] = path
        elif key == "ssl.endpoint.identification.algorithm":
            settings[key] = "https" if value.strip().lower() == "https" else "none"
        elif key == "acks":
            continue  # read with the binder's requiredAcks
        elif key == "buffer.memory":
            settings["queue.buffering.max.kbytes"] = max(1, kafka_config.whole_number(key, value) // 1024)
        elif key == "max.poll.records":
            settings[key] = kafka_config.whole_number(key, value)
        elif key == "partition.assignment.strategy":
            settings[key] = _assignors(value)
        elif key == "security.protocol":
            settings[key] = value.strip().lower()
        elif kafka_config.withheld(key, value, WEAKENING):
            continue
        elif key in JAVA_ONLY:
            log.warning("Kafka property '%s' has no librdkafka meaning and is ignored", key)
        else:
            settings[RENAMED.get(key, key)] = value.strip()
    return settings


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read(1 << 20)


def _assignors(value: str) -> str:
    chosen = []
    for name in value.split(","):
        simple = name.strip().rsplit(".", 1)[-1].lower()
        if simple not in _ASSIGNORS and simple not in _ASSIGNORS.values():
            raise ConfigError(f"Kafka property 'partition.assignment.strategy': '{name.strip()}' is not supported "
                              "by librdkafka; use RangeAssignor, RoundRobinAssignor or CooperativeStickyAssignor")
        chosen.append(_ASSIGNORS.get(simple, simple))
    return ",".join(chosen)


def consumer_settings(properties: Properties, binding: InputBinding) -> dict[str, Any]:
    """librdkafka consumer settings: pass-through settings, then the group rules the binder enforces."""
    settings = client_settings(properties, "input", "consumer")
    settings.update({"auto.offset.reset": start_offset(properties, binding, settings.get("auto.offset.reset")),
                     "group.id": binding.group, "enable.auto.commit": False})
    return settings


def create(kind: Callable[[dict[str, Any]], Any], settings: dict[str, Any]) -> Any:
    """A client; a key librdkafka does not know is dropped with a warning, a bad value names its key."""
    while True:
        try:
            return kind({**settings, "logger": client_log, "error_cb": _client_error})
        except KafkaException as failure:
            error = failure.args[0]
            text = error.str()
            unknown = text.removeprefix("No such configuration property: ").strip('"')
            if text.startswith("No such configuration property") and unknown in settings:
                log.warning("Kafka property '%s' is not supported by librdkafka and is ignored", unknown)
                del settings[unknown]
                continue
            culprit = _culprit(kind, settings)
            raise ConfigError(f"Kafka client settings refused by librdkafka{culprit}: {text}") from None


def _culprit(kind: Callable[[dict[str, Any]], Any], settings: dict[str, Any]) -> str:
    """`` (property 'x')`` for the one setting librdkafka refuses alone (its message names its own alias)."""
    base = {key: settings[key] for key in ("bootstrap.servers", "group.id") if key in settings}
    for key, value in settings.items():
        try:
            kind({**base, key: value, "logger": _probe_log})
        except KafkaException:
            return f" (Kafka property '{key}')"
    return ""


_last_error: list[str] = [""]
_LOGGED_BY_CLIENT = (KafkaError._TRANSPORT, KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError._RESOLVE)


def _client_error(error: KafkaError) -> None:
    """librdkafka's own errors: retried by it, logged when they change (connection failures it logs itself)."""
    text = error.str()
    if error.fatal():
        log.error("Kafka client error (fatal): %s", text)
    elif text != _last_error[0] and error.code() not in _LOGGED_BY_CLIENT:
        log.warning("Kafka client error (retried by the client): %s", text)
    _last_error[0] = text


def partitions(client: Any, topic: str) -> set[int]:
    """The partitions of a topic that exists (empty when it does not); the client's Error when no broker answers."""
    found = metadata(client, topic).get(topic)
    return set(found.partitions) if found is not None and found.error is None else set()


def metadata(client: Any, topic: str | None = None, seconds: float = 10) -> dict[str, Any]:
    """Topic metadata, asked in short waits: a signal (SIGTERM) is handled between them, not after 10 s."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return client.list_topics(topic, timeout=0.5).topics
        except KafkaException as failure:
            if failure.args[0].code() not in _UNANSWERED or time.monotonic() > deadline:
                raise
            if not isinstance(client, _Consumer):  # its log lines (why no broker answers) now, not at exit
                client.poll(0)
