"""What the recipes take of the machine: CPU by thread and peak RSS (read from /proc), image sizes (podman)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

IMAGES = ("polyglot-python-processor", "polyglot-python-app", "polyglot-python-task")
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(stat: Path) -> tuple[str, float]:
    """A process's or thread's name and CPU seconds (user + system) from its /proc stat file."""
    text = stat.read_text()
    fields = text[text.rindex(")") + 2:].split()  # the name, in parentheses, may hold spaces
    return text[text.index("(") + 1:text.rindex(")")], (int(fields[11]) + int(fields[12])) / TICKS


def cpu_snapshot(pids: list[int], broker: int) -> dict[str, Any]:
    """The CPU each thread of each process in ``pids`` has taken so far, each process's total, the broker's, that
    of this process's waited-for children (the kcat runs) and of this process, at one moment."""
    instances = []
    for pid in pids:
        threads = {}
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:
                threads[int(stat.parent.name)] = _cpu_seconds(stat)
            except (OSError, ValueError):  # a thread that ended meanwhile: its time stays in the process total
                continue
        instances.append({"pid": pid, "total": _cpu_seconds(Path(f"/proc/{pid}/stat"))[1], "threads": threads})
    children, own = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return {"at": time.perf_counter(), "instances": instances, "broker": _cpu_seconds(Path(f"/proc/{broker}/stat"))[1],
            "kcat": children.ru_utime + children.ru_stime, "bench": own.ru_utime + own.ru_stime}


def cpu_taken(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds taken between two snapshots: each thread by name (busiest first), each instance, the rest."""
    instances = []
    for first, last in zip(before["instances"], after["instances"], strict=True):
        threads = [{"tid": tid, "name": name + (" (main)" if tid == last["pid"] else ""),
                    "cpu_s": round(cpu - first["threads"].get(tid, (name, 0.0))[1], 2)}
                   for tid, (name, cpu) in last["threads"].items()]
        instances.append({"pid": last["pid"], "cpu_s": round(last["total"] - first["total"], 2),
                          "threads": sorted(threads, key=lambda thread: -thread["cpu_s"])})
    return {"window_s": round(after["at"] - before["at"], 3), "instances": instances,
            **{part: round(after[part] - before[part], 2) for part in ("broker", "kcat", "bench")}}


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def image_sizes() -> dict[str, float]:
    if shutil.which("podman") is None:
        return {}
    sizes = {}
    for image in IMAGES:
        done = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}",
                               f"localhost/polyglot/{image}:test"], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            sizes[image] = int(done.stdout.strip()) / 1e6
    return sizes
