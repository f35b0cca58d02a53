"""``make demo BINDER=rabbit``: the two stream recipes on a RabbitMQ node of their own, as Data Flow runs them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pika

from .apps import App
from .demo import LINES, ROUTER_STREAM, STREAM, TICKS, log_sink
from .rabbitmq import RabbitMQ


def environ(server: RabbitMQ) -> dict[str, str]:
    """What Data Flow's Kubernetes platform account sets for the rabbit binder."""
    return {"SPRING_RABBITMQ_HOST": "127.0.0.1", "SPRING_RABBITMQ_PORT": str(server.port)}


def read(server: RabbitMQ, queues: dict[str, str], count: int, timeout: float) -> None:
    """Print the messages of each queue as the log sink labelled with its key would (the log sink's group queue)."""
    connection = pika.BlockingConnection(pika.URLParameters(server.url))
    try:
        channel, seen, deadline = connection.channel(), 0, time.monotonic() + timeout
        while seen < count and time.monotonic() < deadline:
            for label, queue in queues.items():
                method, properties, body = channel.basic_get(queue, auto_ack=True)
                if method is not None:
                    log_sink(f"{label} content_type={properties.content_type}", body)
                    seen += 1
            connection.sleep(0.05)
    finally:
        connection.close()


def processor_demo(server: RabbitMQ, workdir: Path) -> None:
    print(f'\n== stream create --name {STREAM} --definition "http | python-processor --reversestring=true | log"'
          " (RabbitMQ)")
    args = [  # what the Kubernetes deployer passes on a RabbitMQ installation
        f"--spring.cloud.stream.bindings.input.destination={STREAM}.http",
        f"--spring.cloud.stream.bindings.input.group={STREAM}",
        f"--spring.cloud.stream.bindings.output.destination={STREAM}.python-processor",
        f"--spring.cloud.stream.bindings.output.producer.requiredGroups={STREAM}",
        f"--spring.cloud.dataflow.stream.name={STREAM}", "--spring.cloud.dataflow.stream.app.label=python-processor",
        "--spring.cloud.dataflow.stream.app.type=processor", "--reversestring=true", "--server.port=0"]
    app = App("polyglot-python-processor/python_processor.py", args, environ(server), workdir / "processor.log")
    try:
        app.wait_for_log("Consuming")  # exchanges and queues declared, as the Rabbit binder declares them
        connection = pika.BlockingConnection(pika.URLParameters(server.url))
        channel = connection.channel()
        for line in LINES:  # as the http source publishes: routing key = destination, content type property
            print(f"== http post --data \"{line}\"")
            channel.basic_publish(f"{STREAM}.http", f"{STREAM}.http", line.encode(),
                                  pika.BasicProperties(content_type="text/plain", delivery_mode=2))
        connection.close()
        read(server, {f"{STREAM}.log-v1": f"{STREAM}.python-processor.{STREAM}"}, len(LINES), 30)
        queues = server.ctl("list_queues", "name", "durable", "arguments", "--quiet").stdout.strip()
        print("== rabbitmqctl list_queues name durable arguments\n" + queues)
        print(f"== GET /actuator/health -> {' '.join(map(str, app.get('/actuator/health')))}")
        print(f"== SIGTERM -> processor exited {app.stop()}")
    finally:
        app.kill()
        print(f"-- processor log ({app.log_path}):\n{app.log}")


def time_source(server: RabbitMQ, exchange: str, stop: threading.Event) -> None:
    """Stand-in for the ``time`` source: ``MM/dd/yy HH:mm:ss`` once a second."""
    connection = pika.BlockingConnection(pika.URLParameters(server.url))
    try:
        channel = connection.channel()
        for _ in range(TICKS):
            channel.basic_publish(exchange, exchange, time.strftime("%m/%d/%y %H:%M:%S").encode(),
                                  pika.BasicProperties(content_type="text/plain", delivery_mode=2))
            if stop.wait(1.0):
                break
    finally:
        connection.close()


def router_demo(server: RabbitMQ, workdir: Path) -> None:
    print(f'\n== stream create --name {ROUTER_STREAM} --definition '
          '"time || python-router || evenLogger: log || oddLogger: log" (RabbitMQ)')
    args = ["--spring.cloud.stream.bindings.input.destination=timeDest",
            f"--spring.cloud.stream.bindings.input.group={ROUTER_STREAM}",
            "--spring.cloud.stream.bindings.even.destination=evenDest",
            "--spring.cloud.stream.bindings.odd.destination=oddDest",
            f"--spring.cloud.stream.bindings.even.producer.requiredGroups={ROUTER_STREAM}",
            f"--spring.cloud.stream.bindings.odd.producer.requiredGroups={ROUTER_STREAM}",
            f"--spring.cloud.dataflow.stream.name={ROUTER_STREAM}", "--server.port=0"]
    app = App("polyglot-python-app/python_router_app.py", args, environ(server), workdir / "router.log")
    stop = threading.Event()
    ticker = threading.Thread(target=time_source, args=(server, "timeDest", stop), daemon=True)
    try:
        app.wait_for_log("Consuming")
        ticker.start()
        read(server, {f"{ROUTER_STREAM}.evenLogger": f"evenDest.{ROUTER_STREAM}",
                      f"{ROUTER_STREAM}.oddLogger": f"oddDest.{ROUTER_STREAM}"}, TICKS, 30)
        print(f"== SIGTERM -> router exited {app.stop()}")
    finally:
        stop.set()
        if ticker.is_alive():
            ticker.join(10)
        app.kill()
        print(f"-- router log ({app.log_path}):\n{app.log}")


def run(workdir: Path) -> None:
    server = RabbitMQ(workdir / "rabbitmq.log").start()
    print(f"== embedded RabbitMQ ({server.node}) on 127.0.0.1:{server.port}")
    try:
        processor_demo(server, workdir)
        router_demo(server, workdir)
    finally:
        server.remove()
