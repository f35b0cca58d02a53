"""A sink for the tests that holds each record until its gate file exists, then appends the payload to a file."""

import os
import threading

from util import Message, Property, run_sink

FILE = Property("sink.file", str, None, "Where the payloads are written.", required=True)
GATE = Property("sink.gate", str, None, "No record is written before this file exists.", required=True)
OPTIONS = {"path": FILE, "gate": GATE}
_waiting = threading.Event()  # never set: a pause between looks at the gate


def write(message: Message, path: str, gate: str) -> None:
    while not os.path.exists(gate):
        _waiting.wait(0.05)
    with open(path, "a", encoding="utf-8") as out:
        out.write(message.text() + "\n")


if __name__ == "__main__":
    run_sink(write, OPTIONS)
