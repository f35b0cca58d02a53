"""A source: the app's function polled on a fixed delay, what it returns sent to ``output``.

As Spring's polled suppliers: ``spring.integration.poller.fixed-delay`` between polls and up to
``max-messages-per-poll`` calls a poll. Each poll's sends are flushed before the next; a send the
broker refuses for its own state (authorisation, the topic, a timeout) is sent again with back-off,
the function not called meanwhile, health DOWN; one refused for the message's own sake (too large) is
logged and dropped, as nothing could ever send it. With transactions, a poll's sends commit together; one
failure aborts them all, and all but a dropped one are sent again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import transactions
from .arguments import ConfigError, Properties, Property
from .binder import Binder
from .bindings import OutputBinding
from .client_errors import AbortError, FatalError
from .headers import outbound_headers
from .message import Message
from .metrics import ERROR_CHANNEL, Metrics
from .partitions import output_partition
from .settle import describe, flush
from .stalls import PAUSE_FIRST, PAUSE_LONGEST
from .values import outgoing

log = logging.getLogger(__name__)

FIXED_DELAY = Property("spring.integration.poller.fixed-delay", int, 1000, "A source: ms between polls of its "
                       "function.", aliases=("spring.cloud.stream.poller.fixed-delay",))
MAX_MESSAGES = Property("spring.integration.poller.max-messages-per-poll", int, 1, "A source: calls of its "
                        "function a poll (it ends early when the function returns None).",
                        aliases=("spring.cloud.stream.poller.max-messages-per-poll",))
PROPERTIES = (FIXED_DELAY, MAX_MESSAGES)


def poller(properties: Properties) -> tuple[float, int]:
    """(seconds between polls, calls a poll); ConfigError names a value out of range."""
    delay, most = properties.get(FIXED_DELAY), properties.get(MAX_MESSAGES)
    if delay < 0:
        raise ConfigError(f"Invalid value '{delay}' for property '{FIXED_DELAY.name}': expected 0 or more ms")
    if most < 1:
        raise ConfigError(f"Invalid value '{most}' for property '{MAX_MESSAGES.name}': expected 1 or more")
    return delay / 1000, most


class Source(Binder):
    """A source app's producer and polling loop."""

    def __init__(self, properties: Properties, supply: Callable[[], Any], name: str,
                 outputs: Mapping[str, OutputBinding], metrics: Metrics, polling: tuple[float, int]) -> None:
        super().__init__(properties, supply, None, outputs, metrics)
        self.name = name  # the message source's name in the metrics
        self.delay, self.most = polling
        self.output = outputs["output"]
        self.unsent: list[Message] = []  # messages the broker refused for its own state: sent again first
        self._refused: str | None = None
        self._pause = PAUSE_FIRST / 2

    def delivery_check(self) -> str | None:
        return self._refused

    def connect(self) -> None:
        self._open_outputs({})
        log.info("Polling %s every %d ms with %s; producing to %s=%s", self.name, self.delay * 1000,
                 self.client.name, self.output.name, self.output.destination)

    def run(self) -> None:
        self.state = "running"
        while not self.stop.is_set():
            messages = self.unsent or self._poll()
            if messages:
                self.unsent = self._send(messages)
            if self.unsent:
                self._pause = min(self._pause * 2, PAUSE_LONGEST)
                log.warning("%d message(s) not sent (%s): sending them again in %.0f s", len(self.unsent),
                            self._refused, self._pause)
                self.stop.wait(self._pause)
            else:
                self._pause, self._refused = PAUSE_FIRST / 2, None
                self.stop.wait(self.delay)
        if self.unsent:
            log.error("Stopped with %d message(s) the broker did not take: they are lost", len(self.unsent))
        self.state = "stopped"

    def _poll(self) -> list[Message]:
        """Up to max-messages-per-poll of the function's messages; a failure ends the poll (error channel)."""
        messages: list[Message] = []
        for _ in range(self.most):
            try:
                made = self.handler()
                if made is None:
                    break
                messages.append(_message(made))
            except Exception as error:  # noqa: BLE001 - a failing function is logged, never ends the loop
                log.error("The source function %s failed: %s", self.name, describe(error))
                self.channels.receive(self.name, 1, error)
                self.channels.send(ERROR_CHANNEL, 1, 0.0)
                break
            self.channels.receive(self.name, 1)
        return messages

    def _send(self, messages: list[Message]) -> list[Message]:
        """Send and flush; the messages to send again (refused for the broker's state, not their own)."""
        output, producer = self.output, self.producers[self.output.name]
        sent, again = [], []
        for message in messages:
            clock = time.perf_counter()
            try:
                media = output.content_type or message.content_type
                headers = (outbound_headers(message.headers, media, self.client.null_header)
                           if output.headers else None)
                partition = (output_partition(output.partition_key, self.partition_counts[output.destination],
                                              message.payload, message.headers, media)
                             if output.partition_key else None)
            except Exception as error:  # noqa: BLE001 - a malformed message (say a missing partition key header)
                self.channels.send(output.name, 1, time.perf_counter() - clock, error)
                self._drop(message, error, own=True)
                continue
            try:
                sent.append((message, producer.send(output.destination, message.payload, None, headers, partition)))
            except FatalError:  # the transaction's producer cannot go on
                raise
            except Exception as error:  # noqa: BLE001 - the message's fault or the broker's: never ends the loop
                self.channels.send(output.name, 1, time.perf_counter() - clock, error)
                if not self._drop(message, error):
                    again.append(message)
                continue
            self.channels.send(output.name, 1, time.perf_counter() - clock)
        flush(self.producers, time.monotonic() + self.budget, self.shutdown)
        done = producer.settled()
        failed = []
        for message, handle in sent:
            error = None if done else self.client.outcome(handle)
            if error is not None:
                if self.transactional is not None and self.client.fenced(error):
                    raise FatalError(f"transactional producer '{self.transactional.transactional_id}' fenced: "
                                     f"another instance took its transactional.id ({describe(error)})")
                failed.append(message)
                if not self._drop(message, error):
                    again.append(message)
        acknowledged = len(sent) - len(failed)
        if self.transactional is not None and self.transactional.open and not self._committed(failed):
            kept = {id(message) for message in again}  # aborted: all go again but those dropped for their own sake
            dropped = {id(message) for message in failed} - kept
            again += [message for message, _ in sent if id(message) not in dropped | kept]
            acknowledged = 0
        self.sends.counters[output.name].inc(acknowledged)
        return again

    def _committed(self, failed: list[Message]) -> bool:
        """Transactional: the poll's sends committed; when one failed (or the commit did), aborted: False."""
        transactional = self.transactional
        if not failed:
            try:
                transactional.commit(transactions.seconds(self.shutdown))
                return True
            except AbortError as why:
                self._refused = f"the transaction did not commit ({why})"
        transactional.abort(transactions.seconds(self.shutdown, transactions.ABORT_SECONDS), renew=bool(failed))
        return False

    def _drop(self, message: Message, error: BaseException, own: bool = False) -> bool:
        """True when a failure is the message's ``own`` (or the client says so): logged, dropped; else kept."""
        if own or self.client.about_the_record(error):
            self.channels.send(ERROR_CHANNEL, 1, 0.0)
            log.error("Message of %d bytes from %s dropped: %s", len(message.payload or b""), self.name,
                      describe(error))
            return True
        self._refused = f"sends to '{self.output.destination}' refused ({describe(error)})"
        return False


def _message(made: Any) -> Message:
    """What the function returned as a Message: text is ``text/plain`` UTF-8, bytes are sent as they are, a JSON
    value or a dataclass as ``application/json`` (``values.py``)."""
    message = outgoing(made, None)
    assert message is not None  # the poll ends at None before
    return message
