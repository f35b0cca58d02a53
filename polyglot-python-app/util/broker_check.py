"""Whether a broker takes a connection: checked every 2 s on a thread of its own, for the health endpoint."""

from __future__ import annotations

import socket
import threading
import time

CHECK_SECONDS = 2.0  # how often health checks that a broker takes a connection


class BrokerCheck:
    """The verdict of the last check: None, or why no broker at ``servers`` takes a connection.

    On a thread of its own, so a broker address that drops packets never holds up the actuator's one
    thread (nor a liveness probe). It starts at once, so that the first probe seldom waits for it.
    """

    def __init__(self, servers: list[str]) -> None:
        self.servers = servers
        self._verdict: str | None = None
        self._checked = threading.Event()
        threading.Thread(target=self._watch, name="broker-check", daemon=True).start()

    def verdict(self) -> str | None:
        self._checked.wait(1.0)  # the first answer waits for the first check
        return self._verdict

    def _watch(self) -> None:
        while True:
            self._verdict = self._unreachable()
            self._checked.set()
            time.sleep(CHECK_SECONDS)

    def _unreachable(self) -> str | None:
        reason = f"no broker reachable at {','.join(self.servers)}"
        for server in self.servers:
            refused = refusal(server)
            if refused is None:
                return None
            reason = f"no broker reachable at {','.join(self.servers)} ({server}: {refused})"
        return reason


def refusal(server: str) -> str | None:
    """Why ``host:port`` is no broker: it takes no connection, or (a load balancer with no broker behind it)
    closes each one at once; None when it takes one and waits for the client to speak, as a broker does."""
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0) as probe:
            probe.settimeout(0.05)
            try:
                return "it closes every connection at once" if not probe.recv(1) else None
            except TimeoutError:
                return None
    except OSError as error:
        return error.strerror or type(error).__name__
