"""The actuator HTTP thread: health probes, info and Prometheus metrics on ``server.port``."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from .arguments import ConfigError, Properties, Property

log = logging.getLogger(__name__)

SERVER_PORT = Property("server.port", int, 8080, "HTTP port of the actuator endpoints (0 picks a free port).")
SERVER_ADDRESS = Property("server.address", str, None,
                          "Address the actuator endpoints listen on; default every address, IPv4 and IPv6.")
PROPERTIES = (SERVER_PORT, SERVER_ADDRESS)

# A check returns None when healthy, else why not.
Check = Callable[[], str | None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # the listen backlog: a burst of connections must not wait on SYN retries


class _Server6(_Server):
    """IPv6, and IPv4 too on ``::`` (IPv6-only clusters exist; so do IPv4-only ones)."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _listen(address: str | None, port: int, handler: type[BaseHTTPRequestHandler]) -> _Server:
    """Listen on ``address``; with none, dual-stack on ``::`` where the host has IPv6, else on 0.0.0.0."""
    if address is None:
        try:
            return _Server6(("::", port), handler)
        except OSError:  # no IPv6 on this host
            return _Server(("0.0.0.0", port), handler)
    return (_Server6 if ":" in address else _Server)((address.strip("[]"), port), handler)


class Actuator:
    """Health (all checks), liveness (the ``live`` checks), readiness (all), info and metrics."""

    def __init__(self, checks: Mapping[str, Check], live: tuple[str, ...], info: Callable[[], dict],
                 metrics: Callable[[], bytes]) -> None:
        self.checks, self.live, self.info, self.metrics = checks, live, info, metrics
        self.port = 0
        self._server: _Server | None = None

    def start(self, properties: Properties) -> None:
        """Listen in a daemon thread; ConfigError when the port is malformed or taken."""
        port, address = properties.get(SERVER_PORT), properties.get(SERVER_ADDRESS)
        if not 0 <= port < 65536:
            raise ConfigError(f"Invalid value '{port}' for property '{SERVER_PORT.name}': expected 0 to 65535")
        try:
            self._server = _listen(address, port, _handler(self))
        except OSError as error:
            raise ConfigError(f"Cannot listen on {address or '*'}:{port} (properties '{SERVER_ADDRESS.name}', "
                              f"'{SERVER_PORT.name}'): {error.strerror or error}") from None
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="actuator", daemon=True).start()
        log.info("Actuator started on port %d (http) at /actuator/health, /actuator/info, /actuator/prometheus",
                 self.port)

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def health(self, names: tuple[str, ...]) -> tuple[int, dict]:
        down = {name: reason for name in names if (reason := self.checks[name]()) is not None}
        if not down:
            return HTTPStatus.OK, {"status": "UP"}
        components = {name: {"status": "DOWN", "details": {"error": reason}} for name, reason in down.items()}
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "DOWN", "components": components}


def _handler(actuator: Actuator) -> type[BaseHTTPRequestHandler]:
    every = tuple(actuator.checks)

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a slow client loses its own connection, never the probes' threads
        server_version = "polyglot-actuator"

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/actuator/health":
                status, body = actuator.health(every)
            elif path == "/actuator/health/liveness":
                status, body = actuator.health(actuator.live)
            elif path == "/actuator/health/readiness":
                status, body = actuator.health(every)
            elif path == "/actuator/info":
                status, body = HTTPStatus.OK, actuator.info()
            elif path == "/actuator/prometheus":
                self._send(HTTPStatus.OK, actuator.metrics(), CONTENT_TYPE_LATEST, send_body)
                return
            else:
                status, body = HTTPStatus.NOT_FOUND, {"status": 404, "error": "Not Found", "path": path}
            self._send(status, json.dumps(body).encode(), "application/json", send_body)

        def _send(self, status: int, body: bytes, content_type: str, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _not_allowed(self) -> None:
            body = json.dumps({"status": 405, "error": "Method Not Allowed"}).encode()
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = _not_allowed  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
