"""The actuator endpoints on ``server.port``: health probes, info and Prometheus metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST

from .arguments import ConfigError, Properties, Property
from .httpd import Request, Response, Server, error

log = logging.getLogger(__name__)

SERVER_PORT = Property("server.port", int, 8080, "HTTP port of the actuator endpoints (0 picks a free port).")
SERVER_ADDRESS = Property("server.address", str, None,
                          "Address the actuator endpoints listen on; default every address, IPv4 and IPv6.")
PROPERTIES = (SERVER_PORT, SERVER_ADDRESS)

# A check returns None when healthy, else why not.
Check = Callable[[], str | None]


class Actuator:
    """Health (all checks), liveness (the ``live`` checks), readiness (all), info and metrics."""

    def __init__(self, checks: Mapping[str, Check], live: tuple[str, ...], info: Callable[[], dict],
                 metrics: Callable[[], bytes]) -> None:
        self.checks, self.live, self.info, self.metrics = checks, live, info, metrics
        self.port = 0
        self._server: Server | None = None

    def start(self, properties: Properties) -> None:
        """Listen and answer on a daemon thread; ConfigError when the port is malformed or taken."""
        port, address = properties.get(SERVER_PORT), properties.get(SERVER_ADDRESS)
        if not 0 <= port < 65536:
            raise ConfigError(f"Invalid value '{port}' for property '{SERVER_PORT.name}': expected 0 to 65535")
        try:
            self._server = Server(address, port, self.answer, log, "actuator")
        except OSError as error:
            raise ConfigError(f"Cannot listen on {address or '*'}:{port} (properties '{SERVER_ADDRESS.name}', "
                              f"'{SERVER_PORT.name}'): {error.strerror or error}") from None
        self.port = self._server.port
        log.info("Actuator started on port %d (http) at /actuator/health, /actuator/info, /actuator/prometheus",
                 self.port)

    def stop(self) -> None:
        if self._server:
            self._server.stop()

    def health(self, names: tuple[str, ...]) -> tuple[int, dict]:
        down = {name: reason for name in names if (reason := self.checks[name]()) is not None}
        if not down:
            return HTTPStatus.OK, {"status": "UP"}
        components = {name: {"status": "DOWN", "details": {"error": reason}} for name, reason in down.items()}
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "DOWN", "components": components}

    def answer(self, request: Request) -> Response:
        """The endpoint at the request's path (a trailing slash and the query are ignored)."""
        path = request.path.rstrip("/")
        if path in ("/actuator/health", "/actuator/health/readiness"):
            status, body = self.health(tuple(self.checks))
        elif path == "/actuator/health/liveness":
            status, body = self.health(self.live)
        elif path == "/actuator/info":
            status, body = HTTPStatus.OK, self.info()
        elif path == "/actuator/prometheus":
            return Response(HTTPStatus.OK, self.metrics(), CONTENT_TYPE_LATEST)
        else:
            return error(HTTPStatus.NOT_FOUND, path=path)
        return Response(status, json.dumps(body).encode())
