"""SIGTERM and SIGINT during a task: they end the body at once, and wait their turn outside it (never kill)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# What a wait outside the body asks: the signal that arrived and waits its turn, if any.
Pending = Callable[[], int | None]


class TaskTerminatedError(BaseException):
    """SIGTERM or SIGINT arrived while the task body ran.

    A BaseException, so that no ``except Exception`` in the body or a library swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"Task terminated by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


class Signals:
    """SIGTERM/SIGINT end the body with TaskTerminatedError; outside it they wait their turn, never kill."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.terminated: int | None = None  # the signal that ended the body, even if the body caught it
        self.live = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.live:
            self.live = False
            self.terminated = signum
            raise TaskTerminatedError(signum)
        self.pending = self.pending or signum

    def waiting(self) -> int | None:
        """The signal that arrived outside the body, if any (what the lock's waits watch)."""
        return self.pending

    @contextmanager
    def armed(self) -> Iterator[None]:
        if self.pending:
            self.terminated = self.pending
            raise TaskTerminatedError(self.pending)
        self.live = True
        try:
            yield
        finally:
            self.live = False


def pause(seconds: float, pending: Pending) -> int | None:
    """Wait ``seconds``, or less when a signal is pending (checked every 50 ms); that signal, if any."""
    deadline = time.monotonic() + seconds
    while not (signum := pending()):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(remaining, 0.05))
    return signum
