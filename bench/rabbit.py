"""The RabbitMQ rows of ``make bench``: the processor, in batch mode too, and the router against bare pika loops."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika

from bench.batch_rows import BATCH_RABBIT_ROW, RABBIT_BATCHING, STEPS, UTIL
from bench.footprint import peak_rss_mb
from devkit.apps import App
from devkit.rabbitmq import RabbitMQ
from devkit.waiting import wait_for

LATENCY_RATE, LATENCY_RECORDS = 100, 1000
CONFIRM_EACH_RECORDS = 20_000  # about 1,300 messages/s: the whole input would take minutes a run
SCRIPTS = {"processor": "polyglot-python-processor/python_processor.py",
           "router": "polyglot-python-app/python_router_app.py", "batch": STEPS["batch"]}


class RabbitBench:
    """One node; each run gets a fresh input queue filled with ``records`` messages and a fresh output."""

    def __init__(self, workdir: Path, root: Path, records: int, value: Callable[[int], str]) -> None:
        self.workdir, self.root, self.records, self.value = workdir, root, records, value
        self.server = RabbitMQ(workdir / "rabbitmq.log").start()
        self.connection = pika.BlockingConnection(pika.URLParameters(self.server.url))
        self.channel = self.connection.channel()
        self.serial = 0

    def stop(self) -> None:
        self.connection.close()
        self.server.remove()

    def _name(self, kind: str) -> str:
        self.serial += 1
        return f"bench.{kind}.{self.serial}"

    def _group_queue(self, exchange: str, group: str) -> str:
        self.channel.exchange_declare(exchange, "topic", durable=True)
        queue = f"{exchange}.{group}"
        self.channel.queue_declare(queue, durable=True)
        self.channel.queue_bind(queue, exchange, "#")
        return queue

    def _fill(self, exchange: str, group: str, count: int) -> str:
        """The input group queue with ``count`` persistent text messages, as Spring's producer publishes them."""
        queue = self._group_queue(exchange, group)
        properties = pika.BasicProperties(content_type="text/plain", delivery_mode=2)
        for i in range(count):
            self.channel.basic_publish(exchange, exchange, self.value(i).encode(), properties)
        wait_for(lambda: self._depth(queue) >= count, 300, "the input queue filled")
        return queue

    def _depth(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def _rate(self, outputs: list[str], count: int, process: subprocess.Popen | None = None) -> float:
        """Messages per second from the first output message to the last, read off the queues' depths."""
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            total = sum(self._depth(q) for q in outputs)
            now = time.perf_counter()
            if total and first is None:
                first = (now, total)
            if total >= count:
                return (total - first[1]) / max(now - first[0], 1e-3) if now > first[0] else float("inf")
            if process is not None and process.poll() is not None and total < count:
                raise RuntimeError(f"the loop exited with {process.returncode} after {total} messages")
            self.connection.sleep(0.02)
        raise RuntimeError("the run did not finish in 10 minutes")

    def run_loop(self, confirm: bool) -> float:
        source, sink = self._name("in"), self._name("out")
        count = min(self.records, CONFIRM_EACH_RECORDS) if confirm else self.records
        queue, out = self._fill(source, "g", count), self._group_queue(sink, "bench")
        command = [sys.executable, str(self.root / "bench" / "pika_bare.py"), self.server.url, queue, sink,
                   str(count), *(["confirm"] if confirm else [])]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return self._rate([out], count, process)
        finally:
            process.kill()
            process.wait(30)

    def _app(self, script: str, source: str, sinks: dict[str, str], group: str, log: str, root: Path,
             extra: tuple[str, ...] = ()) -> App:
        args = ["--server.port=0", "--reversestring=true", f"--spring.cloud.stream.bindings.input.destination={source}",
                f"--spring.cloud.stream.bindings.input.group={group}", *extra,
                *(f"--spring.cloud.stream.bindings.{b}.destination={d}" for b, d in sinks.items())]
        env = {"SPRING_RABBITMQ_HOST": "127.0.0.1", "SPRING_RABBITMQ_PORT": str(self.server.port)}
        if script.startswith("bench/steps/"):  # a step of bench/steps runs on the processor's util
            env["PYTHONPATH"] = str(root / UTIL)
        return App(str(root / script), args, env, self.workdir / log)

    def run_app(self, kind: str, root: Path | None = None, extra: tuple[str, ...] = ()) -> tuple[float, float]:
        """Throughput of one app over a filled queue (``extra``: its own arguments), and its peak RSS in MB."""
        root = root or self.root
        source = self._name("in")
        self._fill(source, "g", self.records)
        if kind == "router":
            sinks = {"even": self._name("even"), "odd": self._name("odd")}
        else:
            sinks = {"output": self._name("out")}
        outputs = [self._group_queue(dest, "bench") for dest in sinks.values()]
        app = self._app(SCRIPTS[kind], source, sinks, "g", f"rabbit-{kind}-{self.serial}.log", root, extra)
        try:
            rate = self._rate(outputs, self.records)
            rss = peak_rss_mb(app.process.pid)
            app.stop()
            return rate, rss
        finally:
            app.kill()

    def run_latency(self) -> list[float]:
        """Milliseconds from publish to consumed output, at LATENCY_RATE messages/s through the processor."""
        source, sink = self._name("in"), self._name("out")
        self._group_queue(source, "g")
        out = self._group_queue(sink, "bench")
        app = self._app("polyglot-python-processor/python_processor.py", source, {"output": sink}, "g",
                        f"rabbit-latency-{self.serial}.log", self.root)
        try:
            app.wait_for_log("Consuming")
            sender = threading.Thread(target=self._paced, args=(source,), daemon=True)
            sender.start()
            latencies: list[float] = []
            reader = pika.BlockingConnection(pika.URLParameters(self.server.url)).channel()
            deadline = time.monotonic() + LATENCY_RECORDS / LATENCY_RATE + 60
            for _method, properties, _body in reader.consume(out, auto_ack=True, inactivity_timeout=1):
                if properties is not None:
                    latencies.append((time.time_ns() - int(properties.headers["bench-sent-ns"])) / 1e6)
                if len(latencies) >= LATENCY_RECORDS or time.monotonic() > deadline:
                    break
            reader.connection.close()
            sender.join(30)
            return sorted(latencies)
        finally:
            app.stop()

    def _paced(self, exchange: str) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.server.url))
        channel, start, pace = connection.channel(), time.monotonic(), threading.Event()
        for i in range(LATENCY_RECORDS):
            pace.wait(max(0.0, start + i / LATENCY_RATE - time.monotonic()))
            channel.basic_publish(exchange, exchange, self.value(i).encode(), pika.BasicProperties(
                content_type="text/plain", delivery_mode=2, headers={"bench-sent-ns": str(time.time_ns())}))
        connection.close()


def measure(workdir: Path, root: Path, records: int, value: Callable[[int], str],
            repeat: Callable[[str, Callable[[], float]], None], baseline: Path | None) -> dict[str, Any]:
    """The RabbitMQ rows (through ``repeat``) and the processor's latency and RSS on RabbitMQ."""
    bench = RabbitBench(workdir, root, records, value)
    rss: list[float] = []
    try:
        repeat("pika bare loop without confirms (RabbitMQ)", lambda: bench.run_loop(confirm=False))
        repeat("pika loop with a confirm per message (RabbitMQ)", lambda: bench.run_loop(confirm=True))

        def processor() -> float:
            rate, peak = bench.run_app("processor")
            rss.append(peak)
            return rate

        repeat("processor (RabbitMQ)", processor)
        if baseline is not None and (baseline / "polyglot-python-processor" / "util" / "rabbit.py").exists():
            repeat("processor (RabbitMQ) @ baseline", lambda: bench.run_app("processor", baseline)[0])
        repeat(BATCH_RABBIT_ROW, lambda: bench.run_app("batch", extra=RABBIT_BATCHING)[0])
        repeat("router (RabbitMQ)", lambda: bench.run_app("router")[0])
        latencies = bench.run_latency()
    finally:
        bench.stop()
    found = {"rate": LATENCY_RATE, "records": len(latencies)}
    if latencies:
        found.update(p50=statistics.median(latencies), p99=latencies[min(len(latencies) - 1,
                                                                         round(0.99 * (len(latencies) - 1)))],
                     max=latencies[-1])
    return {"latency_ms": found, "peak_rss_mb": {"runs": rss, "max": max(rss)} if rss else {}}
