"""Run a recipe script as SCDF would (exec-style arguments, env vars) and watch its log."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from .waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of ``GET http://127.0.0.1:<port><path>``; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


class App:
    """One recipe process; its merged stdout and stderr go to a file that tests read."""

    def __init__(self, script: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 log_path: Path | None = None, python: str = sys.executable, cwd: Path | None = None) -> None:
        self.script = ROOT / script
        self.log_path = log_path or Path(os.devnull)
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("SPRING_", "SERVER_"))}
        environ.update(env or {})
        with self.log_path.open("wb") as log:
            # The script's own folder comes first on its path (its util), wherever it runs.
            self.process = subprocess.Popen([python, str(self.script), *args], cwd=cwd or self.script.parent,
                                            env=environ, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.process.poll() is not None:
                match = re.search(pattern, self.log)
                if match:
                    return match
                raise AssertionError(f"{self.script.name} exited {self.process.returncode}:\n{self.log[-3000:]}")
            return re.search(pattern, self.log)
        return wait_for(found, timeout, f"/{pattern}/ in the log of {self.script.name}")

    @property
    def port(self) -> int:
        return int(self.wait_for_log(r"Actuator started on port (\d+)").group(1))

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.port, path)

    def json(self, path: str) -> dict:
        return json.loads(self.get(path)[1])

    def metric(self, name: str, /, **labels: str) -> float:
        """The sum of the samples named ``name`` from ``/actuator/prometheus`` that carry ``labels`` (0: none)."""
        return sum(sample.value for sample in self.samples(name) if labels.items() <= sample.labels.items())

    def samples(self, name: str) -> list[Sample]:
        """Every sample named ``name`` on ``/actuator/prometheus``, with all its labels."""
        text = self.get("/actuator/prometheus")[1]
        return [sample for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == name]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send ``sig`` and wait for the exit code; kill after ``timeout`` s."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
