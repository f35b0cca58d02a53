"""The actuator under abuse: only GET and HEAD, oversized requests refused, slow clients never block probes."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from conftest import Figures
from devkit.apps import App

pytestmark = pytest.mark.one_client  # the actuator knows no Kafka client
PATHS = ("/actuator/health", "/actuator/health/liveness", "/actuator/health/readiness", "/actuator/info",
         "/actuator/prometheus")
SLOW_CLIENTS = 200


@pytest.fixture
def app(start_processor: Callable[..., App], names: Callable[[str], str]) -> Iterator[App]:
    running = start_processor(names("in"), names("out"))
    running.wait_for_log("Partitions assigned")
    yield running
    assert running.stop() == 0


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def raw(port: int, data: bytes) -> bytes:
    """Send bytes as they are; the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return sock.makefile("rb").readline()


def test_only_get_and_head_are_answered(app: App) -> None:
    for path in PATHS:
        got, head = request(app.port, "GET", path), request(app.port, "HEAD", path)
        assert (got.status, head.status) == (200, 200), path
        assert head.getheader("Content-Length") == got.getheader("Content-Length") or path.endswith("prometheus")
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
            refused = request(app.port, method, path, body=b"{}")
            assert refused.status == 405, (method, path)
            assert refused.getheader("Allow") == "GET, HEAD"
        assert request(app.port, "BREW", path).status == 501
    assert request(app.port, "GET", "/actuator/env").status == 404


def test_oversized_requests_are_refused(app: App, figures: Figures) -> None:
    answers = {
        "request line of 70,000 bytes": raw(app.port, b"GET /actuator/health?" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"),
        "header of 70,000 bytes": raw(app.port, b"GET /actuator/health HTTP/1.1\r\nX-Big: " + b"b" * 70_000 +
                                      b"\r\n\r\n"),
        "101 headers": raw(app.port, b"GET /actuator/health HTTP/1.1\r\n" +
                           b"".join(b"X-H%d: 1\r\n" % i for i in range(101)) + b"\r\n"),
        # a 100 MB body announced and never sent: refused at once, the body is never read
        "POST announcing 100 MB": raw(app.port, b"POST /actuator/health HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n"),
    }
    statuses = {name: int(line.split()[1]) for name, line in answers.items()}
    assert statuses == {"request line of 70,000 bytes": 414, "header of 70,000 bytes": 431, "101 headers": 431,
                        "POST announcing 100 MB": 405}
    assert request(app.port, "GET", "/actuator/health").status == 200
    for name, status in statuses.items():
        figures.add(name, status)


def test_slow_clients_cannot_block_the_probes(app: App, figures: Figures) -> None:
    slow = []
    try:
        started = time.monotonic()
        for _ in range(SLOW_CLIENTS):  # each sends half a request and then nothing
            sock = socket.create_connection(("127.0.0.1", app.port), timeout=10)
            sock.sendall(b"GET /actuator/health/liveness HTTP/1.1\r\nHost: x")
            slow.append(sock)
        opened = time.monotonic() - started  # a short listen backlog shows here: SYNs dropped and retried
        timings = []
        for path in ("/actuator/health/liveness", "/actuator/health/readiness") * 5:
            started = time.monotonic()
            assert request(app.port, "GET", path).status == 200
            timings.append(time.monotonic() - started)
    finally:
        for sock in slow:
            sock.close()
    assert max(timings) < 2.0
    assert opened < 5.0, f"{SLOW_CLIENTS} connections took {opened:.1f} s to open"
    figures.add(f"{SLOW_CLIENTS} connections opened at once", f"{opened:.2f} s")
    figures.add(f"probe answer time with {SLOW_CLIENTS} slow connections open (max of 10)",
                f"{1000 * max(timings):.0f} ms")
