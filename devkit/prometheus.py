"""Prometheus from Debian's package, run as a child process on loopback, scraping the apps it is given."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .tansu import accepts, free_port
from .waiting import terminate, wait_for


class Prometheus:
    """A Prometheus server scraping ``metrics_path`` (``/actuator/prometheus``) of each target every second;
    ``honor_labels``: the scraped ``job`` and ``instance`` labels are kept, as for a Pushgateway."""

    def __init__(self, targets: list[str], metrics_path: str = "/actuator/prometheus",
                 honor_labels: bool = False) -> None:
        if not shutil.which("prometheus"):
            raise RuntimeError("missing prometheus: run `make system-deps` (Debian: prometheus)")
        self.dir = Path(tempfile.mkdtemp(prefix="polyglot-prometheus-"))
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
                  "scrape_configs": [{"job_name": "scdf", "metrics_path": metrics_path, "honor_labels": honor_labels,
                                      "static_configs": [{"targets": targets}]}]}
        (self.dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with (self.dir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: self.process.poll() is not None or (accepts(self.port) and self._ready()), 60,
                 f"prometheus on {self.port}")
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(self.dir / 'server.log').read_text()[-2000:]}")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of a PromQL query: ``[{"metric": {labels}, "value": [time, "v"]}, ...]``."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        if answer.get("status") != "success":
            raise RuntimeError(f"query {expression!r} failed: {answer}")
        return answer["data"]["result"]

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """Grafana's ``label_values(label)`` and ``label_values(match, label)``: the label's values (of ``match``)."""
        query = urllib.parse.urlencode({"match[]": match} if match else {})
        url = f"http://127.0.0.1:{self.port}/api/v1/label/{label}/values" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)["data"]

    def targets_up(self) -> bool:
        """Every target scraped successfully at least once."""
        return bool(self.query("up")) and all(sample["value"][1] == "1" for sample in self.query("up"))

    def stop(self) -> None:
        terminate(self.process, 30)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
