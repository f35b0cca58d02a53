"""A Prometheus Pushgateway from Debian's package, run as a child process on loopback, its metrics in memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from .tansu import accepts, free_port
from .waiting import terminate, wait_for


class Pushgateway:
    """A Pushgateway on ``127.0.0.1:<port>``; nothing persisted (Debian's default file is shared, so none is used)."""

    def __init__(self, port: int | None = None) -> None:
        if not shutil.which("prometheus-pushgateway"):
            raise RuntimeError("missing prometheus-pushgateway: run `make system-deps` (Debian package: the same)")
        self.dir = Path(tempfile.mkdtemp(prefix="polyglot-pushgateway-"))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Pushgateway:
        with (self.dir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file="],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: self.process.poll() is not None or (accepts(self.port) and self._ready()), 60,
                 f"pushgateway on {self.port}")
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus-pushgateway exited: {(self.dir / 'server.log').read_text()[-2000:]}")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def text(self) -> str:
        """``/metrics``: every pushed group's metrics (and the Pushgateway's own)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            return response.read().decode()

    def samples(self, prefix: str = "spring_cloud_task") -> list[Sample]:
        """The pushed samples whose names start with ``prefix``."""
        return [sample for family in text_string_to_metric_families(self.text()) for sample in family.samples
                if sample.name.startswith(prefix)]

    def groups(self) -> list[dict[str, Any]]:
        """``/api/v1/metrics``: each group's labels (``job`` and the grouping key) and its metrics."""
        with urllib.request.urlopen(f"{self.url}/api/v1/metrics", timeout=10) as response:
            return json.load(response)["data"] or []

    def group_labels(self) -> list[dict[str, str]]:
        return [group["labels"] for group in self.groups()]

    def stop(self) -> None:
        terminate(self.process, 30)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
