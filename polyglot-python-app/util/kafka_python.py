"""The kafka-python transport: the operations of ``transport.py`` on kafka-python, and its settings."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata
from kafka import TopicPartition as _TopicPartition
from kafka.admin import NewPartitions, NewTopic
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from kafka.errors import (
    CommitFailedError,
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    UnknownError,
    UnsupportedCodecError,
    UnsupportedForMessageFormatError,
)
from kafka.serializer import Serializer

from . import kafka_config, kafka_records  # noqa: F401 - kafka_records mends kafka-python's record reading
from .arguments import ConfigError, Properties
from .bindings import InputBinding, start_offset

log = logging.getLogger(__name__)

NAME = "the kafka binder (kafka-python)"
# Refusals about the record itself: it takes its error path. Any other failure of a send is the broker's.
RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, CorruptRecordError, InvalidRecordError,
                 InvalidTimestampError, UnsupportedForMessageFormatError)
SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError)
NULL_HEADER = b""  # kafka-python writes no null header value: such a header is forwarded with an empty one
TP = tuple[str, int]
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


def about_the_record(error: BaseException) -> bool:
    """A send failure the record itself caused: the client refused it (any non-Kafka error) or the broker did."""
    return isinstance(error, RECORD_ERRORS) or not isinstance(error, KafkaError)


def too_large(error: BaseException) -> bool:
    return isinstance(error, SIZE_ERRORS)


def outcome(future: Any) -> Exception | None:
    """None once acknowledged; else why not (still unfinished when the flush ended: a timeout)."""
    if future.succeeded():
        return None
    return future.exception if future.is_done else KafkaTimeoutError("not acknowledged in time")


class _NullKey(Serializer):
    """Lets a record with neither key nor value (a tombstone) through kafka-python, which refuses both None."""

    NULL = object()

    def serialize(self, topic: str, headers: Any, key: Any) -> Any:
        return None if key is self.NULL else key


class Producer:
    """One producer; ``send`` returns a future that ``outcome`` reads once flushed."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.max_request_size: int = settings.get("max_request_size", KafkaProducer.DEFAULT_CONFIG["max_request_size"])
        try:
            self._producer = KafkaProducer(key_serializer=_NullKey(), **settings)
        except (ValueError, RuntimeError, AssertionError) as error:  # a setting kafka-python refuses (a codec)
            raise ConfigError(f"Kafka producer setting refused by kafka-python: {error}") from None
        self._send = self._producer.send

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None,
             partition: int | None) -> Any:
        if key is None and value is None:
            key = _NullKey.NULL
        return self._send(topic, value=value, key=key, headers=headers, partition=partition)

    def quick(self, topic: str, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> Any:
        return self.send(topic, value, None, headers, None)

    def flush(self, seconds: float) -> bool:
        """True once every send is acknowledged or failed; False when ``seconds`` ran out first."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
                return True
            except KafkaTimeoutError:
                return False
            except UnknownError:  # "Future not done": a batch the broker refused as too large was split and sent
                if time.monotonic() >= deadline:  # again while the flush waited for it; its parts are waited for
                    return False

    def settled(self) -> bool:
        return False  # a future must be read to know: every handle is read

    def partition_count(self, topic: str) -> int:
        return len(self._producer.partitions_for(topic) or {0})

    def close(self, seconds: float) -> None:
        try:
            self._producer.close(timeout=seconds)
        except KafkaTimeoutError:  # sends still unacknowledged: uncommitted, they come again
            log.info("Closed the producer with sends not acknowledged: their records were not committed")


class Consumer:
    """The input binding's consumer: batches per partition, synchronous commits, seek, pause and resume."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._consumer = KafkaConsumer(**settings)
        self.max_poll_interval = self._consumer.config["max_poll_interval_ms"] / 1000
        self.damaged: dict[TP, tuple[int, str]] = {}

    def subscribe(self, topics: Iterable[str], assigned: Callable[[list[TP]], None],
                  revoked: Callable[[list[TP]], None]) -> None:
        self._consumer.subscribe(list(topics), listener=_Listener(assigned, revoked))

    def partitions(self, topic: str) -> set[int]:
        return self._consumer.partitions_for_topic(topic) or {0}

    def assign(self, partitions: list[TP]) -> None:
        self._consumer.assign([_TopicPartition(*tp) for tp in partitions])

    def poll(self, seconds: float) -> Mapping[TP, list[Any]]:
        """Records by partition (kafka-python's TopicPartition is a ``(topic, partition)`` tuple).

        A batch that fails its CRC check (or cannot be parsed, or is compressed with a codec this client lacks) is
        raised by kafka-python before any record of it is returned: its partition is ``damaged`` at its position,
        so the loop stalls it there.
        """
        try:
            return self._consumer.poll(timeout_ms=int(seconds * 1000))
        except KafkaConnectionError:  # the client reconnects by itself (with back-off); health says why meanwhile
            return {}
        except (CorruptRecordError, UnsupportedCodecError) as error:
            found = _PARTITION.search(str(error))
            partitions = [_TopicPartition(found[1], int(found[2]))] if found else list(self._consumer.assignment())
            for tp in partitions:  # unnamed (a record that cannot be parsed): every partition, fetched again
                self.damaged.setdefault((tp.topic, tp.partition), (self._consumer.position(tp), str(error)))
            # kafka-python keeps the failed batch's records as pending and, once its partition was paused and
            # resumed, never fetches that partition again: drop them, so the seek after the stall fetches anew.
            pending = getattr(self._consumer._fetcher, "_next_partition_records", None)
            if pending is not None:
                pending.drain()
            return {}

    def commit(self, offsets: Mapping[TP, int]) -> str | None:
        """Commit, waiting for the broker; why not when it failed (the records will come again)."""
        try:
            self._consumer.commit({_TopicPartition(*tp): OffsetAndMetadata(offset, "", -1)
                                   for tp, offset in offsets.items()}, timeout_ms=10_000)
        except CommitFailedError:
            return "the group rebalanced"
        except KafkaError as error:
            return str(error)
        return None

    def seek(self, tp: TP, offset: int) -> None:
        self._consumer.seek(_TopicPartition(*tp), offset)

    def pause(self, tp: TP) -> None:
        self._consumer.pause(_TopicPartition(*tp))

    def resume(self, tp: TP) -> None:
        self._consumer.resume(_TopicPartition(*tp))

    def close(self, seconds: float) -> None:
        self._consumer.close(autocommit=False, timeout_ms=int(seconds * 1000))


_PARTITION = re.compile(r"TopicPartition\(topic='(.*?)', partition=(\d+)\)")


class _Listener(ConsumerRebalanceListener):
    def __init__(self, assigned: Callable[[list[TP]], None], revoked: Callable[[list[TP]], None]) -> None:
        self.assigned, self.revoked = assigned, revoked

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned(sorted((tp.topic, tp.partition) for tp in assigned))


class Client(kafka_config.KafkaClient):
    """kafka-python clients configured from the binder's properties."""

    name = NAME
    Error = KafkaError
    null_header = NULL_HEADER
    about_the_record = staticmethod(about_the_record)
    too_large = staticmethod(too_large)
    outcome = staticmethod(outcome)

    def producer(self, binding: str | None, carries: InputBinding | None = None) -> Producer:
        """The producer of an output binding; with ``carries``, the DLQ producer of that input binding.

        A dead-lettered record is as big as the input topic let it be: the DLQ producer sends any record
        the consumer can fetch.
        """
        settings = client_settings(self.properties, binding, "producer")
        if carries is not None:
            fetchable = consumer_settings(self.properties, carries).get(
                "fetch_max_bytes", KafkaConsumer.DEFAULT_CONFIG["fetch_max_bytes"])
            settings["max_request_size"] = max(settings.get("max_request_size", 0), fetchable)
        return Producer(settings)

    def consumer(self, binding: InputBinding) -> tuple[Consumer, str]:
        """The input binding's consumer and the offset it starts at when its group has none."""
        settings = consumer_settings(self.properties, binding)
        return Consumer(settings), settings["auto_offset_reset"]

    def offsets(self, group: str) -> LagOffsets:
        """The lag gauge's consumer (``kafka_lag.py``): the binder's consumer settings, as Spring's, in ``group``."""
        return LagOffsets({**client_settings(self.properties, None, "consumer"), "group_id": group,
                           "enable_auto_commit": False})

    # -- topics ---------------------------------------------------------------------------------
    def topic_partitions(self, topics: list[str]) -> dict[str, int]:
        """The partition count of each of ``topics`` that exists."""
        with _Admin(self.properties) as admin:
            present = set(admin.list_topics()) & set(topics)
            described = admin.describe_topics(sorted(present)) if present else []
        return {d["name"]: len(d["partitions"]) for d in described}

    def create_topics(self, wanted: Mapping[str, int], replication: int) -> None:
        with _Admin(self.properties) as admin:
            result = admin.create_topics([NewTopic(topic, count, replication) for topic, count in wanted.items()],
                                         raise_errors=False)
        for topic in result["topics"]:
            if topic["error_code"] == 0:
                log.info("Created topic '%s' with %s partition(s)", topic["name"], topic["num_partitions"])
            elif topic["error_code"] != 36:  # TOPIC_ALREADY_EXISTS: another instance was first
                log.warning("Could not create topic '%s': %s", topic["name"], topic["error_message"])

    def grow(self, topic: str, total: int) -> None:
        with _Admin(self.properties) as admin:
            admin.create_partitions({topic: NewPartitions(total_count=total)})


class LagOffsets:
    """The offsets the lag gauge reads, on a consumer of the group's own that never joins it."""

    TIMEOUT_MS = 10_000  # a request may take

    def __init__(self, settings: dict[str, Any]) -> None:
        self._consumer = KafkaConsumer(**settings)

    def partitions(self, topic: str) -> list[int]:
        return sorted(self._consumer.partitions_for_topic(topic))

    def watermarks(self, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
        tps = [_TopicPartition(topic, p) for p in partitions]
        ends = self._consumer.end_offsets(tps, self.TIMEOUT_MS)
        beginnings = self._consumer.beginning_offsets(tps, self.TIMEOUT_MS)
        return {tp.partition: (beginnings[tp], ends[tp]) for tp in tps}

    def committed(self, topic: str, partitions: list[int]) -> dict[int, int | None]:
        return {p: self._consumer.committed(_TopicPartition(topic, p), timeout_ms=self.TIMEOUT_MS) for p in partitions}

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=1000)


class _Admin:
    def __init__(self, properties: Properties) -> None:
        self.admin = KafkaAdminClient(**client_settings(properties, None, "admin"))

    def __enter__(self) -> KafkaAdminClient:
        return self.admin

    def __exit__(self, *_: object) -> None:
        self.admin.close()


def consumer_settings(properties: Properties, binding: InputBinding) -> dict[str, Any]:
    """kafka-python consumer arguments: pass-through settings, then the group rules the binder enforces."""
    settings = client_settings(properties, "input", "consumer")
    settings.update(auto_offset_reset=start_offset(properties, binding, settings.get("auto_offset_reset")),
                    group_id=binding.group, enable_auto_commit=False)
    return settings


# -- settings -----------------------------------------------------------------------------------------
def client_settings(properties: Properties, binding: str | None, role: str) -> dict[str, Any]:
    """kafka-python arguments for a binding's consumer or producer (or the admin client)."""
    kafka = kafka_config.java_settings(properties, binding, role)
    settings: dict[str, Any] = {"bootstrap_servers": kafka_config.bootstrap_servers(properties)}
    if role == "producer":
        acks = kafka_config.required_acks(properties, kafka)
        settings["acks"] = acks if acks == "all" else int(acks)
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
