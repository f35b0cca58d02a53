"""SIGTERM's drain: the stop flag, the drain's budget, and the watchdog that ends a drain that overran it."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 8.0  # the drain's budget after SIGTERM, inside Kubernetes' and Spring's 10 s
OVERRUN_SECONDS = 1.5  # what closing the clients may add to it before the process leaves regardless


class StartInterruptedError(BaseException):
    """SIGTERM arrived while connecting (a broker may be unreachable): nothing to drain, leave at once.

    A BaseException, so that no client code catching Exception swallows it.
    """


class Shutdown:
    """Set once by SIGTERM or SIGINT; the drain then has until ``deadline``."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._time = 0.0

    def request(self, signum: int) -> None:
        """Start the drain (once) and its watchdog."""
        if self.stop.is_set():
            return
        self._time = time.monotonic()
        log.info("Received %s: finishing the current batch, then closing", signal.Signals(signum).name)
        self.stop.set()
        overdue = threading.Timer(SHUTDOWN_SECONDS + OVERRUN_SECONDS, _overdue)
        overdue.daemon = True
        overdue.start()

    @property
    def deadline(self) -> float:
        return self._time + SHUTDOWN_SECONDS

    def close_seconds(self) -> float:
        """How long closing a client may wait: what is left of the drain's budget, 2 s without a SIGTERM."""
        # a quarter of a second at least: kafka-python's own I/O thread logs errors when closed at once
        return min(2.0, max(0.25, self.deadline - time.monotonic())) if self.stop.is_set() else 2.0


def _overdue() -> None:
    """The drain outlived its budget (a wait no client bounds: a commit, a close, a blocked connection): leave
    now; what was not committed is delivered again."""
    log.error("Shutdown did not finish within %.0f s of SIGTERM: exiting now; records not committed will be "
              "delivered again", SHUTDOWN_SECONDS + OVERRUN_SECONDS)
    logging.shutdown()
    os._exit(1)
