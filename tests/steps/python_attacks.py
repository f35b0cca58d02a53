"""A processor for the transaction attack tests: ``poison*`` always fails, ``flaky*`` fails on its first attempt
in this process only, ``drop*`` is filtered, ``slow*`` sleeps a second; anything else is reversed."""

import time

from util import Message, run_processor

SEEN: set[bytes] = set()


def step(message: Message) -> bytes | None:
    payload = message.payload
    if payload.startswith(b"poison"):
        raise ValueError("poison")
    if payload.startswith(b"flaky") and payload not in SEEN:
        SEEN.add(payload)
        raise ValueError("flaky")
    if payload.startswith(b"drop"):
        return None
    if payload.startswith(b"slow"):
        time.sleep(1)
    return payload[::-1]


if __name__ == "__main__":
    run_processor(step)
