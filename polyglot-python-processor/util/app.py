"""A stream app's start-up and life: its properties, logging, actuator, signals, connect, loop, exit status."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import kafka_config, kafka_lag, logs, rabbit_config
from .actuator import PROPERTIES as ACTUATOR_PROPERTIES
from .actuator import Actuator
from .arguments import CONFIG_PROPERTIES, ConfigError, Properties, Property
from .binder import Binder
from .bindings import APP_LABEL, STREAM_NAME, input_properties, output_properties
from .bindings import PROPERTIES as BINDING_PROPERTIES
from .client_errors import FatalError
from .metrics import PROPERTIES as METRICS_PROPERTIES
from .metrics import Metrics, common_tags
from .shutdown import StartInterruptedError
from .transport import DEFAULT_BINDER

log = logging.getLogger(__name__)

COMMON_PROPERTIES: tuple[Property, ...] = (*kafka_config.PROPERTIES, *kafka_lag.PROPERTIES, *BINDING_PROPERTIES,
                                           *ACTUATOR_PROPERTIES, *METRICS_PROPERTIES, *logs.PROPERTIES,
                                           *CONFIG_PROPERTIES)

# Kafka client settings pass through under these prefixes (``<key>`` is a Kafka client key).
PASS_THROUGH = ("spring.cloud.stream.kafka.binder.configuration.<key>",
                "spring.cloud.stream.kafka.binder.consumerProperties.<key>",
                "spring.cloud.stream.kafka.binder.producerProperties.<key>",
                "spring.cloud.stream.kafka.bindings.<binding>.consumer.configuration.<key>",
                "spring.cloud.stream.kafka.bindings.<binding>.producer.configuration.<key>",
                "spring.cloud.stream.kafka.binder.transaction.producer.configuration.<key>")

# Makes the app's Binder from its properties, its options' values and its metrics.
Create = Callable[[Properties, dict[str, Any], Metrics], Binder]


def app_properties(outputs: Sequence[str], options: Mapping[str, Property],
                   group_fallback: Property | None = None, has_input: bool = True) -> list[Property]:
    """Every property an app with these output bindings reads: its own first, then the binders'."""
    bindings = [*(input_properties(group_fallback).values() if has_input else ()),
                *(p for name in outputs for p in output_properties(name).values())]
    rabbit = [*(rabbit_config.consumer_properties().values() if has_input else ()),
              *(p for name in outputs for p in rabbit_config.producer_properties(name).values())]
    return [*options.values(), *bindings, DEFAULT_BINDER, *COMMON_PROPERTIES, *rabbit_config.PROPERTIES, *rabbit]


def serve(create: Create, options: Mapping[str, Property], app_type: str) -> None:
    """Read the properties, start the actuator, connect and loop until SIGTERM; exit non-zero on failure."""
    logs.start_logging()
    try:
        properties, values = logs.read_properties(options)
        metrics = Metrics(common_tags(properties, app_type))
        binder = create(properties, values, metrics)
        actuator = Actuator({"binder": binder.loop_check, "broker": binder.broker_check,
                             "delivery": binder.delivery_check}, ("binder",),
                            lambda: _info(properties, binder, options, values), metrics.exposition)
        actuator.start(properties)
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        sys.exit(1)
    signal.signal(signal.SIGTERM, binder.request_stop)
    signal.signal(signal.SIGINT, binder.request_stop)
    try:
        binder.connect()
        binder.run()
    except StartInterruptedError:
        log.info("Stopped while connecting to the brokers: nothing was consumed")
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        sys.exit(1)
    except binder.client.Error as error:
        log.error("Broker error at %s (property '%s'): %s", ",".join(binder.servers),
                  binder.client.servers_property, error)
        sys.exit(1)
    except FatalError as error:
        log.error("Stopping: %s", error)
        sys.exit(1)
    finally:
        binder.state = "stopped" if binder.stop.is_set() else "failed"
        binder.close()
        actuator.stop()
    log.info("Stopped cleanly")


def _info(properties: Properties, binder: Binder, options: Mapping[str, Property],
          values: Mapping[str, Any]) -> dict[str, Any]:
    """``/actuator/info``: names, bindings and config files only; no property that could hold a secret."""
    source, bindings = binder.source, {}
    if source is not None:
        bindings["input"] = {"destination": ",".join(source.destinations), "group": source.group,
                             "anonymous": source.anonymous, "startOffset": source.start_offset, "dlq": source.dlq}
    bindings.update({name: {"destination": sink.destination, "partitionKey": sink.partition_key,
                            "partitionCount": sink.partition_count} for name, sink in binder.outputs.items()})
    return {
        "app": {"name": Path(sys.argv[0]).stem, "version": os.environ.get("APP_VERSION", "dev")},
        "stream": {"name": properties.get(STREAM_NAME), "label": properties.get(APP_LABEL)},
        "bindings": bindings,
        "config": {"files": [str(path) for path in properties.files], "profiles": properties.profiles},
        "properties": {prop.name: values[name] for name, prop in options.items() if not properties.secret(prop)},
    }
