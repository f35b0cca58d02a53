"""A loopback Kafka proxy that refuses, holds or corrupts what passes, as a broker or a network would.

Tests put it in front of Tansu (which advertises the proxy's address, so every client connection goes
through it) to see how an app handles what Tansu never does: an ACL not yet applied
(``TOPIC_AUTHORIZATION_FAILED``), a record over the broker's size limit (``refuse``: the proxy answers for
the topic, nothing of it is written, a request's other topics go on to the broker; ``refuse_marked``: only
the batches to a topic that carry a marker's bytes); a broker that takes produce requests and never answers them
(``hold``); a byte flipped in a fetched batch, so its CRC no longer matches (``corrupt``); an address that
accepts connections and resets them at once, as a load balancer in front of a dead broker (``reset``);
requests of some kinds (API keys) never answered (``mute``).
Everything else passes through unchanged, in order.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import deque
from typing import Any

from kafka.protocol.producer import ProduceRequest, ProduceResponse

PRODUCE = 0
UNANSWERED, SWALLOW = "unanswered", "swallow"


def _read_frame(sock: socket.socket) -> bytes | None:
    """One size-prefixed Kafka frame (without its size), or None once the peer has gone."""
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    return _read_exactly(sock, struct.unpack(">i", head)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 20))
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class KafkaProxy:
    """Listen on ``port`` and relay to the broker on ``upstream``; ``refuse(topic, code)`` arms a refusal."""

    def __init__(self, upstream: int, port: int) -> None:
        self.upstream, self.port = upstream, port
        self.refused = 0  # partitions of produce requests answered with an error
        self.split = 0  # produce requests forwarded without their refused topics
        self._refusals: dict[str, int] = {}
        self._marked: tuple[bytes, str, int] | None = None  # refuse requests holding these bytes, to this topic
        self._held: set[str] = set()
        self.muted: frozenset[int] = frozenset()  # API keys of requests swallowed, whatever their content
        self._marker: bytes | None = None
        self.corrupted = 0  # fetch responses with a byte flipped
        self.held = 0  # produce requests swallowed
        self.swallowed = 0  # requests of muted API keys swallowed
        self.resets = 0  # connections reset
        self.resetting = False
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._listener: socket.socket | None = None

    def refuse(self, topic: str, error_code: int) -> None:
        with self._lock:
            self._refusals[topic] = error_code

    def refuse_marked(self, marker: bytes | None, topic: str = "", error_code: int = 0) -> None:
        """Refuse the batches to ``topic`` that hold ``marker`` (uncompressed records; None: stop): the records
        sent beside it in its batch are refused with it, as a broker refuses a whole batch."""
        with self._lock:
            self._marked = None if marker is None else (marker, topic, error_code)

    def allow(self, topic: str) -> None:
        with self._lock:
            self._refusals.pop(topic, None)
            self._held.discard(topic)

    def hold(self, topic: str) -> None:
        """Produce requests for ``topic`` are swallowed: neither written nor answered (until the client gives up)."""
        with self._lock:
            self._held.add(topic)

    def mute(self, *api_keys: int) -> None:
        """Requests with these API keys (2: ListOffsets, 9: OffsetFetch) are swallowed, never answered (none: stop)."""
        self.muted = frozenset(api_keys)

    def corrupt(self, marker: bytes | None) -> None:
        """Flip the first byte of ``marker`` wherever it appears in a response (None: stop)."""
        with self._lock:
            self._marker = marker

    def reset(self, on: bool = True) -> None:
        """Reset every connection at once, the open ones and each new one (False: accept again)."""
        self.resetting = on
        if on:
            for link in list(self._links):
                link.close(reset=True)

    def damage(self, frame: bytes) -> bytes:
        """A response frame, with the marker's first byte flipped where it appears."""
        marker = self._marker
        if marker is None or marker not in frame:
            return frame
        with self._lock:
            self.corrupted += 1
        flipped = bytes([marker[0] ^ 0x20]) + marker[1:]
        return frame.replace(marker, flipped)

    def start(self) -> KafkaProxy:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, name="kafka-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for link in self._links:
            link.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.resetting:
                self.resets += 1
                _reset(client)
                continue
            self._links = [link for link in self._links if not link.closed]
            try:
                self._links.append(_Link(self, client))
            except OSError:  # the broker is down: this client sees its connection reset, the next may get through
                _reset(client)

    def answer(self, version: int, frame: bytes) -> bytes | str | _Split | None:
        """What to do with a produce request: None, forward it (the broker answers); UNANSWERED, forward it
        (acks=0: nobody answers); SWALLOW, drop it (a held topic); bytes, the proxy's own error response
        (every partition in it refused); a ``_Split``, forward it without its refused partitions (a client
        sends the batches of several topics and partitions in one request: a broker answers each on its own)."""
        request = ProduceRequest.decode(frame, version=version, header=True)
        with self._lock:
            if any(t.name in self._held for t in request.topic_data):
                self.held += 1
                return SWALLOW
        if request.acks == 0:
            return UNANSWERED
        with self._lock:
            refusals, marked = dict(self._refusals), self._marked
        codes = {(t.name, p.index): _code(t.name, p.records, refusals, marked)
                 for t in request.topic_data for p in t.partition_data}
        refused = {key: code for key, code in codes.items() if code is not None}
        if not refused:
            return None
        answers = [ProduceResponse.TopicProduceResponse(name=t.name, partition_responses=[
            ProduceResponse.TopicProduceResponse.PartitionProduceResponse(
                index=p.index, error_code=refused[t.name, p.index], base_offset=-1)
            for p in t.partition_data if (t.name, p.index) in refused])
            for t in request.topic_data if any((t.name, p.index) in refused for p in t.partition_data)]
        mixed = len(refused) < len(codes)
        with self._lock:
            self.refused += len(refused)
            self.split += mixed
        if mixed:
            for t in request.topic_data:
                t.partition_data = [p for p in t.partition_data if (t.name, p.index) not in refused]
            request.topic_data = [t for t in request.topic_data if t.partition_data]
            return _Split(bytes(request.encode(header=True)), version, answers)
        response = ProduceResponse[version](throttle_time_ms=0, responses=answers)
        response.with_header(correlation_id=request.header.correlation_id)
        return bytes(response.encode(header=True, framed=True))


def _code(topic: str, records: bytes | None, refusals: dict[str, int],
          marked: tuple[bytes, str, int] | None) -> int | None:
    """The error a partition's batch is refused with (None: it goes on to the broker)."""
    if marked is not None and topic == marked[1] and records is not None and marked[0] in records:
        return marked[2]
    return refusals.get(topic)


class _Split:
    """A produce request forwarded without its refused partitions; the broker's answer gets their errors added."""

    def __init__(self, frame: bytes, version: int, answers: list[Any]) -> None:
        self.frame, self.version, self.answers = frame, version, answers

    def merge(self, frame: bytes) -> bytes:
        response = ProduceResponse.decode(frame, version=self.version, header=True)
        topics = {topic.name: topic for topic in response.responses}
        for answer in self.answers:
            if answer.name in topics:
                topics[answer.name].partition_responses = [*topics[answer.name].partition_responses,
                                                           *answer.partition_responses]
            else:
                response.responses = [*response.responses, answer]
        return bytes(response.encode(header=True))


class _Link:
    """One client connection and its own broker connection; responses go back in request order."""

    def __init__(self, proxy: KafkaProxy, client: socket.socket) -> None:
        self.proxy, self.client = proxy, client
        self.broker = socket.create_connection(("127.0.0.1", proxy.upstream))
        self.closed = False
        # None: the broker answers this one; bytes: the proxy's answer; _Split: the broker's, refusals added
        self.order: deque[bytes | _Split | None] = deque()
        self.lock = threading.Lock()
        threading.Thread(target=self._upstream, daemon=True).start()
        threading.Thread(target=self._downstream, daemon=True).start()

    def _upstream(self) -> None:
        while (frame := _read_frame(self.client)) is not None:
            api_key, version = struct.unpack(">hh", frame[:4])
            own = SWALLOW if api_key in self.proxy.muted else \
                self.proxy.answer(version, frame) if api_key == PRODUCE else None
            with self.lock:
                if isinstance(own, bytes):
                    self.order.append(own)
                    self._send_own()
                    continue
                if own == SWALLOW:
                    self.proxy.swallowed += api_key in self.proxy.muted
                    continue
                if isinstance(own, _Split):
                    self.order.append(own)
                    frame = own.frame
                elif own is None:
                    self.order.append(None)
                try:
                    self.broker.sendall(struct.pack(">i", len(frame)) + frame)
                except OSError:
                    break
        self.close()

    def _downstream(self) -> None:
        while (frame := _read_frame(self.broker)) is not None:
            with self.lock:
                pending = self.order.popleft() if self.order else None
                frame = self.proxy.damage(pending.merge(frame) if isinstance(pending, _Split) else frame)
                try:
                    self.client.sendall(struct.pack(">i", len(frame)) + frame)
                except OSError:
                    break
                self._send_own()
        self.close()

    def _send_own(self) -> None:
        while self.order and isinstance(self.order[0], bytes):
            with contextlib.suppress(OSError):
                self.client.sendall(self.order.popleft())

    def close(self, reset: bool = False) -> None:
        self.closed = True
        if reset:
            _reset(self.client)
        for sock in (self.client, self.broker):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a load balancer with no backend does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
