"""The results of ``make bench`` as the reader sees them: the targets, ``latest.md`` and ``latest.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import batch_rows, lag_rows, transaction_rows

CLIENTS = ("librdkafka", "kafka-python")
DEFAULT = CLIENTS[0]


# Peak RSS goals of the processor by Kafka client (MB); RabbitMQ's is 45 too.
RSS_GOALS_MB = {"librdkafka": 45, "kafka-python": 60}


# name, measured value, comparison, target (None: reported only): reported against, never asserted.
def targets(r: dict[str, Any]) -> list[tuple[str, float, str, float | None]]:
    t = {name: v["median"] for name, v in r["throughput"].items()}
    found: list[tuple[str, float, str, float | None]] = []

    def ratio(name: str, top: str, bottom: str, comparison: str, goal: float | None) -> None:
        if top in t and bottom in t:
            found.append((name, t[top] / t[bottom], comparison, goal))

    ratio("processor (librdkafka) / librdkafka at-least-once loop", "processor (librdkafka)",
          "librdkafka at-least-once loop", ">=", 0.9)
    ratio("router (librdkafka) / librdkafka at-least-once loop", "router (librdkafka)",
          "librdkafka at-least-once loop", ">=", 0.8)
    ratio("processor (librdkafka) / librdkafka bare loop", "processor (librdkafka)", "librdkafka bare loop",
          ">=", None)
    ratio("processor (kafka-python) / kafka-python at-least-once loop", "processor (kafka-python)",
          "kafka-python at-least-once loop", ">=", 0.9)
    ratio("processor (kafka-python) / kafka-python bare loop", "processor (kafka-python)", "kafka-python bare loop",
          ">=", 0.7)
    ratio("processor (librdkafka) / naive seed loop (as shipped)", "processor (librdkafka)",
          "naive seed loop (as shipped)", ">=", 5)
    ratio("2 instances / 1 instance", "scale-out, 2 instances", "scale-out, 1 instance", ">=", 1.5)
    ratio("processor (RabbitMQ) with confirms / pika bare loop without confirms", "processor (RabbitMQ)",
          "pika bare loop without confirms (RabbitMQ)", ">=", 0.9)
    ratio("router (RabbitMQ) / pika bare loop without confirms", "router (RabbitMQ)",
          "pika bare loop without confirms (RabbitMQ)", ">=", None)
    for name, top, bottom, goal in [*batch_rows.RATIOS, *transaction_rows.RATIOS, *lag_rows.RATIOS]:
        ratio(name, top, bottom, ">=", goal)
    for client, latency in r["latency_ms"].items():
        found.append((f"p99 latency at 100 records/s, {client} (ms)", latency["p99"], "<=", 20))
    rabbit_figures = r.get("rabbit", {})
    if "p99" in rabbit_figures.get("latency_ms", {}):
        found.append(("p99 latency at 100 messages/s, RabbitMQ (ms)", rabbit_figures["latency_ms"]["p99"], "<=", None))
    if rabbit_figures.get("peak_rss_mb"):
        found.append(("peak RSS of the processor, RabbitMQ (MB)", rabbit_figures["peak_rss_mb"]["max"], "<=", 45))
    for client, peaks in r["peak_rss_mb"].items():
        found.append((f"peak RSS of the processor, {client} (MB)", peaks["max"], "<=", RSS_GOALS_MB.get(client, 45)))
    found.append(("start-up to health UP (s)", r["startup_s"]["median"], "<=", 0.5))
    return found


def met(value: float, comparison: str, target: float | None) -> bool:
    return target is None or (value >= target if comparison == ">=" else value <= target)


def markdown(r: dict[str, Any], notes: dict[str, str]) -> str:
    lines = [f"# Benchmark results ({r['when']})", "",
             f"{r['records']:,} records of {r['record_bytes']} bytes, {r['repetitions']} repetitions, one embedded "
             f"Tansu broker, {r['partitions']}-partition input; {r['machine']['cpus']} CPUs, Python "
             f"{r['machine']['python']}. Throughput is read off the output records' timestamps, first to last.", "",
             "| run | min records/s | median | max |", "|---|---:|---:|---:|"]
    for name, v in r["throughput"].items():
        lines.append(f"| {name} | {v['min']:,.0f} | {v['median']:,.0f} | {v['max']:,.0f} |")
    lines += _stall_lines(r.get("stalls", {}))
    if r.get("drain_s"):
        lines += ["", f"Backlog drains (`bench/lag_rows.py`), exec to the group's commit of all {r['records']:,} "
                  "records, run by run: " + "; ".join(f"{name}: {' / '.join(f'{s:.1f}' for s in runs)} s"
                                                      for name, runs in r["drain_s"].items()) + "."]
    dflt, start = r["latency_default_ms"], r["startup_s"]
    lines += [""]
    for client, lat in r["latency_ms"].items():
        lines.append(f"Latency through the processor on {client} at {lat['rate']} records/s, produce to output "
                     f"consumed ({lat['records']} records), with `fetch.max.wait.ms=10`: p50 {lat['p50']:.1f} ms, "
                     f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms.")
    lines.append(f"With the default fetch wait (500 ms) on {DEFAULT}: p50 {dflt['p50']:.1f} ms, p99 {dflt['p99']:.1f} "
                 f"ms, max {dflt['max']:.1f} ms (see the notes).")
    for client, rss in r["peak_rss_mb"].items():
        lines.append(f"Peak RSS of the processor on {client}: {rss['min']:.0f} / {rss['median']:.0f} / "
                     f"{rss['max']:.0f} MB (min / median / max).")
    lines.append(f"Start-up, exec to `/actuator/health` UP ({DEFAULT}): {start['min']:.2f} / {start['median']:.2f} / "
                 f"{start['max']:.2f} s.")
    if r["image_mb"]:
        lines.append("Image sizes (on the test tier's Debian stand-in base, not the real slim one): "
                     + ", ".join(f"{name} {size:.0f} MB" for name, size in r["image_mb"].items()) + ".")
    else:
        lines.append("Image sizes: no images built on this machine (`make test` builds them).")
    lines += ["", "## Targets", "", "| target | measured | goal | |", "|---|---:|---:|---|"]
    for name, value, comparison, goal in targets(r):
        verdict = "reported" if goal is None else "met" if met(value, comparison, goal) else "MISSED"
        lines.append(f"| {name} | {value:.2f} | {'' if goal is None else f'{comparison} {goal}'} | {verdict} |")
    missed = [name for name, value, comparison, goal in targets(r) if not met(value, comparison, goal)]
    if missed:
        lines += ["", "## Why a target is missed", ""]
        lines += [f"- **{name}**: {notes.get(name, 'not analysed yet.')}" for name in missed]
    profile = notes.get("profile")
    if profile:  # free markdown: a string, or a list of lines (a table, say)
        lines += ["", "## Profile", ""] + ([profile] if isinstance(profile, str) else profile)
    lines += _cpu_lines(r.get("scale_out_cpu", {}), r["machine"]["cpus"])
    lines += ["", "## Notes", ""] + [f"- {note}" for note in notes.get("general", [])]
    return "\n".join(lines) + "\n"


def _stall_lines(stalls: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The reference loops' stalls, run by run."""
    if not stalls:
        return []

    def runs(reports: list[dict[str, Any]], key: str, spec: str = "") -> str:
        return " / ".join(f"{report[key]:{spec}}" for report in reports)

    lines = ["", "Stalls of the reference loops, run by run: a stall is a wait for records (each loop takes what is "
             "queued and waits, at most 100 ms, only when nothing is) that came back empty or took over 100 ms, "
             "counted from the first record on (`bench/stalls.py`).", "",
             "| loop | stalls | waits | time waiting (ms) | longest wait (ms) |", "|---|---:|---:|---:|---:|"]
    for name, reports in stalls.items():
        lines.append(f"| {name} | {runs(reports, 'stalls')} | {runs(reports, 'waits')} | "
                     f"{runs(reports, 'waited_ms', '.0f')} | {runs(reports, 'longest_wait_ms', '.0f')} |")
    return lines


def _cpu_lines(cpu: dict[str, list[dict[str, Any]]], cpus: int) -> list[str]:
    """Where the CPU went in the last run of each scale-out row: each thread of each instance, and the rest."""
    if not cpu:
        return []
    lines = ["", "## Where the CPU goes when scaling out", "",
             f"CPU seconds taken from the produce to the last output record, in the last run of each row, and the "
             f"share of one core over that window ({cpus} cores in all). Threads that took under 0.01 s are summed; "
             "kcat is the producer of the input and the reader that times the output."]
    for name, taken in cpu.items():
        last, window = taken[-1], taken[-1]["window_s"]
        lines += ["", f"**{name}**: {window:.2f} s from the produce to the last output record, the output itself "
                  f"{last.get('output_s', window):.2f} s.", "", "| process | thread | CPU s | % of a core |",
                  "|---|---|---:|---:|"]
        total = 0.0
        for number, instance in enumerate(last["instances"], 1):
            busy = [thread for thread in instance["threads"] if thread["cpu_s"] >= 0.01]
            rest = max(0.0, instance["cpu_s"] - sum(thread["cpu_s"] for thread in busy))
            rows = [(f"{thread['name']} ({thread['tid']})", thread["cpu_s"]) for thread in busy]
            rows.append((f"{len(instance['threads']) - len(busy)} other threads", rest))
            lines += [f"| instance {number} | {thread} | {seconds:.2f} | {100 * seconds / window:.0f} % |"
                      for thread, seconds in rows]
            lines.append(f"| instance {number} | all | {instance['cpu_s']:.2f} | "
                         f"{100 * instance['cpu_s'] / window:.0f} % |")
            total += instance["cpu_s"]
        for part, label in (("broker", "Tansu broker"), ("kcat", "kcat"), ("bench", "bench/run.py")):
            lines.append(f"| {label} | all | {last[part]:.2f} | {100 * last[part] / window:.0f} % |")
            total += last[part]
        lines.append(f"| all of the above | | {total:.2f} | {100 * total / window:.0f} % |")
    return lines


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["throughput"])
    medians = [r["throughput"][n]["median"] / 1000 for n in names]
    low = [m - r["throughput"][n]["min"] / 1000 for n, m in zip(names, medians, strict=True)]
    high = [r["throughput"][n]["max"] / 1000 - m for n, m in zip(names, medians, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.barh(names[::-1], medians[::-1], xerr=[low[::-1], high[::-1]], color="#4c72b0", capsize=3)
    ax.set_xscale("log")  # the C pipe is tens of times faster than any Python loop
    ax.set_xlabel("thousand records/s, log scale (median, min-max)")
    ax.set_title(f"{r['records']:,} records of {r['record_bytes']} B on Tansu, {r['machine']['cpus']} CPUs")
    for y, m in enumerate(medians[::-1]):
        ax.text(m, y, f" {m:.1f}k", va="center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
