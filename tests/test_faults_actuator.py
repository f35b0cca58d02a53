"""The actuator under abuse: only GET and HEAD, oversized requests refused, slow clients hold up no probe."""

from __future__ import annotations

import contextlib
import http.client
import logging
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Figures
from devkit.apps import App
from devkit.waiting import wait_for
from util.httpd import Request, Response, Server

pytestmark = pytest.mark.one_client  # the actuator knows no Kafka client
PATHS = ("/actuator/health", "/actuator/health/liveness", "/actuator/health/readiness", "/actuator/info",
         "/actuator/prometheus")
SLOW_CLIENTS = 200
FLOOD = 3000  # slow connections, far past the actuator's cap on open connections
PROBE_TIMEOUT = 5.0


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


def threads_and_memory(pid: int) -> tuple[int, float, int]:
    """Threads, resident memory (MiB) and open file descriptors of a process."""
    status = dict(line.split(":", 1) for line in (Path(f"/proc/{pid}/status").read_text().splitlines()))
    return int(status["Threads"]), int(status["VmRSS"].split()[0]) / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def probe_times(port: int) -> list[float]:
    """Seconds each of ten liveness and readiness probes took; ``PROBE_TIMEOUT`` for one that got no answer."""
    timings = []
    for path in ("/actuator/health/liveness", "/actuator/health/readiness") * 5:
        started = time.monotonic()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            connection.close()
            timings.append(time.monotonic() - started if response.status == 200 else PROBE_TIMEOUT)
        except OSError:  # a timeout, or a refused or reset connection: a failed probe
            timings.append(PROBE_TIMEOUT)
    return timings


@pytest.fixture
def open_files() -> Iterator[None]:
    """Room in this process's RLIMIT_NOFILE for ``FLOOD`` sockets; the limit is put back after the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is under the {wanted} files the test opens")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("open_files")
def test_thousands_of_slow_clients_leave_probes_fast_and_threads_few(app: App, figures: Figures) -> None:
    pid = app.process.pid
    probe_times(app.port)  # the first answers build what they need: measured from here
    threads, rss, files = threads_and_memory(pid)
    slow = []
    try:
        for _ in range(FLOOD):  # each sends half a request and then nothing
            sock = socket.create_connection(("127.0.0.1", app.port), timeout=10)
            slow.append(sock)
            sock.sendall(b"GET /actuator/health/liveness HTTP/1.1\r\nHost: x")
        during = probe_times(app.port)
        threads_during, rss_during, files_during = threads_and_memory(pid)
    finally:
        for sock in slow:
            sock.close()
    after = probe_times(app.port)
    threads_after = threads_and_memory(pid)[0]
    figures.add("app threads before, with 3,000 slow connections, after they closed",
                f"{threads}, {threads_during}, {threads_after}")
    figures.add("app RSS before and with 3,000 slow connections", f"{rss:.0f} MiB, {rss_during:.0f} MiB")
    figures.add("app open files before and with 3,000 slow connections", f"{files}, {files_during}")
    figures.add("probe answer time with 3,000 slow connections open (max of 10)", f"{1000 * max(during):.0f} ms")
    figures.add("probe answer time right after they closed (max of 10)", f"{1000 * max(after):.0f} ms")
    assert max(during) < 1.0, during
    assert max(after) < 1.0, after
    assert threads_during <= threads + 2
    assert threads_after <= threads + 2
    assert rss_during - rss < 20
    assert files_during - files <= 520  # the cap on open connections, and nothing else


def test_keep_alive_on_http_1_1_and_close_on_http_1_0_or_connection_close(app: App) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", app.port, timeout=10)
    sockets = set()  # http.client opens a new connection, silently, when the server closed the last one
    try:
        for path in ("/actuator/health/liveness", "/actuator/prometheus", "/actuator/info"):
            connection.request("GET", path)
            response = connection.getresponse()
            assert (response.status, response.will_close) == (200, False), path
            sockets.add(connection.sock)
            assert response.read()
    finally:
        connection.close()
    assert len(sockets) == 1
    for request in (b"GET /actuator/health HTTP/1.0\r\n\r\n",
                    b"GET /actuator/health HTTP/1.1\r\nConnection: close\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
            sock.sendall(request)
            answer = b"".join(iter(lambda: sock.recv(65536), b""))  # the server closes: the read ends
            assert answer.split(b" ", 2)[1] == b"200", request
            assert b"\r\nConnection: close\r\n" in answer, request


def closing_times(sockets: dict[str, socket.socket], trickle: str, started: float) -> dict[str, float]:
    """Seconds from ``started`` until the server closed each socket; ``trickle`` sends a byte each silent second."""
    closed: dict[str, float] = {}
    with selectors.DefaultSelector() as selector:
        for name, sock in sockets.items():
            selector.register(sock, selectors.EVENT_READ, name)
        while len(closed) < len(sockets) and time.monotonic() - started < 20:
            events = selector.select(timeout=1)
            for key, _ in events:
                with contextlib.suppress(ConnectionResetError):
                    assert sockets[key.data].recv(1) == b"", key.data
                closed[key.data] = time.monotonic() - started
                selector.unregister(key.fileobj)
            if not events and trickle not in closed:
                sockets[trickle].sendall(b"x")  # one more header byte: a request that never ends
    return closed


def test_idle_and_incomplete_connections_are_closed_after_ten_seconds(app: App, figures: Figures) -> None:
    sockets = {name: socket.create_connection(("127.0.0.1", app.port), timeout=10)
               for name in ("idle", "half a request", "a request trickled a byte a second")}
    try:
        for name, sock in sockets.items():
            if name != "idle":
                sock.sendall(b"GET /actuator/health HTTP/1.1\r\nX-Slow: ")
        closed = closing_times(sockets, "a request trickled a byte a second", time.monotonic())
    finally:
        for sock in sockets.values():
            sock.close()
    for name, seconds in closed.items():
        figures.add(f"{name}: connection closed after", f"{seconds:.1f} s")
    assert set(closed) == set(sockets)
    assert all(9 < seconds < 15 for seconds in closed.values()), closed
    assert request(app.port, "GET", "/actuator/health").status == 200


def test_a_failing_endpoint_answers_500_and_the_server_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: Request) -> Response:
        if request.path == "/raises":
            raise RuntimeError("a broken check")
        return Response(999 if request.path == "/malformed" else 200, b"{}")

    server = Server("127.0.0.1", 0, handler, logging.getLogger("test.httpd"), "test-httpd")
    try:
        with caplog.at_level(logging.ERROR, "test.httpd"):
            assert request(server.port, "GET", "/raises").status == 500
            with pytest.raises(http.client.RemoteDisconnected):  # an answer that cannot be sent: the connection closes
                request(server.port, "GET", "/malformed")
            assert request(server.port, "GET", "/fine").status == 200
    finally:
        server.stop()
    assert [record.getMessage() for record in caplog.records] == [
        "Cannot answer GET /raises", "Closing the connection from 127.0.0.1"]
    assert all(record.exc_info for record in caplog.records)


def test_clients_pipelining_hundreds_of_scrapes_leave_the_probes_fast(app: App, figures: Figures) -> None:
    """A connection answers one request a round: four clients with 200 scrapes each in flight hold no probe up."""
    pipelines = []
    try:
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", app.port), timeout=10)
            sock.sendall(b"GET /actuator/prometheus HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
            pipelines.append(sock)
        first = pipelines[0].recv(1 << 16)  # the server is answering them
        assert first.startswith(b"HTTP/1.1 200")
        timings = probe_times(app.port)
    finally:
        for sock in pipelines:
            sock.close()
    assert max(timings) < 1.0, timings
    figures.add("probe answer time with 4 clients pipelining 200 scrapes each (max of 10)",
                f"{1000 * max(timings):.0f} ms")


@contextlib.contextmanager
def attacking(*attacks: Callable[[threading.Event], None]) -> Iterator[None]:
    """Each attack on a thread of its own until the block ends (it gets the event that says stop)."""
    stop = threading.Event()
    threads = [threading.Thread(target=attack, args=(stop,), daemon=True) for attack in attacks]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def test_a_client_pipelining_without_pause_is_held_back_not_buffered(app: App, figures: Figures) -> None:
    """One connection that sends requests as fast as it can and reads every answer: its inbox grew without bound
    (1.1 GB in 25 s); now the server reads no more while a full head waits, so TCP holds the client back."""
    pid, answers = app.process.pid, [0]
    rss = threads_and_memory(pid)[1]
    sock = socket.create_connection(("127.0.0.1", app.port), timeout=10)

    def write(stop: threading.Event) -> None:
        burst = b"GET /actuator/health/liveness HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
        with contextlib.suppress(OSError):
            while not stop.is_set():
                sock.sendall(burst)

    def read(stop: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set() and (data := sock.recv(1 << 20)):
                answers[0] += data.count(b"HTTP/1.1 200")

    try:
        with attacking(write, read):
            wait_for(lambda: answers[0] >= 200_000, 120, "200,000 pipelined answers")
            timings = probe_times(app.port)
            grown = threads_and_memory(pid)[1] - rss
    finally:
        sock.close()
    figures.add("one client pipelining without pause: RSS growth after 200,000 answers", f"{grown:.0f} MiB")
    figures.add("probe answer time meanwhile (max of 10)", f"{1000 * max(timings):.0f} ms")
    assert grown < 20, f"RSS grew {grown:.0f} MiB"
    assert max(timings) < 1.0, timings


def test_a_flood_of_connections_that_never_read_their_answers_fails_no_probe(app: App, figures: Figures) -> None:
    """Two clients opening connection after connection, each with 50 scrapes pipelined and a tiny receive buffer:
    probes were reset (the cap closed the connection nearest its deadline: a new probe's) or took 5 s (a round
    answered every connection)."""
    opened: list[socket.socket] = []
    started = time.monotonic()

    def flood(stop: threading.Event) -> None:
        made = 0
        # paced at 500 connections a second each: the server's fairness is measured, not a starved CPU's
        while not stop.wait(max(0.0, started + made / 500 - time.monotonic())):
            made += 1
            with contextlib.suppress(OSError):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
                sock.settimeout(5)
                sock.connect(("127.0.0.1", app.port))
                sock.sendall(b"GET /actuator/prometheus HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
                opened.append(sock)
            while len(opened) > 2000:
                opened.pop(0).close()

    try:
        with attacking(flood, flood):
            wait_for(lambda: len(opened) >= 1500, 60, "1,500 connections opened")
            timings = probe_times(app.port) + probe_times(app.port)
    finally:
        for sock in opened:
            sock.close()
    figures.add("probe answer time while connections that never read flood in (max of 20)",
                f"{1000 * max(timings):.0f} ms")
    assert max(timings) < 1.0, timings


@pytest.mark.parametrize("count", [1, 5, 400])  # 400: more than a full head, so the inbox fills and waits
def test_requests_sent_before_a_half_close_are_all_answered(app: App, count: int) -> None:
    """As ``printf ... | nc -N`` sends them: the end of the client's stream closed the connection with requests
    still unanswered (1 answer of 5)."""
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        sock.sendall(b"GET /actuator/health/liveness HTTP/1.1\r\nHost: x\r\n\r\n" * count)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(1 << 16):  # until the server closes, after its last answer
            received += chunk
    assert received.count(b"HTTP/1.1 200") == count
