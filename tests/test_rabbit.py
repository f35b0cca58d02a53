"""The stream recipes on the rabbit binder, on a real RabbitMQ node: Spring's layout, at-least-once, DLQ, partitions
(the faults are in test_faults_rabbit.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Rabbit
from devkit.apps import App
from devkit.rabbitmq import RabbitMQ
from devkit.waiting import wait_for
from util.partitions import java_string_hash, select_partition

DLQ = "--spring.cloud.stream.rabbit.bindings.input.consumer.autoBindDlq=true"
FAST_RETRY = ("--spring.cloud.stream.bindings.input.consumer.maxAttempts=2",
              "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval=10")


def ctl_rows(server: RabbitMQ, *args: str) -> list[list[str]]:
    out = server.ctl(*args, "--no-table-headers", "--quiet").stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def health(app: App) -> tuple[int, dict]:
    status, body = app.get("/actuator/health")
    return status, json.loads(body) if status else {}


def test_a_named_group_processes_what_was_published_while_it_was_stopped_in_springs_layout(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, rabbitmq: RabbitMQ,
        names: Callable[[str], str]) -> None:
    source, sink, group = names("http"), names("proc"), "ticktock"
    args = ("--reversestring=true", f"--spring.cloud.stream.bindings.output.producer.requiredGroups={group}")
    first = start_rabbit_app("processor", source, {"output": sink}, *args, group=group)
    first.wait_for_log("Consuming")
    assert "with the rabbit binder (pika)" in first.log
    assert first.stop() == 0
    rabbit.publish(source, [b"hello", "👋🏽 héllo".encode()], headers={"traceId": "t-1", "count": 7})  # while stopped
    app = start_rabbit_app("processor", source, {"output": sink}, *args, group=group)
    got = rabbit.read(f"{sink}.{group}", 2)
    assert [body for _, _, body in got] == [b"olleh", "olléh 👋🏽".encode()]
    method, properties, _ = got[0]
    assert (method.exchange, method.routing_key) == (sink, sink)  # Spring's producer: routing key = destination
    assert properties.content_type == "text/plain"
    assert properties.delivery_mode == 2
    assert properties.headers == {"traceId": "t-1", "count": 7}  # AMQP types kept; no spring_json_header_types
    exchanges = {row[0]: row[1:] for row in ctl_rows(rabbitmq, "list_exchanges", "name", "type", "durable",
                                                            "auto_delete")}
    assert exchanges[source] == exchanges[sink] == ["topic", "true", "false"]
    queues = {row[0]: row[1:] for row in ctl_rows(rabbitmq, "list_queues", "name", "durable", "auto_delete",
                                                         "exclusive", "arguments")}
    assert queues[f"{source}.{group}"] == ["true", "false", "false", "[]"]
    assert queues[f"{sink}.{group}"] == ["true", "false", "false", "[]"]
    bindings = {(row[0], row[1], row[2]) for row in ctl_rows(rabbitmq, "list_bindings", "source_name",
                                                             "destination_name", "routing_key")}
    assert {(source, f"{source}.{group}", "#"), (sink, f"{sink}.{group}", "#")} <= bindings
    assert app.json("/actuator/health")["status"] == "UP"
    assert app.stop() == 0


def test_a_poison_message_goes_to_the_dlq_with_springs_headers_while_the_next_ones_flow(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, rabbitmq: RabbitMQ,
        names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("processor", source, {"output": sink}, "--reversestring=true", DLQ, *FAST_RETRY,
                           group=group)
    app.wait_for_log("Consuming")
    rabbit.publish(source, [b"one", b"\xff\xfe not utf-8", b"two"])
    assert [body for _, _, body in rabbit.read(f"{sink}.check", 2)] == [b"eno", b"owt"]
    dead = rabbit.read(f"{source}.{group}.dlq", 1)
    method, properties, body = dead[0]
    assert body == b"\xff\xfe not utf-8"
    assert properties.content_type == "text/plain"
    assert (method.exchange, method.routing_key) == ("DLX", f"{source}.{group}")
    headers = properties.headers
    assert headers["x-original-exchange"] == source
    assert headers["x-original-routingKey"] == source
    assert "can't decode byte 0xff" in headers["x-exception-message"]
    assert "UnicodeDecodeError" in headers["x-exception-stacktrace"]
    queues = {row[0]: row[1] for row in ctl_rows(rabbitmq, "list_queues", "name", "arguments")}
    assert json.loads(queues[f"{source}.{group}"].replace("{", "[").replace("}", "]")) == [
        ["x-dead-letter-exchange", "DLX"], ["x-dead-letter-routing-key", f"{source}.{group}"]]
    # Spring declares the same queue with the same arguments: it passes; a peer that differs fails.
    rabbit.channel.queue_declare(f"{source}.{group}", durable=True, arguments={
        "x-dead-letter-exchange": "DLX", "x-dead-letter-routing-key": f"{source}.{group}"})
    with pytest.raises(rabbit.pika.exceptions.ChannelClosedByBroker, match="PRECONDITION_FAILED"):
        rabbit.channel.queue_declare(f"{source}.{group}", durable=True)
    assert app.metric("polyglot_records_failed_total", binding="input") == 1
    assert app.process.poll() is None
    assert app.stop() == 0


def test_without_republishing_a_failed_message_is_rejected_and_the_broker_dead_letters_it(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("router", source, {"even": sink, "odd": sink}, DLQ, *FAST_RETRY,
                           "--spring.cloud.stream.rabbit.bindings.input.consumer.republishToDlq=false", group=group)
    app.wait_for_log("Consuming")
    rabbit.publish(source, [b"1", b"no digit", b"2"])
    assert sorted(body for _, _, body in rabbit.read(f"{sink}.check", 2)) == [b"Even timestamp: 2",
                                                                             b"Odd timestamp: 1"]
    _, properties, body = rabbit.read(f"{source}.{group}.dlq", 1)[0]
    assert body == b"no digit"
    assert properties.headers["x-death"][0]["reason"] == "rejected"
    assert app.stop() == 0


def test_without_a_dlq_a_failed_message_is_logged_and_acknowledged(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("router", source, {"even": sink, "odd": sink}, *FAST_RETRY, group=group)
    app.wait_for_log("Consuming")
    rabbit.publish(source, [b"x", b"4"])
    assert [body for _, _, body in rabbit.read(f"{sink}.check", 1)] == [b"Even timestamp: 4"]
    wait_for(lambda: "skipped after 2 attempt(s)" in app.log, 30, "the skip logged")
    wait_for(lambda: rabbit.depth(f"{source}.{group}") == 0, 30, "everything acknowledged")
    assert app.stop() == 0


def test_two_instances_on_one_group_queue_share_the_work(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    apps = [start_rabbit_app("processor", source, {"output": sink}, group=group) for _ in range(2)]
    for app in apps:
        app.wait_for_log("Consuming")
    values = [f"m{i:04d}".encode() for i in range(2000)]
    rabbit.publish(source, values)
    assert sorted(body for _, _, body in rabbit.read(f"{sink}.check", 2000, settle=0.5)) == values
    shares = [app.metric("polyglot_records_received_total", binding="input") for app in apps]
    assert sum(shares) == 2000
    assert min(shares) > 0
    for app in apps:
        assert app.stop() == 0


def test_partitioned_output_lands_in_the_partition_queues_and_partitioned_input_reads_its_own(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, rabbitmq: RabbitMQ,
        names: Callable[[str], str]) -> None:
    source, middle, sink, group = names("in"), names("mid"), names("out"), "s"
    producer = start_rabbit_app(
        "processor", source, {"output": middle}, "--spring.cloud.stream.bindings.output.producer.partitionCount=3",
        "--spring.cloud.stream.bindings.output.producer.partitionKeyExpression=payload",
        f"--spring.cloud.stream.bindings.output.producer.requiredGroups={group}", group=group)
    producer.wait_for_log("Consuming")
    bindings = {(row[1], row[2]) for row in ctl_rows(rabbitmq, "list_bindings", "source_name", "destination_name",
                                                     "routing_key") if row[0] == middle}
    assert bindings == {(f"{middle}.{group}-{n}", f"{middle}-{n}") for n in range(3)}
    values = [f"key-{i}" for i in range(30)]
    rabbit.publish(source, [v.encode() for v in values])
    wait_for(lambda: sum(rabbit.depth(f"{middle}.{group}-{n}") for n in range(3)) == 30, 60, "30 routed")
    consumer = start_rabbit_app("processor", middle, {"output": sink}, "--spring.cloud.stream.instanceIndex=1",
                                "--spring.cloud.stream.instanceCount=3",
                                "--spring.cloud.stream.bindings.input.consumer.partitioned=true",
                                "--spring.cloud.stream.bindings.output.producer.requiredGroups=check", group=group)
    consumer.wait_for_log("Consuming")
    wanted = [v.encode() for v in values if select_partition(java_string_hash(v), 3) == 1]
    got = rabbit.read(f"{sink}.check", len(wanted), settle=0.5)
    assert sorted(body for _, _, body in got) == sorted(wanted)
    assert rabbit.depth(f"{middle}.{group}-0") + rabbit.depth(f"{middle}.{group}-2") == 30 - len(wanted)
    for app in (producer, consumer):
        assert app.stop() == 0




@pytest.mark.parametrize(("args", "env", "message"), [
    (["--spring.rabbitmq.host=127.0.0.1"], {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": "127.0.0.1:9"},
     "choose one with 'spring.cloud.stream.defaultBinder'"),
    (["--spring.cloud.stream.defaultBinder=pulsar"], {}, "property 'spring.cloud.stream.defaultBinder'"),
    (["--spring.cloud.stream.rabbit.bindings.input.consumer.prefetch=0", "--spring.rabbitmq.port=1"], {},
     "'spring.cloud.stream.rabbit.bindings.input.consumer.prefetch': expected 1 to 65535"),
    (["--spring.cloud.stream.rabbit.bindings.input.consumer.prefetch=70000", "--spring.rabbitmq.port=1"], {},
     "'spring.cloud.stream.rabbit.bindings.input.consumer.prefetch': expected 1 to 65535"),
    (["--spring.rabbitmq.requested-heartbeat=70000", "--spring.rabbitmq.port=1"], {},
     "'spring.rabbitmq.requested-heartbeat': expected 0 to 65535"),
    (["--spring.rabbitmq.requested-heartbeat=-1", "--spring.rabbitmq.port=1"], {},
     "'spring.rabbitmq.requested-heartbeat': expected 0 to 65535"),
    (["--spring.rabbitmq.connection-timeout=-5", "--spring.rabbitmq.port=1"], {},
     "'spring.rabbitmq.connection-timeout': expected 0 to 2147483647"),
])
def test_a_binder_misconfiguration_is_one_line_naming_the_property(
        start_app: Callable[..., App], names: Callable[[str], str], args: list[str], env: dict[str, str],
        message: str) -> None:
    app = start_app("polyglot-python-processor/python_processor.py",
                    ["--server.port=0", f"--spring.cloud.stream.bindings.input.destination={names('in')}",
                     f"--spring.cloud.stream.bindings.output.destination={names('out')}", *args], env)
    assert app.process.wait(30) == 1
    assert message in app.log
    assert "Traceback" not in app.log


def test_a_source_and_a_sink_run_on_the_rabbit_binder_too(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str], tmp_path: Path) -> None:
    numbers, group, out = names("numbers"), names("g"), tmp_path / "sink.txt"
    sink = start_rabbit_app("sink", numbers, {}, f"--sink.file={out}", group=group)
    sink.wait_for_log("Consuming")
    source = start_rabbit_app("source", None, {"output": numbers}, "--count=20",
                              "--spring.integration.poller.fixed-delay=5")
    wait_for(lambda: out.exists() and out.read_text().splitlines() == [str(n) for n in range(1, 21)], 60,
             "the sink to write what the source sent")
    assert "Polling next_number every 5 ms with the rabbit binder (pika)" in source.log
    assert source.stop() == 0
    assert sink.stop() == 0
