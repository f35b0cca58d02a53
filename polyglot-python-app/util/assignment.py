"""The input's partitions: the group's assignment as it is logged, or a static one from the instance index."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .arguments import ConfigError, Properties
from .bindings import INSTANCE_COUNT, INSTANCE_INDEX, InputBinding
from .stalls import TP

log = logging.getLogger("util.binder")  # the loop's own lines


def static_assignment(properties: Properties, source: InputBinding, consumer: Any) -> list[TP]:
    """``autoRebalanceEnabled=false``: the partitions whose number modulo instanceCount is instanceIndex."""
    index, count = properties.get(INSTANCE_INDEX), properties.get(INSTANCE_COUNT)
    if not 0 <= index < count:
        raise ConfigError(f"Property '{INSTANCE_INDEX.name}' ({index}) must be below "
                          f"'{INSTANCE_COUNT.name}' ({count})")
    chosen = [(topic, p) for topic in source.destinations
              for p in sorted(consumer.partitions(topic)) if p % count == index]
    log.info("Static assignment (instance %d of %d): %s", index, count, names(chosen))
    return chosen


def assigned(partitions: list[TP]) -> None:
    log.info("Partitions assigned: %s", names(partitions) or "none")


def names(partitions: Sequence[TP]) -> str:
    return ", ".join(f"{topic}-{partition}" for topic, partition in sorted(partitions))
