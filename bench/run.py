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
import resource
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

from bench import rabbit
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
CLIENTS = ("librdkafka", "kafka-python")
DEFAULT = CLIENTS[0]
# The seed's loop as it shipped: kafka-python from PyPI without crc32c, in a venv of its own (`make bench`).
SEED_PYTHON = ROOT / ".venv-seed" / "bin" / "python"
PARTITIONS = 4
LATENCY_RATE, LATENCY_RECORDS = 100, 1000
FAST_GROUPS = ["--spring.cloud.stream.kafka.binder.consumerProperties.session.timeout.ms=6000",
               "--spring.cloud.stream.kafka.binder.consumerProperties.heartbeat.interval.ms=2000"]
SCRIPTS = {"processor": "polyglot-python-processor/python_processor.py",
           "router": "polyglot-python-app/python_router_app.py"}
# Tansu answers a waiting fetch only when this expires (Kafka answers when data arrives): see notes.json.
TUNED_FETCH_WAIT = "--spring.cloud.stream.kafka.binder.consumerProperties.fetch.max.wait.ms=10"
IMAGES = ("polyglot-python-processor", "polyglot-python-app", "polyglot-python-task")


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

    def produce(self, topic: str, partitions: int = PARTITIONS) -> None:
        """RECORDS values, an equal share on each of the topic's partitions, each with a raw text/plain contentType.

        One kcat a partition, all at once: left to its sticky partitioner, one kcat put anywhere from 1 to 98,000
        of 200,000 records on one partition, and one of two instances had next to nothing to do.
        """
        share = -(-RECORDS // partitions)
        producers = []
        for partition in range(partitions):
            lines = self.workdir / f"input-{partition}-of-{partitions}.txt"
            if not lines.exists():
                lines.write_text("".join(value(i) + "\n" for i in range(partition * share,
                                                                       min(RECORDS, (partition + 1) * share))))
            with lines.open("rb") as source:
                producers.append(subprocess.Popen(
                    ["kcat", "-b", self.broker.bootstrap, "-q", "-P", "-t", topic, "-p", str(partition), "-H",
                     "contentType=text/plain", "-X", "linger.ms=5"], env=self.kcat_env, stdin=source,
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
        return App(str(root / SCRIPTS[kind]), args, {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": self.broker.bootstrap},
                   self.workdir / f"{group}.log")

    # -- the measurements ---------------------------------------------------------------------------
    def run_app(self, kind: str, source: str, client: str = DEFAULT, root: Path = ROOT) -> tuple[float, float]:
        """Throughput of one app instance over the prepared input, and its peak RSS in MB."""
        if kind == "router":
            sinks = {"even": self.sink(), "odd": self.sink()}
            outputs = {sinks["even"]: (RECORDS + 1) // 2, sinks["odd"]: RECORDS // 2}
        else:
            sinks = {"output": self.sink()}
            outputs = {sinks["output"]: RECORDS}
        group = self.name("group")
        app = self.app(kind, source, sinks, group, client=client, root=root)
        spy = _profile(app.process.pid, f"{kind}-{client}-{'baseline' if root != ROOT else 'head'}-{group}")
        try:
            rate = self.throughput(outputs)
            rss = _peak_rss_mb(app.process.pid)
            app.stop()
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
            before = _cpu_snapshot(pids, self.broker.process.pid)
            self.produce(source)
            rate = self.throughput({sink: RECORDS})
            return rate, {**_cpu_taken(before, _cpu_snapshot(pids, self.broker.process.pid)),
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


TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(stat: Path) -> tuple[str, float]:
    """A process's or thread's name and CPU seconds (user + system) from its /proc stat file."""
    text = stat.read_text()
    fields = text[text.rindex(")") + 2:].split()  # the name, in parentheses, may hold spaces
    return text[text.index("(") + 1:text.rindex(")")], (int(fields[11]) + int(fields[12])) / TICKS


def _cpu_snapshot(pids: list[int], broker: int) -> dict[str, Any]:
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


def _cpu_taken(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
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


def _latest_assignment(app: App) -> str:
    lines = [line for line in app.log.splitlines() if "Partitions assigned:" in line]
    return lines[-1] if lines else ""


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def _librdkafka_dir(workdir: Path) -> Path:
    """Debian's kcat is too old for Tansu; the librdkafka of the confluent-kafka wheel is not."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    library = next(libs.glob("librdkafka*.so*"))
    folder = workdir / "librdkafka"
    folder.mkdir(exist_ok=True)
    (folder / "librdkafka.so.1").symlink_to(library)
    return folder


def _image_sizes() -> dict[str, float]:
    if shutil.which("podman") is None:
        return {}
    sizes = {}
    for image in IMAGES:
        done = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}",
                               f"localhost/polyglot/{image}:test"], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            sizes[image] = int(done.stdout.strip()) / 1e6
    return sizes


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

            def loop(name: str, script: str, python: Path | str = sys.executable) -> None:
                def run() -> float:
                    rate, report = bench.run_script(script, source, python)
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
            for client in CLIENTS:
                repeat(f"router ({client})", app("router", client))
            loop("naive seed loop (as shipped)", "naive.py", SEED_PYTHON)
            scale_out(1)
            scale_out(2)
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
        "latency_ms": {client: {"rate": LATENCY_RATE, "records": len(found), "setting": TUNED_FETCH_WAIT,
                                "p50": _percentile(found, 50), "p99": _percentile(found, 99), "max": found[-1]}
                       for client, found in latency.items()},
        "latency_default_ms": {"rate": LATENCY_RATE, "records": len(default_latencies),
                               "p50": _percentile(default_latencies, 50), "p99": _percentile(default_latencies, 99),
                               "max": default_latencies[-1]},
        "peak_rss_mb": {client: summary(peaks) for client, peaks in rss.items()},
        "rabbit": rabbit_figures,
        "startup_s": summary(startups),
        "image_mb": _image_sizes(),
    }


def _percentile(values: list[float], pct: float) -> float:
    return values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))]


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
