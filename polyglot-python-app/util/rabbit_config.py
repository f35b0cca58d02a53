"""The rabbit binder's properties and layout: connection, queue arguments and declarations as Spring's.

Kept apart from ``rabbit.py`` (the transport) so that reading the properties, for the README tables and the
image metadata, needs no AMQP client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .arguments import ConfigError, Properties, Property, canonical
from .logs import cut_secret, shown

RABBIT = "spring.rabbitmq"
HOST = Property(f"{RABBIT}.host", str, "localhost", "RabbitMQ host (rabbit binder).")
PORT = Property(f"{RABBIT}.port", int, None, "RabbitMQ port; default 5672, 5671 with SSL (rabbit binder).")
USERNAME = Property(f"{RABBIT}.username", str, "guest", "RabbitMQ user (rabbit binder).")
PASSWORD = Property(f"{RABBIT}.password", str, "guest", "RabbitMQ password (rabbit binder).", secret=True)
VIRTUAL_HOST = Property(f"{RABBIT}.virtual-host", str, None, "RabbitMQ virtual host; default `/` (rabbit binder).")
ADDRESSES = Property(f"{RABBIT}.addresses", str, None, "Comma list of `[amqp://|amqps://][user:pass@]host[:port]"
                     "[/vhost]`; when set, host and port are ignored (rabbit binder).")
SSL_ENABLED = Property(f"{RABBIT}.ssl.enabled", bool, False, "TLS to RabbitMQ (rabbit binder).")
SSL_VALIDATE = Property(f"{RABBIT}.ssl.validate-server-certificate", bool, True,
                        "Check the broker's certificate against the system's CAs (rabbit binder).")
SSL_VERIFY_HOSTNAME = Property(f"{RABBIT}.ssl.verify-hostname", bool, True,
                               "Check the broker's certificate names its host (rabbit binder).")
HEARTBEAT = Property(f"{RABBIT}.requested-heartbeat", int, 60, "Heartbeat, s (rabbit binder).")
CONNECTION_TIMEOUT = Property(f"{RABBIT}.connection-timeout", int, 10000, "Connection timeout, ms (rabbit binder).")
CONNECTION_PROPERTIES = (HOST, PORT, USERNAME, PASSWORD, VIRTUAL_HOST, ADDRESSES, SSL_ENABLED, SSL_VALIDATE,
                         SSL_VERIFY_HOSTNAME, HEARTBEAT, CONNECTION_TIMEOUT)
DEFAULT_PREFETCH = 1000  # Spring: 1, one round trip a message; at-least-once in batches needs many in flight
PROPERTIES = CONNECTION_PROPERTIES


def _rabbit(binding: str, side: str, name: str, kind: type, default: Any, description: str) -> Property:
    return Property(f"spring.cloud.stream.rabbit.bindings.{binding}.{side}.{name}", kind, default,
                    f"{description} (rabbit binder).", aliases=(f"spring.cloud.stream.rabbit.default.{side}.{name}",))


def queue_properties(binding: str, side: str) -> dict[str, Property]:
    """The Rabbit binder's queue properties of a binding (the producer's apply to its required groups)."""
    return {
        "auto_bind_dlq": _rabbit(binding, side, "autoBindDlq", bool, False,
                                 "Declare the DLQ `<queue>.dlq` on the DLX and dead-letter the queue to it"),
        "republish": _rabbit(binding, side, "republishToDlq", bool, True,
                             "Republish a failed message to the DLQ with x-exception-* headers; false: reject it"),
        "dlq_name": _rabbit(binding, side, "deadLetterQueueName", str, None, "DLQ name; default `<queue>.dlq`"),
        "dlx": _rabbit(binding, side, "deadLetterExchange", str, "DLX", "Dead-letter exchange"),
        "dlq_key": _rabbit(binding, side, "deadLetterRoutingKey", str, None,
                           "Dead-letter routing key; default the queue's name"),
        "binding_key": _rabbit(binding, side, "bindingRoutingKey", str, None,
                               "Routing key the queue is bound with; default `#` (the destination when partitioned)"),
        "ttl": _rabbit(binding, side, "ttl", int, None, "x-message-ttl of the queue, ms"),
        "expires": _rabbit(binding, side, "expires", int, None, "x-expires of the queue, ms"),
        "max_length": _rabbit(binding, side, "maxLength", int, None, "x-max-length of the queue"),
        "max_length_bytes": _rabbit(binding, side, "maxLengthBytes", int, None, "x-max-length-bytes of the queue"),
        "max_priority": _rabbit(binding, side, "maxPriority", int, None, "x-max-priority of the queue"),
        "lazy": _rabbit(binding, side, "lazy", bool, False, "x-queue-mode=lazy"),
        "overflow": _rabbit(binding, side, "overflowBehavior", str, None, "x-overflow of the queue"),
        "single_active": _rabbit(binding, side, "singleActiveConsumer", bool, False, "x-single-active-consumer"),
        "quorum": _rabbit(binding, side, "quorum.enabled", bool, False, "x-queue-type=quorum"),
        "dlq_ttl": _rabbit(binding, side, "dlqTtl", int, None, "x-message-ttl of the DLQ, ms"),
        "dlq_max_length": _rabbit(binding, side, "dlqMaxLength", int, None, "x-max-length of the DLQ"),
    }


def consumer_properties(binding: str = "input") -> dict[str, Property]:
    return {
        **queue_properties(binding, "consumer"),
        "prefetch": _rabbit(binding, "consumer", "prefetch", int, DEFAULT_PREFETCH,
                            f"Unacknowledged deliveries the broker sends ahead (Spring's default is 1; "
                            f"{DEFAULT_PREFETCH} here, as acknowledgements come in batches)"),
        "enable_batching": _rabbit(binding, "consumer", "enableBatching", bool, False,
                                   "Batch mode: hand the function up to batchSize deliveries, collected for at most "
                                   "receiveTimeout"),
        "batch_size": _rabbit(binding, "consumer", "batchSize", int, 10,
                              "Batch mode with enableBatching: messages a batch"),
        "receive_timeout": _rabbit(binding, "consumer", "receiveTimeout", int, 1000,
                                   "Batch mode with enableBatching: how long a batch is collected, ms"),
        "partitioned": Property(f"spring.cloud.stream.bindings.{binding}.consumer.partitioned", bool, False,
                                "Consume the partition queue `<destination>.<group>-<instanceIndex>`.",
                                binder="rabbit"),
    }


def producer_properties(binding: str) -> dict[str, Property]:
    return {
        **queue_properties(binding, "producer"),
        "required_groups": Property(f"spring.cloud.stream.bindings.{binding}.producer.requiredGroups", str, None,
                                    "Groups whose queues the producer declares and binds at start, so nothing "
                                    "sent before their consumers start is lost (Data Flow: the stream name).",
                                    binder="rabbit"),
        "batching_enabled": _rabbit(binding, "producer", "batchingEnabled", bool, False,
                                    "Publish Spring AMQP batches (`springBatchFormat: lengthHeader4`): several "
                                    "messages in one, with the first one's properties; Spring consumers split them"),
        "batch_size": _rabbit(binding, "producer", "batchSize", int, 100,
                              "With batchingEnabled: messages a batch"),
        "batch_buffer_limit": _rabbit(binding, "producer", "batchBufferLimit", int, 10000,
                                      "With batchingEnabled: bytes a batch (4 a message for its length included); "
                                      "a message alone may be larger"),
        "batch_timeout": _rabbit(binding, "producer", "batchTimeout", int, 5000,
                                 "With batchingEnabled: the longest a batch stays open, ms; here a batch is also "
                                 "published when the loop flushes (each poll), before its input is acknowledged"),
    }


def addresses(properties: Properties) -> list[tuple[str, int, str, str, str, bool]]:
    """``(host, port, user, password, virtual host, tls)`` of each broker, from ``addresses`` or host and port."""
    user, password = properties.get(USERNAME), properties.get(PASSWORD)
    vhost, tls = properties.get(VIRTUAL_HOST), properties.get(SSL_ENABLED)
    given = properties.get(ADDRESSES)
    entries: list[tuple[str, int | None, str, str, str | None, bool]] = []
    if given:
        for item in (a.strip() for a in given.split(",") if a.strip()):
            scheme, _, rest = item.rpartition("://")
            secure = tls or scheme == "amqps"
            creds, _, hostpart = rest.rpartition("@")
            u, _, p = creds.partition(":") if creds else (user, "", password)
            hostport, _, path = hostpart.partition("/")
            host, _, port_text = hostport.rpartition(":") if not hostport.endswith("]") else (hostport, "", "")
            if not host:
                host, port_text = hostport, ""
            if port_text and not (port_text.isascii() and port_text.isdigit()):
                hidden = properties.secret(ADDRESSES) or cut_secret(given, item)
                raise ConfigError(f"Invalid address {shown(item, hidden)} in property "
                                  f"'{ADDRESSES.name}': the port must be a number")
            entries.append((host.strip("[]"), int(port_text) if port_text else None, u or user, p or password,
                            path or vhost, secure))
    else:
        entries.append((properties.get(HOST), properties.get(PORT), user, password, vhost, tls))
    found = []
    for host, port, u, p, virtual_host, secure in entries:
        port = port or (5671 if secure else 5672)
        if not 0 < port < 65536:
            raise ConfigError(f"Invalid value '{port}' for property '{PORT.name}': expected 1 to 65535")
        found.append((host, port, u, p, "/" if virtual_host in (None, "") else virtual_host, secure))
    return found


def queue_arguments(settings: Mapping[str, Any], queue: str) -> dict[str, Any]:
    """The arguments Spring's provisioner declares a group queue with, for the same properties."""
    arguments: dict[str, Any] = {}
    if settings["auto_bind_dlq"]:
        arguments["x-dead-letter-exchange"] = settings["dlx"]
        arguments["x-dead-letter-routing-key"] = settings["dlq_key"] or queue
    for key, name in (("expires", "x-expires"), ("max_length", "x-max-length"),
                      ("max_length_bytes", "x-max-length-bytes"), ("max_priority", "x-max-priority"),
                      ("ttl", "x-message-ttl"), ("overflow", "x-overflow")):
        if settings[key] is not None:
            arguments[name] = settings[key]
    if settings["lazy"]:
        arguments["x-queue-mode"] = "lazy"
    if settings["single_active"]:
        arguments["x-single-active-consumer"] = True
    if settings["quorum"]:
        arguments["x-queue-type"] = "quorum"
    return arguments


def dlq_arguments(settings: Mapping[str, Any]) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    if settings["dlq_ttl"] is not None:
        arguments["x-message-ttl"] = settings["dlq_ttl"]
    if settings["dlq_max_length"] is not None:
        arguments["x-max-length"] = settings["dlq_max_length"]
    if settings["quorum"]:
        arguments["x-queue-type"] = "quorum"
    return arguments


def group_queue(destination: str, queue: str, key: str, settings: Mapping[str, Any],
                 base: str) -> Callable[[Any], None]:
    """A durable group queue bound to its exchange, with the DLQ and DLX when ``autoBindDlq``."""
    def declare(channel: Any) -> None:
        channel.exchange_declare(destination, "topic", durable=True)
        channel.queue_declare(queue, durable=True, arguments=queue_arguments(settings, queue) or None)
        channel.queue_bind(queue, destination, key)
        if settings["auto_bind_dlq"]:
            dlq = settings["dlq_name"] or f"{base}.dlq"
            channel.exchange_declare(settings["dlx"], "direct", durable=True)
            channel.queue_declare(dlq, durable=True, arguments=dlq_arguments(settings) or None)
            channel.queue_bind(dlq, settings["dlx"], settings["dlq_key"] or queue)
            if settings["republish"] and queue != base:
                channel.queue_bind(dlq, settings["dlx"], base)

    return declare


def unsupported(properties: Properties) -> list[str]:
    """The ``spring.cloud.stream.rabbit.*`` properties set that this binder does not read (a warning names them)."""
    known = {canonical(prop.name.split(f".{side}.", 1)[1])
             for side in ("consumer", "producer") for prop in queue_properties("x", side).values()}
    known |= {canonical(key) for key in ("prefetch", "enableBatching", "batchSize", "receiveTimeout", "batchingEnabled",
                                                 "batchBufferLimit", "batchTimeout")}
    found = []
    for key in properties.subtree("spring.cloud.stream.rabbit", as_written=True):
        parts = canonical(key).split(".")
        leaf = ".".join(parts[3:]) if parts[0] == "bindings" else ".".join(parts[2:]) if parts[0] == "default" else ""
        if leaf not in known:
            found.append(f"spring.cloud.stream.rabbit.{key}")
    return sorted(found)
