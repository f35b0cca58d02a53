"""``make demo``: each recipe run locally as Data Flow would run it, on an embedded broker. No SCDF, no Docker."""

from __future__ import annotations

import logging
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from .apps import App
from .pushgateway import Pushgateway
from .tansu import Tansu
from .topics import read_topic
from .waiting import wait_for

STREAM = "text-reversal"
ROUTER_STREAM = "timestamps"
TICKS = 6
# Test-speed group joins on the embedded broker (it completes a join in half the session timeout).
FAST_GROUPS = ["--spring.cloud.stream.kafka.binder.consumerProperties.session.timeout.ms=6000",
               "--spring.cloud.stream.kafka.binder.consumerProperties.heartbeat.interval.ms=2000"]
# What `http post --data ...` sends through the 2021.x http source: raw body, JSON-quoted contentType.
HTTP_HEADERS = [("contentType", b'"text/plain"'), ("spring_json_header_types", b'{"contentType":"java.lang.String"}'),
                ("http_requestMethod", b'"POST"')]
LINES = ["hello world", "héllo 👋🏽", "Ünïcödé ✓ ok", "👨‍👩‍👧 family"]


def log_sink(label: str, value: bytes) -> None:
    """Print a record as the Spring log sink does: the payload as text, on one log line."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp}  INFO --- [{label}] log-sink : {value.decode('utf-8', 'replace')}", flush=True)


def processor_demo(broker: Tansu, workdir: Path) -> None:
    print(f'\n== stream create --name {STREAM} --definition "http | python-processor --reversestring=true | log"')
    args = [  # exactly what the Kubernetes deployer passes (exec entry point style)
        f"--spring.cloud.stream.bindings.input.destination={STREAM}.http",
        f"--spring.cloud.stream.bindings.input.group={STREAM}",
        f"--spring.cloud.stream.bindings.output.destination={STREAM}.python-processor",
        f"--spring.cloud.stream.bindings.output.producer.requiredGroups={STREAM}",
        f"--spring.cloud.dataflow.stream.name={STREAM}", "--spring.cloud.dataflow.stream.app.label=python-processor",
        "--spring.cloud.dataflow.stream.app.type=processor", "--reversestring=true", "--server.port=0",
        "--management.metrics.tags.stream.name=${spring.cloud.dataflow.stream.name:unknown}", *FAST_GROUPS,
        "--spring.cloud.stream.kafka.binder.metrics.offsetLagMetricsInterval=1s",  # the lag gauge, for the demo
    ]
    app = App("polyglot-python-processor/python_processor.py", args,
              {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": broker.bootstrap}, workdir / "processor.log")
    try:
        app.wait_for_log("Consuming")  # topics created, as the binder creates them
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
        for line in LINES:
            print(f"== http post --data \"{line}\"")
            producer.send(f"{STREAM}.http", line.encode(), headers=HTTP_HEADERS)
            producer.flush()  # a request each, as the http source sends them
        producer.close(10)
        for record in read_topic(broker.bootstrap, f"{STREAM}.python-processor", len(LINES), timeout=30):
            log_sink(f"{STREAM}.log-v1", record.value)
        status, body = app.get("/actuator/health")
        print(f"== GET /actuator/health -> {status} {body}")
        print(f"== GET /actuator/prometheus, the consumer lag -> {lag_line(app)}")
        print(f"== GET /actuator/info -> {app.get('/actuator/info')[1]}")
        print(f"== SIGTERM -> processor exited {app.stop()}")
    finally:
        app.kill()
        print(f"-- processor log ({app.log_path}):\n{app.log}")


def lag_line(app: App) -> str:
    """The processor's lag gauge line once the group has committed every record (0 behind)."""
    def caught_up() -> str | None:
        lines = [line for line in app.get("/actuator/prometheus")[1].splitlines()
                 if line.startswith("spring_cloud_stream_binder_kafka_offset{")]
        return lines[0] if lines and lines[0].endswith(" 0.0") else None
    return wait_for(caught_up, 30, "the lag gauge at 0")


def time_source(bootstrap: str, topic: str, stop: threading.Event) -> None:
    """Stand-in for the ``time`` source: ``MM/dd/yy HH:mm:ss`` once a second, raw, contentType application/json."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    for _ in range(TICKS):
        stamp = time.strftime("%m/%d/%y %H:%M:%S").encode()
        producer.send(topic, stamp, headers=[("contentType", b"application/json")])
        producer.flush()
        if stop.wait(1.0):
            break
    producer.close(5)


def log_sinks(bootstrap: str, topics: dict[str, str], count: int, timeout: float) -> None:
    """Print records of each topic as the log sink app labelled with its key would."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        labels = {topic: label for label, topic in topics.items()}
        partitions = [TopicPartition(t, p) for t in topics.values()
                      for p in wait_for(lambda t=t: consumer.partitions_for_topic(t), 30, f"topic {t}")]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        seen, deadline = 0, time.monotonic() + timeout
        while seen < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    log_sink(f"{ROUTER_STREAM}.{labels[record.topic]}", record.value)
                    seen += 1
    finally:
        consumer.close()


def router_demo(broker: Tansu, workdir: Path) -> None:
    print(f'\n== stream create --name {ROUTER_STREAM} --definition '
          '"time || python-router || evenLogger: log || oddLogger: log"')
    print(f"== stream deploy --name {ROUTER_STREAM} --propertiesFile polyglot-python-app-deployment.properties")
    args = [  # what polyglot-python-app-deployment.properties gives the router, plus what Data Flow adds
        "--spring.cloud.stream.bindings.input.destination=timeDest",
        f"--spring.cloud.stream.bindings.input.group={ROUTER_STREAM}",
        "--spring.cloud.stream.bindings.even.destination=evenDest",
        "--spring.cloud.stream.bindings.odd.destination=oddDest",
        f"--spring.cloud.dataflow.stream.name={ROUTER_STREAM}",
        "--spring.cloud.dataflow.stream.app.label=python-router", "--spring.cloud.dataflow.stream.app.type=app",
        "--server.port=0", *FAST_GROUPS,
    ]
    app = App("polyglot-python-app/python_router_app.py", args,
              {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": broker.bootstrap}, workdir / "router.log")
    stop = threading.Event()
    ticker = threading.Thread(target=time_source, args=(broker.bootstrap, "timeDest", stop), daemon=True)
    try:
        app.wait_for_log("Consuming")  # topics created
        ticker.start()
        log_sinks(broker.bootstrap, {"evenLogger": "evenDest", "oddLogger": "oddDest"}, TICKS, timeout=30)
        print(f"== GET /actuator/health -> {' '.join(map(str, app.get('/actuator/health')))}")
        print(f"== SIGTERM -> router exited {app.stop()}")
    finally:
        stop.set()
        if ticker.is_alive():
            ticker.join(10)
        app.kill()
        print(f"-- router log ({app.log_path}):\n{app.log}")


def task_demo(workdir: Path) -> None:
    print('\n== task create --name python-task --definition "python-task-with-status"')
    print("   (no spring.datasource.url: the task records its runs in an embedded SQLite file, as Spring Cloud Task")
    print("   falls back to an embedded database)")
    pushgateway = Pushgateway().start()
    print(f"== embedded Prometheus Pushgateway on {pushgateway.url}; the task pushes its metrics there, as Data Flow's")
    print("   task dashboard expects them (each run in its own group, the final push once its end is recorded)")
    push = "--management.prometheus.metrics.export.pushgateway"
    metrics = [f"{push}.enabled=true", f"{push}.base-url={pushgateway.url}", f"{push}.shutdown-operation=PUSH"]
    try:
        for run, extra in enumerate(([], ["--error.message=MyTestError"]), 1):
            arguments = f' --arguments "{" ".join(extra)}"' if extra else ""
            print(f"== task launch --name python-task{arguments}")
            args = ["--sleep.seconds=1", "--spring.cloud.task.name=python-task", *metrics,
                    f"{push}.grouping-key.run={run}", *extra]
            app = App("polyglot-python-task/python_task.py", args, log_path=workdir / "task.log", cwd=workdir)
            try:
                print(f"   exit code {app.wait(60)}; log:\n{app.log}")
            finally:
                app.kill()
        print(f"== GET {pushgateway.url}/metrics (the task's series):")
        for sample in pushgateway.samples():
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()) if k not in ("instance",))
            print(f"   {sample.name}{{{labels}}} {sample.value:g}")
    finally:
        pushgateway.remove()
    columns = ("TASK_EXECUTION_ID", "TASK_NAME", "START_TIME", "END_TIME", "EXIT_CODE", "EXIT_MESSAGE", "ERROR_MESSAGE")
    with sqlite3.connect(workdir / "task-executions.db") as db:
        rows = db.execute(f"SELECT {', '.join(columns)} FROM TASK_EXECUTION ORDER BY 1").fetchall()
    print("== TASK_EXECUTION rows:")
    for row in rows:
        shown = {c: (v.splitlines()[-1] if isinstance(v, str) and c == "ERROR_MESSAGE" else v)
                 for c, v in zip(columns, row, strict=True)}
        print("   " + ", ".join(f"{c}={v}" for c, v in shown.items()))


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    binder = sys.argv[1] if len(sys.argv) > 1 else "kafka"
    if binder not in ("kafka", "rabbit"):
        print(f"BINDER={binder}: expected kafka or rabbit", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="polyglot-demo-") as tmp:
        workdir = Path(tmp)
        if binder == "rabbit":
            from .demo_rabbit import run

            run(workdir)
            return 0
        broker = Tansu(workdir / "tansu.log").start()
        print(f"== embedded Kafka (Tansu) on {broker.bootstrap}")
        try:
            processor_demo(broker, workdir)
            router_demo(broker, workdir)
            task_demo(workdir)
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
