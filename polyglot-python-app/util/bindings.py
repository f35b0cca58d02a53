"""Input and output bindings as Spring Cloud Stream configures them, and the topics they need."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from .arguments import ConfigError, Properties, Property

BINDER = "spring.cloud.stream.kafka.binder"  # Kafka binder properties' prefix

log = logging.getLogger(__name__)

STREAM_NAME = Property("spring.cloud.dataflow.stream.name", str, None, "Stream name, set by Data Flow.")
APP_LABEL = Property("spring.cloud.dataflow.stream.app.label", str, None, "App label in the stream, set by Data Flow.")
INSTANCE_INDEX = Property("spring.cloud.stream.instanceIndex", int, 0,
                          "Index of this instance, for static partition assignment.", aliases=("instance.index",))
INSTANCE_COUNT = Property("spring.cloud.stream.instanceCount", int, 1,
                          "Number of instances, for static partition assignment.")
AUTO_CREATE_TOPICS = Property(f"{BINDER}.autoCreateTopics", bool, True, "Create missing topics at start.")
MIN_PARTITION_COUNT = Property(f"{BINDER}.minPartitionCount", int, 1,
                               "Fewest partitions of the topics the app creates (or grows, with autoAddPartitions).")
AUTO_ADD_PARTITIONS = Property(f"{BINDER}.autoAddPartitions", bool, False,
                               "Grow a topic that has fewer partitions than the bindings need; false: fail at start.")
REPLICATION_FACTOR = Property(f"{BINDER}.replicationFactor", int, -1,
                              "Replication factor of created topics (-1: the broker's default).")
PROPERTIES = (STREAM_NAME, APP_LABEL, INSTANCE_INDEX, INSTANCE_COUNT, AUTO_CREATE_TOPICS, AUTO_ADD_PARTITIONS,
              MIN_PARTITION_COUNT, REPLICATION_FACTOR)
_HEADER_KEY = re.compile(r"""^headers(?:\[\s*['"]([^'"]+)['"]\s*\]|\.(\w+))$""")


def start_offset(properties: Properties, binding: InputBinding, configured: str | None) -> str:
    """Where the group starts without committed offsets: ``...consumer.startOffset`` when set, else a
    pass-through ``auto.offset.reset``, else the binding's default (earliest with a group, latest without)."""
    if configured is None or properties.raw(input_properties()["start_offset"].name):
        return binding.start_offset
    return configured


def _binding(binding: str, key: str, *args: Any, **kwargs: Any) -> Property:
    return Property(f"spring.cloud.stream.bindings.{binding}.{key}", *args, **kwargs)


def _kafka_binding(binding: str, key: str, *args: Any, **kwargs: Any) -> Property:
    return Property(f"spring.cloud.stream.kafka.bindings.{binding}.{key}", *args, **kwargs)


def input_properties(group_fallback: Property | None = None, binding: str = "input") -> dict[str, Property]:
    fallback = f"the value of `{group_fallback.name}`, else " if group_fallback else ""
    return {
        "destination": _binding(binding, "destination", str, None, "Topic(s) to consume, comma separated.",
                                required=True),
        "group": _binding(binding, "group", str, None,
                          f"Consumer group; absent: {fallback}an anonymous group that starts at latest."),
        "content_type": _binding(binding, "contentType", str, "application/json",
                                 "Content type of records that carry no contentType header."),
        "concurrency": _binding(binding, "consumer.concurrency", int, 1,
                                "Consumer threads of a Spring app; here it only sizes a created input topic "
                                "(instanceCount x concurrency partitions): the app consumes in one thread.",
                                binder="kafka"),
        "max_attempts": _binding(binding, "consumer.maxAttempts", int, 3,
                                 "Attempts to process a record before it goes to the DLQ or is skipped."),
        "back_off_initial": _binding(binding, "consumer.backOffInitialInterval", int, 1000,
                                     "First retry back-off, ms."),
        "back_off_multiplier": _binding(binding, "consumer.backOffMultiplier", float, 2.0, "Back-off multiplier."),
        "back_off_max": _binding(binding, "consumer.backOffMaxInterval", int, 10000, "Longest retry back-off, ms."),
        "batch_mode": _binding(binding, "consumer.batchMode", bool, False,
                               "Hand the function a list: what one poll returns (annotate its first parameter "
                               "list[...])."),
        "header_mode": _binding(binding, "consumer.headerMode", str, "headers",
                                "headers: read record headers; none: ignore them.", choices=("headers", "none")),
        "enable_dlq": _kafka_binding(binding, "consumer.enableDlq", bool, False,
                                     "Send records that keep failing to a dead-letter topic."),
        "dlq_name": _kafka_binding(binding, "consumer.dlqName", str, None,
                                   "Dead-letter topic; default `error.<destination>.<group>`."),
        "start_offset": _kafka_binding(binding, "consumer.startOffset", str, None,
                                       "earliest or latest; default earliest for a named group, latest without.",
                                       choices=("earliest", "latest")),
        "auto_rebalance": _kafka_binding(binding, "consumer.autoRebalanceEnabled", bool, True,
                                         "false: fixed partitions from instanceIndex/instanceCount."),
        "commit_recovered": _kafka_binding(binding, "consumer.txCommitRecovered", bool, True,
                                           "With transactions: a dead-lettered record's offset commits in its "
                                           "copy's transaction.", binder="kafka"),
    }


def output_properties(binding: str) -> dict[str, Property]:
    return {
        "destination": _binding(binding, "destination", str, None, "Topic to produce to.", required=True),
        "content_type": _binding(binding, "contentType", str, None,
                                 "Content type written on records; default: the payload's own."),
        "partition_key": _binding(binding, "producer.partitionKeyExpression", str, None,
                                  "Partition by payload or headers['name']."),
        "partition_count": _binding(binding, "producer.partitionCount", int, 1,
                                    "Partitions to spread over (the topic's count when larger)."),
        "header_mode": _binding(binding, "producer.headerMode", str, "headers",
                                "headers: write record headers; none: write none.", choices=("headers", "none")),
    }


@dataclass(frozen=True)
class InputBinding:
    destinations: tuple[str, ...]
    group: str
    group_from: str  # the property the group came from, or "" when anonymous
    anonymous: bool
    start_offset: str
    content_type: str
    max_attempts: int
    back_off: tuple[float, float, float]  # initial s, multiplier, max s
    dlq: bool
    dlq_name: str | None
    auto_rebalance: bool
    headers: bool
    concurrency: int
    batch_mode: bool = False
    commit_recovered: bool = True

    def dlq_topic(self, destination: str) -> str:
        return self.dlq_name or f"error.{destination}.{self.group}"


@dataclass(frozen=True)
class OutputBinding:
    name: str
    destination: str
    content_type: str | None
    partition_key: str | None  # "payload", or a header name
    partition_count: int
    headers: bool


def resolve_input(properties: Properties, group_fallback: Property | None = None) -> InputBinding:
    """The input binding; without a group, ``group_fallback``'s value (if set) is the group."""
    declared = input_properties(group_fallback)
    p = {key: properties.get(prop) for key, prop in declared.items()}
    destinations = tuple(d.strip() for d in p["destination"].split(",") if d.strip())
    if not destinations:
        raise ConfigError(f"Property '{declared['destination'].name}' names no topic")
    for key in ("max_attempts", "concurrency"):
        if p[key] < 1:
            raise ConfigError(f"Invalid value '{p[key]}' for property '{declared[key].name}': expected 1 or more")
    group, group_from = p["group"], declared["group"].name
    if group is None and group_fallback is not None:
        group, group_from = properties.get(group_fallback), group_fallback.name
    anonymous = group is None
    if anonymous and p["enable_dlq"]:
        raise ConfigError(f"DLQ support is not available for anonymous subscriptions: set "
                          f"'{declared['group'].name}' or turn '{declared['enable_dlq'].name}' off")
    return InputBinding(
        destinations=destinations,
        group=group or f"anonymous.{uuid.uuid4()}",
        group_from="" if anonymous else group_from,
        anonymous=anonymous,
        start_offset=p["start_offset"] or ("latest" if anonymous else "earliest"),
        content_type=p["content_type"],
        max_attempts=p["max_attempts"],
        back_off=(p["back_off_initial"] / 1000, p["back_off_multiplier"], p["back_off_max"] / 1000),
        dlq=p["enable_dlq"],
        dlq_name=p["dlq_name"],
        auto_rebalance=p["auto_rebalance"],
        headers=p["header_mode"] == "headers",
        concurrency=p["concurrency"],
        batch_mode=p["batch_mode"],
        commit_recovered=p["commit_recovered"],
    )


def resolve_output(properties: Properties, binding: str) -> OutputBinding:
    declared = output_properties(binding)
    p = {key: properties.get(prop) for key, prop in declared.items()}
    return OutputBinding(
        name=binding,
        destination=p["destination"].strip(),
        content_type=p["content_type"],
        partition_key=partition_key(p["partition_key"], declared["partition_key"].name),
        partition_count=max(1, p["partition_count"]),
        headers=p["header_mode"] == "headers",
    )


def partition_key(expression: str | None, name: str) -> str | None:
    """``payload`` or ``headers['x']``/``headers.x`` (the header name); other SpEL is refused."""
    if expression is None:
        return None
    text = expression.strip()
    if text == "payload":
        return "payload"
    match = _HEADER_KEY.match(text)
    if match:
        return match.group(1) or match.group(2)
    raise ConfigError(f"Unsupported value '{text}' for property '{name}': use payload or headers['name']")


def provision(properties: Properties, client: Any, topics: dict[str, tuple[int, str | None]]) -> None:
    """Create missing topics and grow short ones as the binder's provisioner does, through ``client``.

    ``topics`` maps each topic to the partitions its binding needs and the property that asks for them
    (None: fewer partitions are tolerated). A missing topic gets ``max(minPartitionCount, needed)``;
    an existing one with fewer than needed grows with ``autoAddPartitions``, is tolerated, or is a
    ConfigError naming the property and both counts. An admin failure is a warning: the topic may exist.
    """
    if not properties.get(AUTO_CREATE_TOPICS) or not topics:
        return
    minimum = properties.get(MIN_PARTITION_COUNT)
    grow = properties.get(AUTO_ADD_PARTITIONS)
    try:
        existing = client.topic_partitions(list(topics))
        missing = {topic: max(minimum, needed) for topic, (needed, _) in topics.items() if topic not in existing}
        if missing:
            client.create_topics(missing, properties.get(REPLICATION_FACTOR))
        for topic, (needed, asked_by) in topics.items():
            found = existing.get(topic)
            wanted = max(minimum, needed) if grow else needed
            if found is None or found >= wanted:
                continue
            if grow:
                try:
                    client.grow(topic, wanted)
                except client.Error as error:
                    raise ConfigError(f"Cannot grow topic '{topic}' from {found} to {wanted} partitions "
                                      f"('{AUTO_ADD_PARTITIONS.name}' is on): {error}") from None
                log.info("Grew topic '%s' from %d to %d partitions", topic, found, wanted)
            elif asked_by is None:
                log.warning("Topic '%s' has %d partition(s) for %d consumer(s): %d will be idle", topic, found,
                            needed, needed - found)
            else:
                raise ConfigError(too_few_partitions(topic, needed, found, asked_by))
    except client.Error as error:
        log.warning("Could not provision topics %s: %s", ", ".join(topics), error)


def too_few_partitions(topic: str, needed: int, found: int, asked_by: str) -> str:
    """Spring's start-up failure for a topic with fewer partitions than a binding needs."""
    return (f"Property '{asked_by}' asks for {needed} partitions, but topic '{topic}' has {found}: increase the "
            f"topic's partition count or set '{AUTO_ADD_PARTITIONS.name}=true'")
