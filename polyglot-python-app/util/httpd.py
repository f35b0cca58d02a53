"""A bounded HTTP/1.1 server for GET and HEAD: one thread, one selector, however many clients hang."""

from __future__ import annotations

import errno
import json
import logging
import re
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

MAX_HEAD = 8192  # request line and headers; probes and Prometheus send a few hundred bytes
MAX_HEADERS = 100
MAX_CONNECTIONS = 512  # past it the connection open longest is closed: a new probe always gets in
TIMEOUT = 10.0  # seconds for a whole request to arrive, an answer to leave, or a kept-alive connection to idle
BACKLOG = 1024  # a burst of connections must not wait on SYN retries
ACCEPTS_PER_ROUND = 128  # then read what the accepted sent: a probe is read before newer connections evict it
ROUND_SECONDS = 0.02  # answering a round stops past this (probes answered first); the rest wait their turn
PROBES = (b"/actuator/health", b"/actuator/info")  # cheap answers, and what Kubernetes waits on
REFUSED = frozenset({"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"})  # 405; any other method but GET: 501
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
_LINE = re.compile(r"\r?\n")


@dataclass(frozen=True)
class Request:
    """A request line and its headers (a body is never read)."""

    method: str
    target: str
    version: str
    headers: dict[str, str]  # names in lower case

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass(frozen=True)
class Response:
    """What a handler answers; to HEAD, the body is left out."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Response]


def error(status: HTTPStatus, **details: str) -> Response:
    """A JSON error answer, Spring-like: ``{"status": 404, "error": "Not Found", ...}``."""
    allow = (("Allow", "GET, HEAD"),) if status == HTTPStatus.METHOD_NOT_ALLOWED else ()
    return Response(status, json.dumps({"status": status.value, "error": status.phrase, **details}).encode(),
                    headers=allow)


class _Connection:
    """One client: what it sent and what it is sent, and when it runs out of time."""

    __slots__ = ("closed", "deadline", "draining", "ended", "events", "inbox", "keep_alive", "outbox", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.sock, self.peer, self.deadline = sock, peer, deadline
        self.inbox, self.outbox = bytearray(), bytearray()
        self.keep_alive, self.draining, self.closed = True, False, False
        self.ended = False  # the client sent all it will (a half-close): what it asked for is answered, then closed
        self.events = 0  # what the selector watches it for (0: nothing, while its inbox is full)

    def has_request(self) -> bool:
        """A whole request (or a head over the limit, to refuse) waits in the inbox, and nothing is being sent."""
        inbox = self.inbox
        return (not self.outbox and not self.draining and bool(inbox)
                and (len(inbox) >= MAX_HEAD or _END_OF_HEAD.search(inbox, 0, MAX_HEAD) is not None))

    def is_probe(self) -> bool:
        """The next request asks for health or info: answered before the others of a round."""
        line = bytes(self.inbox[:64]).lstrip(b"\r\n").split(b" ", 2)
        return len(line) > 1 and line[0] in (b"GET", b"HEAD") and line[1].startswith(PROBES)


class Server:
    """Listen on ``address``:``port`` and answer with ``handler`` on a daemon thread until ``stop()``.

    Connections are non-blocking and capped; each request must arrive whole within ``TIMEOUT``, and so
    must its answer leave; HTTP/1.1 connections are kept alive (Prometheus reuses its own).
    """

    def __init__(self, address: str | None, port: int, handler: Handler, log: logging.Logger, name: str) -> None:
        self.listener = _listen(address, port)
        self.port: int = self.listener.getsockname()[1]
        self.handler, self.log = handler, log
        self._connections: OrderedDict[socket.socket, _Connection] = OrderedDict()  # nearest deadline first
        self._opened: OrderedDict[socket.socket, _Connection] = OrderedDict()  # open longest first
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._wake, self._woken = socket.socketpair()
        self._selector.register(self._woken, selectors.EVENT_READ)
        self._stopping = self._accept_failing = False
        self._queue: OrderedDict[_Connection, None] = OrderedDict()  # a whole request waits: answered in turn
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listener and every connection; wait for the thread."""
        self._stopping = True
        self._wake.send(b"\0")
        self._thread.join(5)
        self._wake.close()

    def _serve(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._selector.select(0.0 if self._queue else self._until_next_deadline()):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif isinstance(key.data, _Connection) and not key.data.closed:
                        self._safely(self._ready, key.data)
                self._answer_round()
                now = time.monotonic()
                while self._connections and (oldest := next(iter(self._connections.values()))).deadline <= now:
                    self._close(oldest)
        finally:
            for connection in list(self._connections.values()):
                self._close(connection)
            self._selector.close()
            self.listener.close()
            self._woken.close()

    def _until_next_deadline(self) -> float | None:
        if not self._connections:
            return None
        return max(0.0, next(iter(self._connections.values())).deadline - time.monotonic())

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                sock, peer = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as failure:
                if failure.errno in (errno.ECONNABORTED, errno.EPROTO):  # that client gave up before its turn
                    continue
                if failure.errno in (errno.EMFILE, errno.ENFILE) and self._opened:
                    self._close(next(iter(self._opened.values())))  # a file for the new one
                    continue
                if not self._accept_failing:
                    self.log.warning("Cannot accept a connection: %s", failure)
                self._accept_failing = True
                time.sleep(0.05)  # the listener stays readable: no spinning while accepting fails
                return
            self._accept_failing = False
            if len(self._opened) >= MAX_CONNECTIONS:
                self._close(next(iter(self._opened.values())))
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, peer[0], time.monotonic() + TIMEOUT)
            self._connections[sock] = self._opened[sock] = connection
            self._watch(connection)

    def _safely(self, step: Callable[[_Connection], None], connection: _Connection) -> None:
        try:
            step(connection)
        except Exception:  # one connection's failure closes it, never the server
            self.log.exception("Closing the connection from %s", connection.peer)
            self._close(connection)

    def _ready(self, connection: _Connection) -> None:
        """Read or write what the socket is ready for; a request that arrived whole waits its turn in the queue."""
        if connection.outbox:
            self._flush(connection)
        else:
            try:
                data = connection.sock.recv(MAX_HEAD)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                if connection.draining or not connection.has_request():
                    self._close(connection)
                    return
                connection.ended = True
            if connection.draining:  # answered and closing: what else the client sends is dropped
                return
            connection.inbox += data
        if not connection.closed:
            self._watch(connection)
            if not connection.closed and connection.has_request():
                self._queue[connection] = None

    def _answer_round(self) -> None:
        """One request of each queued connection, probes first, until ROUND_SECONDS have passed; those left go
        first next round. A connection with more requests waits behind them."""
        queued = sorted(self._queue, key=lambda connection: not connection.is_probe())
        self._queue.clear()  # what is answered and has more requests comes back into it
        started, left = time.monotonic(), []
        for connection in queued:
            if connection.closed:
                continue
            if time.monotonic() - started > ROUND_SECONDS and not connection.is_probe():
                left.append(connection)
                continue
            self._safely(self._answer_next, connection)
        if left:
            again, self._queue = self._queue, OrderedDict.fromkeys(c for c in left if not c.closed)
            self._queue.update(again)

    def _answer_next(self, connection: _Connection) -> None:
        """Answer the first whole request in the inbox; the connection waits its next turn for the one after."""
        answer = self._take(connection)
        if answer is None:
            return
        connection.outbox += answer
        self._touch(connection)
        self._flush(connection)
        if not connection.closed:
            self._watch(connection)
            if not connection.closed and connection.has_request():
                self._queue[connection] = None

    def _watch(self, connection: _Connection) -> None:
        """Watch for writing while an answer waits to leave, else for reading while the inbox has room (a full
        one is answered first: a pipelining client is held back by TCP, never buffered without bound)."""
        if connection.ended and not connection.outbox and not connection.has_request():
            self._close(connection)  # every request the client sent before its half-close is answered
            return
        events = (selectors.EVENT_WRITE if connection.outbox else
                  selectors.EVENT_READ if not connection.ended and (connection.draining or
                                                                    len(connection.inbox) < MAX_HEAD) else 0)
        if events == connection.events:
            return
        if not connection.events:
            self._selector.register(connection.sock, events, connection)
        elif not events:
            self._selector.unregister(connection.sock)
        else:
            self._selector.modify(connection.sock, events, connection)
        connection.events = events

    def _take(self, connection: _Connection) -> bytes | None:
        """The answer to the first request in the inbox, taken out of it; None while it is incomplete."""
        inbox = connection.inbox
        end = _END_OF_HEAD.search(inbox, 0, MAX_HEAD)
        if end is None:
            if len(inbox) < MAX_HEAD:
                return None
            connection.keep_alive = False
            return _encode(error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE if b"\n" in inbox[:MAX_HEAD]
                                 else HTTPStatus.REQUEST_URI_TOO_LONG), False, False)
        head = bytes(inbox[:end.start()]).lstrip(b"\r\n").decode("latin-1")
        del inbox[:end.end()]
        request = _parse(head)
        if isinstance(request, Response):
            connection.keep_alive = False
            return _encode(request, False, False)
        response = self._answer(request)
        connection.keep_alive = _keep_alive(request)
        self.log.debug('%s "%s %s %s" %d %d', connection.peer, request.method, request.target, request.version,
                       response.status, len(response.body))
        return _encode(response, connection.keep_alive, request.method == "HEAD")

    def _answer(self, request: Request) -> Response:
        if request.method in REFUSED:
            return error(HTTPStatus.METHOD_NOT_ALLOWED)
        if request.method not in ("GET", "HEAD"):
            return error(HTTPStatus.NOT_IMPLEMENTED)
        try:
            return self.handler(request)
        except Exception:  # a failing endpoint answers 500, never ends the server
            self.log.exception("Cannot answer %s %s", request.method, request.target)
            return error(HTTPStatus.INTERNAL_SERVER_ERROR)

    def _flush(self, connection: _Connection) -> None:
        """Send what the socket takes; when all is sent, close or wait for the next request."""
        try:
            sent = connection.sock.send(connection.outbox)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(connection)
            return
        del connection.outbox[:sent]
        if connection.outbox:
            self._watch(connection)
            return
        if not connection.keep_alive:  # the client reads to the end; closing on its unread bytes would reset
            try:
                connection.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(connection)
                return
            connection.draining = True
        self._touch(connection)
        self._watch(connection)

    def _touch(self, connection: _Connection) -> None:
        """A new deadline, the latest of all: the connection moves to the end of the queue."""
        connection.deadline = time.monotonic() + TIMEOUT
        self._connections.move_to_end(connection.sock)

    def _close(self, connection: _Connection) -> None:
        if not connection.closed:
            connection.closed = True
            self._queue.pop(connection, None)
            del self._connections[connection.sock], self._opened[connection.sock]
            if connection.events:
                self._selector.unregister(connection.sock)
            connection.sock.close()


def _parse(head: str) -> Request | Response:
    """The request in a request line and headers; an error answer when they are malformed."""
    lines = _LINE.split(head)
    parts = lines[0].split()
    if len(parts) != 3 or not re.fullmatch(r"HTTP/1\.\d", parts[2]):
        return error(HTTPStatus.BAD_REQUEST)
    if len(lines) > MAX_HEADERS + 1:
        return error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return error(HTTPStatus.BAD_REQUEST)
        headers[name.lower()] = value.strip()
    return Request(parts[0], parts[1], parts[2], headers)


def _keep_alive(request: Request) -> bool:
    """HTTP/1.1 without ``Connection: close`` and without a body (bodies are never read)."""
    headers = request.headers
    return (request.version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
            and headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers)


def _encode(response: Response, keep_alive: bool, head_only: bool) -> bytes:
    status = HTTPStatus(response.status)
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", "Server: polyglot-actuator",
             f"Date: {formatdate(usegmt=True)}", f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}", *(f"{name}: {value}" for name, value in response.headers)]
    if not keep_alive:
        lines.append("Connection: close")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (b"" if head_only else response.body)


def _listen(address: str | None, port: int) -> socket.socket:
    """Listen on ``address``; with none, dual-stack on ``::`` where the host has IPv6, else on 0.0.0.0."""
    if address is None:
        try:
            return _bind(socket.AF_INET6, "::", port)
        except OSError:  # no IPv6 on this host
            return _bind(socket.AF_INET, "0.0.0.0", port)
    host = address.strip("[]")
    return _bind(socket.AF_INET6 if ":" in host else socket.AF_INET, host, port)


def _bind(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # IPv4 too on ``::`` (IPv6-only clusters exist; so do IPv4-only ones)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
