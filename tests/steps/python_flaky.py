"""A processor for the tests that fails on chosen records: ``fail-<k>-<n>`` raises on its first ``k`` attempts
(counted in this process's memory: a restart starts again), ``fail-always-<n>`` on every one; each attempt at a
``fail-`` record is logged with its wall time, and takes a moment (slow work: the outputs sent before it reach the
broker before its batch aborts). Every other payload passes unchanged."""

import logging
import time
from collections import Counter

from util import Message, run_processor

log = logging.getLogger("flaky")
attempts: Counter[bytes] = Counter()


def flaky(message: Message) -> Message:
    payload = message.payload
    if payload.startswith(b"fail-"):
        attempts[payload] += 1
        log.info("Attempt %d at %s at %.3f", attempts[payload], payload.decode(), time.time())
        times = payload.split(b"-")[1]
        if times == b"always" or attempts[payload] <= int(times):
            time.sleep(0.3)
            raise RuntimeError(f"chosen failure of {payload.decode()} (attempt {attempts[payload]})")
    return message


if __name__ == "__main__":
    run_processor(flaky)
