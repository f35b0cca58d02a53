"""The rabbit binder's one AMQP connection: its parameters, reconnection with back-off, and declarations."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import pika
from pika.exceptions import AMQPError

from .arguments import ConfigError, Properties
from .rabbit_config import CONNECTION_TIMEOUT, HEARTBEAT, SSL_VALIDATE, SSL_VERIFY_HOSTNAME, addresses

log = logging.getLogger(__name__)

AMQP_SHORT = 65535  # the largest prefetch count and heartbeat AMQP carries
RECONNECT_FIRST, RECONNECT_LONGEST = 1.0, 30.0


class SendError(Exception):
    """A publish the broker did not confirm: a nack, a lost connection, or no confirm in time."""


class RecordError(SendError):
    """A publish refused for the message itself (too large, a header AMQP cannot carry)."""



def connection_parameters(properties: Properties) -> tuple[list[pika.ConnectionParameters], list[str]]:
    """pika's parameters, one per address, and the ``host:port`` list (no credentials) for logs and health."""
    parameters, servers = [], []
    heartbeat = within(properties.get(HEARTBEAT), HEARTBEAT.name, 0, AMQP_SHORT)  # 0: none
    timeout = within(properties.get(CONNECTION_TIMEOUT), CONNECTION_TIMEOUT.name, 0, 2**31 - 1)  # 0: no limit
    for host, port, user, password, virtual_host, secure in addresses(properties):
        options: dict[str, Any] = {}
        if secure:
            context = ssl.create_default_context()
            if not properties.get(SSL_VALIDATE):
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            elif not properties.get(SSL_VERIFY_HOSTNAME):
                context.check_hostname = False
            options["ssl_options"] = pika.SSLOptions(context, host)
        parameters.append(pika.ConnectionParameters(
            host=host, port=port, virtual_host=virtual_host, credentials=pika.PlainCredentials(user, password),
            heartbeat=heartbeat, blocked_connection_timeout=60, socket_timeout=timeout / 1000 or None,
            connection_attempts=1, **options))
        servers.append(f"{host}:{port}")
    return parameters, servers


def within(value: int, name: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ConfigError(f"Invalid value '{value}' for property '{name}': expected {low} to {high}")
    return value


class Connection:
    """The app's one AMQP connection: declarations, consumer channels, the confirmed publishing channel."""

    def __init__(self, parameters: list[pika.ConnectionParameters], servers: list[str]) -> None:
        self.parameters, self.servers = parameters, servers
        self.connection: pika.BlockingConnection | None = None
        self.generation = 0  # a new one at every connection: older delivery tags and publish handles are void
        self.problem: str | None = "not connected yet"
        self.blocked: str | None = None  # the broker blocks publishing (a memory or disk alarm): health DOWN
        self.declarations: list[Callable[[Any], None]] = []  # run again on every connection
        self._retry_at, self._pause = 0.0, RECONNECT_FIRST / 2
        self.publisher: Any = None  # its publisher, voided with it
        self.frame_max = 131_072

    def open(self) -> None:
        """Connect (trying each address), declare everything; AMQPError when no broker answers."""
        self.connection = pika.BlockingConnection(self.parameters)
        self.generation += 1
        self.blocked = None
        self.connection.add_on_connection_blocked_callback(self._blocked)
        self.connection.add_on_connection_unblocked_callback(self._unblocked)
        self.frame_max = self.connection._impl.params.frame_max
        channel = self.connection.channel()
        for declare in self.declarations:
            declare(channel)
        channel.close()
        self.problem, self._pause = None, RECONNECT_FIRST / 2
        log.info("Connected to RabbitMQ at %s", ",".join(self.servers))

    def _blocked(self, _connection: Any, frame: Any) -> None:
        self.blocked = f"RabbitMQ blocks publishing ({getattr(frame.method, 'reason', '') or 'a resource alarm'})"
        log.warning("%s: sends wait until it unblocks", self.blocked)

    def _unblocked(self, _connection: Any, _frame: Any) -> None:
        if self.blocked is not None:
            log.info("RabbitMQ unblocked publishing")
        self.blocked = None

    def declare(self, declaration: Callable[[Any], None]) -> None:
        """Run a declaration now and again after every reconnection (as Spring's RabbitAdmin does)."""
        self.declarations.append(declaration)
        channel = self.connection.channel()
        try:
            declaration(channel)
        finally:
            if channel.is_open:
                channel.close()

    def lost(self, error: BaseException) -> None:
        """The connection failed: everything of this generation is void until ``revive`` reconnects."""
        if self.problem is None:
            log.warning("Lost the connection to RabbitMQ at %s (%s): reconnecting", ",".join(self.servers),
                        describe(error))
        self.problem = f"RabbitMQ connection lost ({describe(error)})"
        self.generation += 1
        if self.publisher is not None:
            self.publisher.void()
        try:
            if self.connection is not None and self.connection.is_open:
                self.connection.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail any way
            pass
        self.connection = None
        self._retry_at = 0.0

    def revive(self) -> bool:
        """Reconnect when due (back-off doubling to 30 s); True when connected."""
        if self.connection is not None and self.problem is None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            self.open()
            return True
        except AMQPError as error:
            self._pause = min(self._pause * 2, RECONNECT_LONGEST)
            self._retry_at = time.monotonic() + self._pause
            self.problem = f"RabbitMQ unreachable at {','.join(self.servers)} ({describe(error)})"
            log.warning("%s: trying again in %.0f s", self.problem, self._pause)
            if self.connection is not None:
                self.lost(error)
            return False

    def pump(self, seconds: float) -> None:
        """Let pika read and dispatch for up to ``seconds``; a failure marks the connection lost."""
        if self.connection is None:
            return
        try:
            self.connection.process_data_events(time_limit=seconds)
        except (AMQPError, OSError) as error:
            self.lost(error)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
