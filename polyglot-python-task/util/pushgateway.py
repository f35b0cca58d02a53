"""Pushing a registry to a Prometheus Pushgateway as Spring Boot's PrometheusPushGatewayManager does.

A POST (``pushadd``) at the push rate from a daemon thread, then, when the process ends, the shutdown operation:
POST (Boot 2's PUSH), PUT, DELETE or NONE. A Pushgateway that is down, slow or answers an error never changes
the task's outcome: each push gives up after ``TIMEOUT`` (and ``GRACE``) seconds in all (one still running is
abandoned in its daemon thread), and the first failure is one WARN line (the URL without credentials, the
reason); later ones are logged at DEBUG. A redirect is a failed push: no request, and no credential, goes to a
host the answer names.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import delete_from_gateway, push_to_gateway, pushadd_to_gateway
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds a push may take (Boot's client waits 10 s to connect and 10 s to read)
GRACE = 1.0  # seconds a push may run beyond its socket timeout, so that timeout reports it first
OPERATIONS = ("NONE", "POST", "PUSH", "PUT", "DELETE")  # PUSH: Boot 2's name for POST


@dataclass(frozen=True)
class Gateway:
    """Where and as what the metrics go: the base URL (credentials taken out of it), job, grouping key, auth."""

    url: str
    job: str
    grouping_key: Mapping[str, str] = field(default_factory=dict)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, url: str, job: str, grouping_key: Mapping[str, str], username: str | None = None,
           password: str | None = None, token: str | None = None) -> Gateway:
        """``user:password@`` in the URL is basic auth, unless a username is set; the URL keeps no credentials.
        ValueError (its text without the URL) when the URL is malformed: not http(s), no host, a bad port."""
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("expected http://host[:port] or https://host[:port]")
        try:
            parts.port  # noqa: B018 - ValueError when the port is not a number from 0 to 65535
        except ValueError:
            raise ValueError("its port is not a number from 0 to 65535") from None
        if parts.username is not None and not username:
            username = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
        host = parts.netloc.rpartition("@")[2]
        return cls(urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")), job, dict(grouping_key),
                   username, password, token)

    @property
    def where(self) -> str:
        """For log lines: the group's URL, never a credential."""
        key = "".join(f"/{k}/{v}" for k, v in sorted(self.grouping_key.items()))
        return f"{self.url.rstrip('/')}/metrics/job/{self.job}{key}"

    def handler(self, url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                data: bytes) -> Callable[[], None]:
        """prometheus_client's request, with the Authorization header and the Pushgateway's own error text."""
        def send() -> None:
            request = urllib.request.Request(url, data=data or None, method=method)
            for name, value in [*headers, *self._authorization()]:
                request.add_header(name, value)
            try:
                with _OPENER.open(request, timeout=timeout) as response:
                    response.read()
            except urllib.error.HTTPError as error:
                text = " ".join(error.read(300).decode("utf-8", "replace").split())
                raise OSError(f"HTTP {error.code} {error.reason}" + (f": {text}" if text else "")) from None
        return send

    def _authorization(self) -> list[tuple[str, str]]:
        if self.token:
            return [("Authorization", f"Bearer {self.token}")]
        if self.username:
            pair = f"{self.username}:{self.password or ''}".encode()
            return [("Authorization", "Basic " + base64.b64encode(pair).decode("ascii"))]
        return []


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is an HTTPError (a failed push naming the status): never followed, so no request, and no
    Authorization header, reaches the host it names."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class Pusher:
    """Pushes ``registry`` to ``gateway`` every ``rate`` seconds (a daemon thread), and once at ``close``."""

    def __init__(self, gateway: Gateway, registry: Collector, rate: float, shutdown: str,
                 timeout: float = TIMEOUT) -> None:
        self.gateway, self.registry, self.rate, self.timeout = gateway, registry, rate, timeout
        self.shutdown = "POST" if shutdown == "PUSH" else shutdown
        self._lock = threading.Lock()  # one request at a time: the final one waits for a periodic one in flight
        self._stop = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="prometheus-push-gateway", daemon=True)

    def start(self) -> Pusher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.rate):  # Boot's fixed rate: the first push one period after the start
            self.send("POST", periodic=True)

    def close(self) -> None:
        """Stop the periodic pushes, then the shutdown operation: it waits for a push in flight, all within one
        timeout, so the process ends at most ``timeout`` (and ``GRACE``) seconds later; no push thread ever holds it."""
        self._stop.set()
        if self.shutdown != "NONE":
            self.send(self.shutdown)

    def send(self, method: str, periodic: bool = False) -> bool:
        """One POST, PUT or DELETE of the group, within ``timeout`` (and ``GRACE``) seconds in all; False (logged)
        when it failed or ran out of time (then abandoned in its daemon thread). A periodic push that finds the
        pushes stopped is dropped, so none follows the shutdown operation."""
        deadline = time.monotonic() + self.timeout + GRACE
        if not self._lock.acquire(timeout=self.timeout):
            return self._failed(method, "a previous push still runs")
        if periodic and self._stop.is_set():
            self._lock.release()
            return False
        outcome: list[str | None] = []  # the failure's reason, or None: what the request thread leaves
        request = threading.Thread(target=self._request, args=(method, outcome), name="prometheus-push", daemon=True)
        request.start()  # it releases the lock when it ends, even after it was abandoned
        request.join(max(0.0, deadline - time.monotonic()))
        if not outcome:
            return self._failed(method, f"no complete answer within {self.timeout + GRACE:g} s (abandoned)")
        if outcome[0] is not None:
            return self._failed(method, outcome[0])
        log.debug("%s of the metrics to %s", method, self.gateway.where)
        return True

    def _request(self, method: str, outcome: list[str | None]) -> None:
        """The request itself, in its own thread: its reason of failure (or None) appended to ``outcome``."""
        gateway = self.gateway
        try:
            if method == "DELETE":
                delete_from_gateway(gateway.url, gateway.job, gateway.grouping_key, self.timeout, gateway.handler)
            else:
                push = push_to_gateway if method == "PUT" else pushadd_to_gateway
                push(gateway.url, gateway.job, self.registry, gateway.grouping_key, self.timeout, gateway.handler)
            outcome.append(None)
        except Exception as error:  # noqa: BLE001 - whatever the push meets (refused, timeout, HTTP error, a bad
            # URL) is logged: metrics never change the task's outcome
            outcome.append(" ".join(str(getattr(error, "reason", None) or error).split()) or type(error).__name__)
        finally:
            self._lock.release()

    def _failed(self, method: str, reason: str) -> bool:
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "%s of the task's metrics to the Prometheus Pushgateway at %s failed: %s (the task goes on; "
                "further failures are logged at DEBUG)", method, self.gateway.where, reason)
        return False
