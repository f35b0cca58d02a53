"""A loopback Kafka proxy that answers produce requests for chosen topics with an error, as a broker would.

Tests put it in front of Tansu (which advertises the proxy's address, so every client connection goes
through it) to see how an app handles refusals Tansu never makes: an ACL not yet applied
(``TOPIC_AUTHORIZATION_FAILED``), a record over the broker's size limit. A refused produce request is
answered by the proxy and never reaches the broker, so nothing is written. Everything else passes
through unchanged, in order.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import deque

from kafka.protocol.producer import ProduceRequest, ProduceResponse

PRODUCE = 0


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
        self._refusals: dict[str, int] = {}
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._listener: socket.socket | None = None

    def refuse(self, topic: str, error_code: int) -> None:
        with self._lock:
            self._refusals[topic] = error_code

    def allow(self, topic: str) -> None:
        with self._lock:
            self._refusals.pop(topic, None)

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
            self._links.append(_Link(self, client))

    def answer(self, version: int, frame: bytes) -> bytes | bool | None:
        """A produce request's own error response when every topic in it is refused; False: no response at all."""
        request = ProduceRequest.decode(frame, version=version, header=True)
        if request.acks == 0:
            return False
        with self._lock:
            codes = {t.name: self._refusals.get(t.name) for t in request.topic_data}
        if None in codes.values():
            return None
        response = ProduceResponse[version](throttle_time_ms=0, responses=[
            ProduceResponse.TopicProduceResponse(name=t.name, partition_responses=[
                ProduceResponse.TopicProduceResponse.PartitionProduceResponse(
                    index=p.index, error_code=codes[t.name], base_offset=-1) for p in t.partition_data])
            for t in request.topic_data])
        response.with_header(correlation_id=request.header.correlation_id)
        with self._lock:
            self.refused += sum(len(t.partition_data) for t in request.topic_data)
        return bytes(response.encode(header=True, framed=True))


class _Link:
    """One client connection and its own broker connection; responses go back in request order."""

    def __init__(self, proxy: KafkaProxy, client: socket.socket) -> None:
        self.proxy, self.client = proxy, client
        self.broker = socket.create_connection(("127.0.0.1", proxy.upstream))
        self.order: deque[bytes | None] = deque()  # None: the broker answers this one; bytes: the proxy's answer
        self.lock = threading.Lock()
        threading.Thread(target=self._upstream, daemon=True).start()
        threading.Thread(target=self._downstream, daemon=True).start()

    def _upstream(self) -> None:
        while (frame := _read_frame(self.client)) is not None:
            api_key, version = struct.unpack(">hh", frame[:4])
            own = self.proxy.answer(version, frame) if api_key == PRODUCE else None
            with self.lock:
                if isinstance(own, bytes):
                    self.order.append(own)
                    self._send_own()
                    continue
                if own is None:
                    self.order.append(None)
                try:
                    self.broker.sendall(struct.pack(">i", len(frame)) + frame)
                except OSError:
                    break
        self.close()

    def _downstream(self) -> None:
        while (frame := _read_frame(self.broker)) is not None:
            with self.lock:
                if self.order:
                    self.order.popleft()
                try:
                    self.client.sendall(struct.pack(">i", len(frame)) + frame)
                except OSError:
                    break
                self._send_own()
        self.close()

    def _send_own(self) -> None:
        while self.order and self.order[0] is not None:
            with contextlib.suppress(OSError):
                self.client.sendall(self.order.popleft())

    def close(self) -> None:
        for sock in (self.client, self.broker):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
