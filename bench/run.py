"""``make bench``: throughput, latency, memory and start-up of the recipes next to the wire and client limits.

Everything runs in one go on one embedded Tansu broker and writes ``bench/results/latest.{md,json,png}``.
Throughput is read off the output records' own timestamps (first to last), so start-up and group joins
are not counted. Environment: ``BENCH_RECORDS`` (200000) and ``BENCH_REPS`` (3) shrink a trial run;
``BENCH_ONLY`` (comma list of row names) runs only those rows; ``BENCH_BASELINE`` (another checkout, say a
``git worktree`` of the previous commit) adds its processor on each client to the same run, side by side;
``BENCH_PROFILE`` (a folder) records each app run with py-spy into it.

The reference loops report their stalls (waits for records that came back empty or took over 100 ms, see
``bench/stalls.py``), and the scale-out runs the CPU each thread of each instance took, with the broker's and
the measuring kcat's beside them: both go into the results. ``bench/notes.json`` holds what the figures cannot
say: a note per target (shown when it is missed), ``profile`` (markdown, a string or a list of lines, shown as
its own section) and ``general`` (a list of notes).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench import batch_rows, lag_rows, rabbit, transaction_rows
from bench.footprint import cpu_snapshot, cpu_taken, image_sizes, peak_rss_mb
from bench.report import CLIENTS, DEFAULT, chart, markdown, met, targets
from devkit.apps import App, http_get
from devkit.tansu import Tansu, free_port
from devkit.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RECORDS = int(os.environ.get("BENCH_RECORDS", "200000"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
ONLY = {name.strip() for name in os.environ.get("BENCH_ONLY", "").split(",") if name.strip()}
BASELINE = Path(os.environ["BENCH_BASELINE"]).resolve() if os.environ.get("BENCH_BASELINE") else None
PROFILE = Path(os.environ["BENCH_PROFILE"]).resolve() if os.environ.get("BENCH_PROFILE") else None
# The seed's loop as it shipped: kafka-python from PyPI without crc32c, in a venv of its own (`make bench`).
SEED_PYTHON = ROOT / ".venv-seed" / "bin" / "python"
PARTITIONS = 4
LATENCY_RATE, LATENCY_RECORDS = 100, 1000
FAST_GROUPS = ["--spring.cloud.stream.kafka.binder.consumerProperties.session.timeout.ms=6000",
               "--spring.cloud.stream.kafka.binder.consumerProperties.heartbeat.interval.ms=2000"]
SCRIPTS = {"processor": "polyglot-python-processor/python_processor.py",
           "router": "polyglot-python-app/python_router_app.py", **batch_rows.STEPS}
# Tansu answers a waiting fetch only when this expires (Kafka answers when data arrives): see notes.json.
TUNED_FETCH_WAIT = "--spring.cloud.stream.kafka.binder.consumerProperties.fetch.max.wait.ms=10"


def value(i: int) -> str:
    """100 bytes of text ending in a digit, so the router can route it too."""
    return f"11/23/26 09:00:00 {'x' * 74}{i:08d}"


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker = Tansu(workdir / "tansu.log").start()
        self.kcat_env = {**os.environ, "LD_LIBRARY_PATH": str(_librdkafka_dir(workdir))}
        self.serial = 0

    def name(self, kind: str) -> str:
        self.serial += 1
        return f"bench.{kind}.{self.serial}"

    def sink(self) -> str:
        """A fresh output topic with one partition, as every run here writes to."""
        return self.create(self.name("out"), 1)

    def kcat(self, *args: str, stdin: Any = None, timeout: float = 300) -> str:
        done = subprocess.run(["kcat", "-b", self.broker.bootstrap, "-q", *args], env=self.kcat_env, stdin=stdin,
                              capture_output=True, timeout=timeout, check=True)
        return done.stdout.decode()

    def create(self, topic: str, partitions: int = PARTITIONS) -> str:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
        try:
            admin.create_topics([NewTopic(topic, partitions, -1)])
        finally:
            admin.close()
        return topic

    def produce(self, topic: str, partitions: int = PARTITIONS, render: Callable[[int], str] = value,
                content_type: str = "text/plain") -> None:
        """RECORDS values (``render(i)``), an equal share on each of the topic's partitions, each with a raw
        ``contentType`` header.

        One kcat a partition, all at once: left to its sticky partitioner, one kcat put anywhere from 1 to 98,000
        of 200,000 records on one partition, and one of two instances had next to nothing to do.
        """
        share = -(-RECORDS // partitions)
        producers = []
        for partition in range(partitions):
            lines = self.workdir / f"input-{render.__name__}-{partition}-of-{partitions}.txt"
            if not lines.exists():
                lines.write_text("".join(render(i) + "\n" for i in range(partition * share,
                                                                       min(RECORDS, (partition + 1) * share))))
            with lines.open("rb") as source:
                producers.append(subprocess.Popen(
                    ["kcat", "-b", self.broker.bootstrap, "-q", "-P", "-t", topic, "-p", str(partition), "-H",
                     f"contentType={content_type}", "-X", "linger.ms=5"], env=self.kcat_env, stdin=source,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for producer in producers:
            _, error = producer.communicate(timeout=300)
            if producer.returncode:
                raise RuntimeError(f"kcat could not produce: {error.decode(errors='replace')}")

    def throughput(self, outputs: dict[str, int]) -> float:
        """Records per second between the first and the last output record's timestamp."""
        stamps: list[int] = []
        for topic, count in outputs.items():
            if count:
                found = self.kcat("-C", "-t", topic, "-o", "beginning", "-c", str(count), "-f", "%T\n").split()
                stamps += [int(s) for s in found]
        if len(stamps) < sum(outputs.values()):
            raise RuntimeError(f"only {len(stamps)} of {sum(outputs.values())} output records arrived")
        return len(stamps) / max((max(stamps) - min(stamps)) / 1000, 1e-3)

    def app(self, kind: str, source: str, sinks: dict[str, str], group: str, *extra: str, client: str = DEFAULT,
            root: Path = ROOT) -> App:
        bindings = {"input.destination": source, "input.group": group,
                    **{f"{binding}.destination": topic for binding, topic in sinks.items()}}
        args = ["--server.port=0", "--reversestring=true", f"--spring.cloud.stream.kafka.binder.client={client}",
                *FAST_GROUPS, *extra,
                *(f"--spring.cloud.stream.bindings.{key}={value}" for key, value in bindings.items())]
        env = {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": self.broker.bootstrap}
        if kind in batch_rows.STEPS:  # a step of bench/steps runs on the processor's util, as a user's step does
            env["PYTHONPATH"] = str(root / batch_rows.UTIL)
        return App(str(root / SCRIPTS[kind]), args, env, self.workdir / f"{group}.log")

    # -- the measurements ---------------------------------------------------------------------------
    def run_app(self, kind: str, source: str, client: str = DEFAULT, root: Path = ROOT,
                extra: tuple[str, ...] = (), label: str = "",
                check: Callable[[int, dict[str, int], str], None] | None = None) -> tuple[float, float]:
        """Throughput of one app instance over the prepared input (``extra``: its own arguments), and its peak RSS
        in MB. ``label`` names its profile (the kind by default); ``check`` is given its exit code, its outputs
        (topic: records) and its group once it stopped, and raises if they are wrong."""
        if kind == "router":
            sinks = {"even": self.sink(), "odd": self.sink()}
            outputs = {sinks["even"]: (RECORDS + 1) // 2, sinks["odd"]: RECORDS // 2}
        else:
            sinks = {"output": self.sink()}
            outputs = {sinks["output"]: RECORDS}
        group = self.name("group")
        app = self.app(kind, source, sinks, group, *extra, client=client, root=root)
        spy = _profile(app.process.pid, f"{label or kind}-{client}-{'baseline' if root != ROOT else 'head'}-{group}")
        try:
            rate = self.throughput(outputs)
            rss = peak_rss_mb(app.process.pid)
            code = app.stop()
            if check is not None:
                check(code, outputs, group)
        finally:
            app.kill()
            if spy is not None:
                spy.wait(30)
        return rate, rss

    def run_script(self, script: str, source: str, python: Path | str = sys.executable) -> tuple[float, Any]:
        """Throughput of a loop under bench/, and the JSON line it printed last (its stalls; None: none)."""
        sink = self.sink()
        process = subprocess.Popen([str(python), str(ROOT / "bench" / script), self.broker.bootstrap, source, sink,
                                    str(RECORDS)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            rate = self.throughput({sink: RECORDS})
            try:
                out = process.communicate(timeout=60)[0].decode()  # the loop exits once it has copied RECORDS
            except subprocess.TimeoutExpired:  # one that hangs on its way out loses its report, not the run
                out = ""
        finally:
            process.kill()
            process.wait(30)
        reports = [line for line in out.splitlines() if line.startswith("{")]
        return rate, json.loads(reports[-1]) if reports else None

    def run_kcat_pipe(self, source: str) -> float:
        sink = self.sink()
        b = self.broker.bootstrap
        pipe = (f"kcat -b {b} -q -C -t {source} -o beginning -c {RECORDS} -f '%s\\n' | "
                f"kcat -b {b} -q -P -t {sink} -X linger.ms=5")
        return self.run_process(["bash", "-c", pipe], sink, self.kcat_env)

    def run_process(self, command: list[str], sink: str, env: dict[str, str] | None = None) -> float:
        """Throughput of a command that copies the prepared input to ``sink``."""
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return self.throughput({sink: RECORDS})
        finally:
            process.kill()
            process.wait(30)

    def run_scale_out(self, instances: int) -> tuple[float, dict[str, Any]]:
        """Instances of the processor in one group, joined before the records are produced; and the CPU taken
        from the produce to the last output record: each instance's threads, the broker, kcat (producer and
        reader) and this process."""
        source, sink, group = self.create(self.name("in")), self.sink(), self.name("group")
        apps = [self.app("processor", source, {"output": sink}, group) for _ in range(instances)]
        try:
            for app in apps:
                wait_for(lambda app=app: _latest_assignment(app).count(source) == PARTITIONS // instances, 60,
                         "an even share of partitions")
            pids = [app.process.pid for app in apps]
            before = cpu_snapshot(pids, self.broker.process.pid)
            self.produce(source)
            rate = self.throughput({sink: RECORDS})
            return rate, {**cpu_taken(before, cpu_snapshot(pids, self.broker.process.pid)),
                          "output_s": round(RECORDS / rate, 3)}
        finally:
            for app in apps:
                app.stop()

    def run_latency(self, *extra: str, client: str = DEFAULT) -> list[float]:
        """Milliseconds from produce to consumed output, at LATENCY_RATE records/s through the processor."""
        source, sink = self.create(self.name("in"), 1), self.sink()
        app = self.app("processor", source, {"output": sink}, self.name("group"), *extra, client=client)
        consumer = KafkaConsumer(bootstrap_servers=self.broker.bootstrap, group_id=None, enable_auto_commit=False,
                                 fetch_max_wait_ms=5)
        try:
            app.wait_for_log(r"Partitions assigned: \S")
            consumer.assign([TopicPartition(sink, 0)])
            consumer.seek_to_beginning()
            sender = threading.Thread(target=_paced_producer, args=(self.broker.bootstrap, source), daemon=True)
            sender.start()
            latencies: list[float] = []
            deadline = time.monotonic() + LATENCY_RECORDS / LATENCY_RATE + 60
            while len(latencies) < LATENCY_RECORDS and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=100).values():
                    now = time.time_ns()
                    latencies += [(now - int(dict(r.headers)["bench-sent-ns"])) / 1e6 for r in records]
            sender.join(30)
            return latencies
        finally:
            consumer.close()
            app.stop()

    def run_startup(self) -> float:
        """Seconds from exec to the first 200 from /actuator/health."""
        port = free_port()
        started = time.perf_counter()
        app = App(SCRIPTS["processor"], ["--spring.cloud.stream.bindings.input.destination=startup.in",
                                         "--spring.cloud.stream.bindings.output.destination=startup.out",
                                         f"--server.port={port}"],
                  {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": self.broker.bootstrap}, self.workdir / "startup.log")
        try:
            wait_for(lambda: http_get(port, "/actuator/health")[0] == 200, 30, "health UP", interval=0.005)
            return time.perf_counter() - started
        finally:
            app.stop()


def _paced_producer(bootstrap: str, topic: str) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks=1)
    pace = threading.Event()
    start = time.monotonic()
    for i in range(LATENCY_RECORDS):
        pace.wait(max(0.0, start + i / LATENCY_RATE - time.monotonic()))
        producer.send(topic, value(i).encode(), headers=[("contentType", b"text/plain"),
                                                          ("bench-sent-ns", str(time.time_ns()).encode())])
    producer.close(10)


def _profile(pid: int, name: str) -> subprocess.Popen | None:
    """py-spy recording the app's main thread into PROFILE, as flame-graph text (folded stacks)."""
    if PROFILE is None:
        return None
    PROFILE.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                             "--format", "raw", "--rate", "250", "--output", str(PROFILE / f"{name}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _latest_assignment(app: App) -> str:
    lines = [line for line in app.log.splitlines() if "Partitions assigned:" in line]
    return lines[-1] if lines else ""


def _librdkafka_dir(workdir: Path) -> Path:
    """Debian's kcat is too old for Tansu; the librdkafka of the confluent-kafka wheel is not."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    library = next(libs.glob("librdkafka*.so*"))
    folder = workdir / "librdkafka"
    folder.mkdir(exist_ok=True)
    (folder / "librdkafka.so.1").symlink_to(library)
    return folder


def summary(runs: list[float]) -> dict[str, Any]:
    return {"runs": runs, "min": min(runs), "median": statistics.median(runs), "max": max(runs)}


def measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="polyglot-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            source = bench.create(bench.name("input"))
            bench.produce(source)
            results: dict[str, list[float]] = {}
            rss: dict[str, list[float]] = {}
            stalls: dict[str, list[dict[str, Any]]] = {}
            cpu: dict[str, list[dict[str, Any]]] = {}
            drains: dict[str, list[float]] = {}

            def repeat(name: str, run: Callable[[], float]) -> None:
                if ONLY and name not in ONLY:
                    return
                results[name] = []
                for rep in range(REPS):
                    results[name].append(run())
                    print(f"  {name} #{rep + 1}: {results[name][-1]:,.0f} records/s", flush=True)

            def app(kind: str, client: str, root: Path = ROOT) -> Callable[[], float]:
                def run() -> float:
                    rate, peak = bench.run_app(kind, source, client, root)
                    if kind == "processor" and root == ROOT:
                        rss.setdefault(client, []).append(peak)
                    return rate
                return run

            def loop(name: str, script: str, python: Path | str = sys.executable,
                     topic: Callable[[], str] = lambda: source) -> None:
                def run() -> float:
                    rate, report = bench.run_script(script, topic(), python)
                    if report is not None:
                        stalls.setdefault(name, []).append(report)
                        print(f"  {name}: {report['stalls']} stalls, {report['waits']} waits", flush=True)
                    return rate
                repeat(name, run)

            def scale_out(instances: int) -> None:
                name = f"scale-out, {instances} instance{'s' if instances > 1 else ''}"

                def run() -> float:
                    rate, taken = bench.run_scale_out(instances)
                    cpu.setdefault(name, []).append(taken)
                    return rate
                repeat(name, run)

            repeat("kcat pipe", lambda: bench.run_kcat_pipe(source))
            loop("librdkafka bare loop", "librdkafka_bare.py")
            loop("librdkafka at-least-once loop", "librdkafka_at_least_once.py")
            loop("kafka-python bare loop", "kafka_python_bare.py")
            loop("kafka-python at-least-once loop", "kafka_python_at_least_once.py")
            for client in CLIENTS:
                repeat(f"processor ({client})", app("processor", client))
                if BASELINE is not None:
                    repeat(f"processor ({client}) @ baseline", app("processor", client, BASELINE))
                transaction_rows.rows(bench, source, client, RECORDS, PARTITIONS, repeat)
                if client == "librdkafka":  # next to the processor: the broker slows as the run fills it
                    batch_rows.kafka_rows(bench, source, repeat, loop)
            for client in CLIENTS:
                repeat(f"router ({client})", app("router", client))
            loop("naive seed loop (as shipped)", "naive.py", SEED_PYTHON)
            scale_out(1)
            scale_out(2)
            lag_rows.rows(bench, source, RECORDS, PARTITIONS, repeat, drains)
            rabbit_figures = rabbit.measure(Path(tmp), ROOT, RECORDS, value, repeat, BASELINE)
            latency = {client: sorted(bench.run_latency(TUNED_FETCH_WAIT, client=client)) for client in CLIENTS}
            default_latencies = sorted(bench.run_latency())
            startups = [bench.run_startup() for _ in range(REPS)]
        finally:
            bench.broker.stop()
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "records": RECORDS, "record_bytes": 100, "repetitions": REPS, "partitions": PARTITIONS,
        "throughput": {name: summary(runs) for name, runs in results.items()},
        "stalls": stalls,
        "scale_out_cpu": cpu,
        "drain_s": drains,
        "latency_ms": {client: {"rate": LATENCY_RATE, "records": len(found), "setting": TUNED_FETCH_WAIT,
                                "p50": _percentile(found, 50), "p99": _percentile(found, 99), "max": found[-1]}
                       for client, found in latency.items()},
        "latency_default_ms": {"rate": LATENCY_RATE, "records": len(default_latencies),
                               "p50": _percentile(default_latencies, 50), "p99": _percentile(default_latencies, 99),
                               "max": default_latencies[-1]},
        "peak_rss_mb": {client: summary(peaks) for client, peaks in rss.items()},
        "rabbit": rabbit_figures,
        "startup_s": summary(startups),
        "image_mb": image_sizes(),
    }


def _percentile(values: list[float], pct: float) -> float:
    return values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))]


def main() -> int:
    for tool in ("kcat",):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: `make bench` installs it with apt (Debian package {tool})", file=sys.stderr)
            return 1
    results = measure()
    notes = json.loads((ROOT / "bench" / "notes.json").read_text())
    results["targets"] = [{"name": n, "measured": v, "goal": None if g is None else f"{c} {g}", "met": met(v, c, g)}
                          for n, v, c, g in targets(results)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(results, notes))
    chart(results, RESULTS / "latest.png")
    print((RESULTS / "latest.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
