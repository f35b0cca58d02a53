"""RabbitMQ from Debian's package, run as root as a child process on free loopback ports in a temp dir.

The Debian wrapper in /usr/sbin drops to the ``rabbitmq`` user, which cannot use a root-owned temp dir,
so the node runs from /usr/lib/rabbitmq/bin with everything it writes pointed into the temp dir. epmd
is shared by every node on the machine: each node has a name of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from .tansu import accepts, free_port
from .waiting import terminate, wait_for

BIN = Path("/usr/lib/rabbitmq/bin")


class RabbitMQ:
    """One RabbitMQ node: ``guest``/``guest`` from localhost on ``port``; ``restart`` keeps its durable data."""

    def __init__(self, log: Path | None = None) -> None:
        if not (BIN / "rabbitmq-server").exists():
            raise RuntimeError("missing rabbitmq-server: run `make system-deps` (Debian: rabbitmq-server)")
        self.dir = Path(tempfile.mkdtemp(prefix="polyglot-rabbitmq-"))
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"polyglot-{uuid.uuid4().hex[:10]}@localhost"
        self.log = log or self.dir / "server.log"
        (self.dir / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def environ(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.dir), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.dir / "log"), "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(self.dir / "pid")}

    def start(self, timeout: float = 90) -> RabbitMQ:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([str(BIN / "rabbitmq-server")], env=self.environ(), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        wait_for(lambda: self.process.poll() is not None or (accepts(self.port) and self._running()), timeout,
                 f"rabbitmq on {self.port}", interval=0.25)
        if self.process.poll() is not None:
            raise RuntimeError(f"rabbitmq exited: {self.log.read_text(errors='replace')[-3000:]}")
        return self

    def _running(self) -> bool:
        return self.ctl("await_startup", timeout=30).returncode == 0

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node> ...``."""
        return subprocess.run([str(BIN / "rabbitmqctl"), "-n", self.node, *args], env=self.environ(),
                              capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self) -> None:
        """Stop the node (its durable queues stay on disk for ``start``)."""
        if self.process is not None and self.process.poll() is None:
            self.ctl("stop", timeout=60)
        terminate(self.process, 30)

    def restart(self) -> RabbitMQ:
        self.stop()
        return self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
