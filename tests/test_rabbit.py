"""The stream recipes on the rabbit binder, on a real RabbitMQ node: Spring's layout, at-least-once, faults."""

from __future__ import annotations

import datetime
import json
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_in_the_middle_of_20000_messages_loses_none(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str],
        stop: signal.Signals) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(source, group)
    rabbit.declare_group(sink, "check")
    values = [f"m{i:05d}".encode() for i in range(20_000)]
    rabbit.publish(source, values)
    app = start_rabbit_app("processor", source, {"output": sink}, group=group)
    wait_for(lambda: app.metric("polyglot_records_sent_total", binding="output") > 2000, 60, "part of the work")
    code = app.stop(stop)
    assert code == (0 if stop == signal.SIGTERM else -9)
    again = start_rabbit_app("processor", source, {"output": sink}, group=group)
    wait_for(lambda: rabbit.depth(f"{source}.{group}") == 0 and again.metric(
        "polyglot_records_sent_total", binding="output") > 0, 120, "the rest processed")
    counts = Counter(body for _, _, body in rabbit.read(f"{sink}.check", 20_000, settle=1.0))
    assert set(counts) == set(values)
    duplicates = sum(counts.values()) - len(values)
    assert duplicates == 0 if stop == signal.SIGTERM else duplicates <= 1000 + 1000  # prefetch + a batch
    assert again.stop() == 0


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


# The fault suite's payload abuse, on RabbitMQ: case -> (body, content type, extra headers).
ABUSE: dict[str, tuple[bytes, str | None, int]] = {
    "empty": (b"", "text/plain", 0),
    "1 MB": (b"x" * 999_999 + b"4", "text/plain", 0),
    "2 MiB": (b"y" * (2 * 1024 * 1024 - 1) + b"6", "text/plain", 0),  # RabbitMQ takes it: no size refusal here
    "invalid UTF-8": (b"\xff\xfe 10:00:01", "text/plain", 0),
    "NUL bytes": (b"10:00\x0002", "text/plain", 0),
    "1,000 headers": (b"10:00:03", "text/plain", 1000),  # a header frame must fit frame_max (128 KiB)
    "binary content type": (b"\x00\x01\xfe\xff7", "application/octet-stream", 0),
    "no content type": (b'"10:00:05"', None, 0),  # application/json, as Spring reads it
}
ABUSE_PATHS = {
    "processor": {"empty": "output", "1 MB": "output", "2 MiB": "output", "invalid UTF-8": "dlq",
                  "NUL bytes": "output", "1,000 headers": "output", "binary content type": "output",
                  "no content type": "output"},
    "router": {"empty": "dlq", "1 MB": "even", "2 MiB": "even", "invalid UTF-8": "dlq", "NUL bytes": "even",
               "1,000 headers": "odd", "binary content type": "dlq", "no content type": "odd"},
}


@pytest.mark.parametrize("kind", ["processor", "router"])
def test_abusive_payloads_take_their_documented_path_and_the_app_keeps_running(
        kind: str, start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, group = names("in"), names("g")
    sinks = {"output": names("out")} if kind == "processor" else {"even": names("even"), "odd": names("odd")}
    for destination in sinks.values():
        rabbit.declare_group(destination, "check")
    app = start_rabbit_app(kind, source, sinks, "--reversestring=true", DLQ, *FAST_RETRY, group=group)
    app.wait_for_log("Consuming")
    for case, (body, content_type, extra) in ABUSE.items():
        headers = {"case": case, "when": datetime.datetime(2026, 12, 2), "nested": {"a": [1, "b"]},
                   **{f"x-abuse-{i:04d}": "0123456789abcdef" for i in range(extra)}}
        rabbit.publish(source, [body], content_type=content_type, headers=headers)
    rabbit.publish(source, [b"10:00:08"], headers={"case": "after"})
    queues = {**{binding: f"{d}.check" for binding, d in sinks.items()}, "dlq": f"{source}.{group}.dlq"}
    where: dict[str, tuple[str, Any, bytes]] = {}

    def arrived() -> bool:
        for binding, queue in queues.items():
            for _, properties, body in rabbit.read(queue, 0, timeout=1):
                where[properties.headers["case"]] = (binding, properties, body)
        return len(where) == len(ABUSE) + 1

    wait_for(arrived, 120, "every message on its path", interval=0.2)
    after = "output" if kind == "processor" else "even"
    assert {case: binding for case, (binding, _, _) in where.items()} == {**ABUSE_PATHS[kind], "after": after}
    for case, (binding, properties, body) in where.items():
        if binding == "dlq":
            assert body == ABUSE[case][0], case
            assert properties.headers["x-original-exchange"] == source
        if case != "after":  # AMQP values pass through as they came
            assert properties.headers["nested"] == {"a": [1, "b"]}, case
            assert properties.headers["when"] == datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC), case
    assert sum(k.startswith("x-abuse-") for k in where["1,000 headers"][1].headers) == 1000
    assert app.process.poll() is None
    assert health(app)[0] == 200
    assert app.stop() == 0


@pytest.fixture
def own_rabbitmq(tmp_path: Path) -> Iterator[RabbitMQ]:
    server = RabbitMQ(tmp_path / "own-rabbitmq.log").start()
    yield server
    server.remove()


def test_a_broker_restart_turns_health_down_then_up_and_loses_nothing(
        start_rabbit_app: Callable[..., App], own_rabbitmq: RabbitMQ, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit = Rabbit(own_rabbitmq)
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("processor", source, {"output": sink}, group=group, server=own_rabbitmq)
    app.wait_for_log("Consuming")
    rabbit.publish(source, [b"before"])
    assert [b for _, _, b in rabbit.read(f"{sink}.check", 1)] == [b"before"]
    rabbit.close()
    own_rabbitmq.stop()
    wait_for(lambda: health(app)[0] == 503, 30, "health DOWN while the broker is away")
    assert "RabbitMQ" in json.dumps(health(app)[1])
    own_rabbitmq.start()
    wait_for(lambda: health(app)[0] == 200, 90, "health UP after the restart")
    rabbit = Rabbit(own_rabbitmq)
    rabbit.publish(source, [b"after"])
    assert [b for _, _, b in rabbit.read(f"{sink}.check", 1)] == [b"after"]
    rabbit.close()
    assert app.process.poll() is None
    assert app.stop() == 0


def test_a_broker_not_up_yet_at_start_is_waited_for_with_health_down(
        start_rabbit_app: Callable[..., App], names: Callable[[str], str], tmp_path: Path) -> None:
    server = RabbitMQ(tmp_path / "late-rabbitmq.log")  # its port is chosen, the node not started
    source, sink, group = names("in"), names("out"), names("g")
    try:
        app = start_rabbit_app("processor", source, {"output": sink}, group=group, server=server)
        app.wait_for_log("RabbitMQ unreachable at 127.0.0.1")
        assert "property 'spring.rabbitmq.host'" in app.log
        wait_for(lambda: app.port and health(app)[0] == 503, 30, "health DOWN while no broker answers")
        server.start()
        app.wait_for_log("Consuming", timeout=90)
        rabbit = Rabbit(server)
        rabbit.declare_group(sink, "check")
        rabbit.publish(source, [b"late"])
        assert [b for _, _, b in rabbit.read(f"{sink}.check", 1)] == [b"late"]
        rabbit.close()
        assert app.stop() == 0
    finally:
        server.remove()


def test_an_output_exchange_deleted_under_the_app_holds_the_messages_until_it_is_back(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("processor", source, {"output": sink}, group=group)
    app.wait_for_log("Consuming")
    rabbit.channel.exchange_delete(sink)  # the broker closes the publishing channel: 404 NOT_FOUND
    rabbit.publish(source, [b"kept"])
    wait_for(lambda: "NOT_FOUND" in json.dumps(health(app)[1]), 30, "health DOWN naming the refusal")
    assert rabbit.depth(f"{sink}.check") == 0  # nothing was published: the message waits, unacknowledged
    rabbit.declare_group(sink, "check")  # a peer declares the exchange again
    assert [b for _, _, b in rabbit.read(f"{sink}.check", 1, timeout=60)] == [b"kept"]
    wait_for(lambda: health(app)[0] == 200, 60, "health UP again")
    assert app.stop() == 0


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--spring.rabbitmq.host=127.0.0.1"], {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": "127.0.0.1:9"},
     "choose one with 'spring.cloud.stream.defaultBinder'"),
    (["--spring.cloud.stream.defaultBinder=pulsar"], {}, "property 'spring.cloud.stream.defaultBinder'"),
    (["--spring.cloud.stream.rabbit.bindings.input.consumer.prefetch=0", "--spring.rabbitmq.port=1"], {},
     "'spring.cloud.stream.rabbit.bindings.input.consumer.prefetch': expected 1 or more"),
])
def test_a_binder_misconfiguration_is_one_line_naming_the_property(
        start_app: Callable[..., App], names: Callable[[str], str], args: list[str], env: dict[str, str],
        message: str) -> None:
    app = start_app("polyglot-python-processor/python_processor.py",
                    ["--server.port=0", f"--spring.cloud.stream.bindings.input.destination={names('in')}",
                     f"--spring.cloud.stream.bindings.output.destination={names('out')}", *args], env)
    assert app.process.wait(30) == 1
    assert message in app.log


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


def test_an_input_queue_deleted_under_the_app_is_declared_again_and_consumed(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("processor", source, {"output": sink}, group=group)
    app.wait_for_log("Consuming")
    rabbit.channel.queue_delete(f"{source}.{group}")  # the broker cancels the app's consumer
    app.wait_for_log("cancelled the consumer of queue")
    wait_for(lambda: app.log.count("Connected to RabbitMQ") >= 2, 60, "a reconnection")
    rabbit.publish(source, [b"again"])
    assert [b for _, _, b in rabbit.read(f"{sink}.check", 1, timeout=60)] == [b"again"]
    assert app.stop() == 0
