"""``make demo``: each recipe run locally as Data Flow would run it, on an embedded broker. No SCDF, no Docker."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

from kafka import KafkaProducer

from .apps import App
from .tansu import Tansu
from .topics import read_topic

STREAM = "text-reversal"
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
        "--management.metrics.tags.stream.name=${spring.cloud.dataflow.stream.name:unknown}",
        # The embedded broker completes a group join in half the session timeout: keep the demo quick.
        "--spring.cloud.stream.kafka.binder.consumerProperties.session.timeout.ms=6000",
        "--spring.cloud.stream.kafka.binder.consumerProperties.heartbeat.interval.ms=2000",
    ]
    app = App("polyglot-python-processor/python_processor.py", args,
              {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": broker.bootstrap}, workdir / "processor.log")
    try:
        app.wait_for_log("Consuming")  # topics created, as the binder creates them
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
        for line in LINES:
            print(f"== http post --data \"{line}\"")
            producer.send(f"{STREAM}.http", line.encode(), headers=HTTP_HEADERS)
        producer.close(10)
        for record in read_topic(broker.bootstrap, f"{STREAM}.python-processor", len(LINES), timeout=30):
            log_sink(f"{STREAM}.log-v1", record.value)
        status, body = app.get("/actuator/health")
        print(f"== GET /actuator/health -> {status} {body}")
        print(f"== GET /actuator/info -> {app.get('/actuator/info')[1]}")
        print(f"== SIGTERM -> processor exited {app.stop()}")
    finally:
        app.kill()
        print(f"-- processor log ({app.log_path}):\n{app.log}")


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="polyglot-demo-") as tmp:
        workdir = Path(tmp)
        broker = Tansu(workdir / "tansu.log").start()
        print(f"== embedded Kafka (Tansu) on {broker.bootstrap}")
        try:
            processor_demo(broker, workdir)
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
