"""Spring AMQP batches (``springBatchFormat: lengthHeader4``) both ways on a real RabbitMQ node: split on the way in
(each message a record, the AMQP message acknowledged once all are settled), assembled on the way out with
``batchingEnabled``; the format's edge cases as pure functions."""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from conftest import Rabbit
from devkit.apps import App
from devkit.rabbitmq import RabbitMQ
from devkit.waiting import wait_for
from util.amqp_batches import Batcher, BatchFormatError, split

DLQ = "--spring.cloud.stream.rabbit.bindings.input.consumer.autoBindDlq=true"
FAST_RETRY = ("--spring.cloud.stream.bindings.input.consumer.maxAttempts=2",
              "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval=10")
PRODUCER = "--spring.cloud.stream.rabbit.bindings.output.producer"


def spring_batch(bodies: list[bytes]) -> bytes:
    """A body as spring-amqp's SimpleBatchingStrategy.assembleMessage writes it: an int length, then the bytes."""
    out = bytearray()
    for body in bodies:
        out += struct.pack(">i", len(body)) + body
    return bytes(out)


def spring_headers(count: int) -> dict[str, Any]:
    return {"springBatchFormat": "lengthHeader4", "amqp_batchSize": count}


def spring_debatch(body: bytes) -> list[bytes]:
    """What spring-amqp's deBatch hands a listener (the test's own reading, not the app's)."""
    out, at = [], 0
    while at < len(body):
        (length,) = struct.unpack_from(">i", body, at)
        out.append(body[at + 4:at + 4 + length])
        at += 4 + length
    return out


def messages_of(properties: Any, body: bytes) -> list[bytes]:
    """As a Spring consumer reads a message: split when it says it is a batch, else whole."""
    batch = (properties.headers or {}).get("springBatchFormat") == "lengthHeader4"
    return spring_debatch(body) if batch else [body]


# -- the format ----------------------------------------------------------------------------------
def test_split_reads_springs_layout_and_refuses_what_does_not_add_up() -> None:
    assert split(spring_batch([b"a", b"", b"ccc"])) == [b"a", b"", b"ccc"]
    for bad, words in ((spring_batch([b"abc"])[:-1], "insufficient batch data at offset 0"),
                       (struct.pack(">i", -1), "insufficient batch data at offset 0 (length -1"),
                       (spring_batch([b"a"]) + b"\x00\x00", "2 bytes left at offset 5"),
                       (b"", "no message in it")):
        with pytest.raises(BatchFormatError, match=words.replace("(", r"\(")):
            split(bad)


def test_a_batch_is_released_at_its_size_its_buffer_limit_or_before_it_would_overflow() -> None:
    class Props:
        headers: dict[str, Any] | None = None

        def encode(self) -> list[bytes]:
            return []

    published: list[tuple[str, str, bytes, Any]] = []

    def publish(exchange: str, key: str, body: bytes, properties: Any) -> int:
        published.append((exchange, key, body, properties))
        return len(published)

    batcher = Batcher(3, 20, 60.0, publish, lambda properties: properties.encode())
    handles = [batcher.add("x", "k", body, Props()) for body in (b"aaaa", b"bb", b"c")]  # 3 messages: released
    assert published[-1][2] == spring_batch([b"aaaa", b"bb", b"c"])
    assert published[-1][3].headers == {"springBatchFormat": "lengthHeader4", "amqp_batchSize": 3}
    assert {id(h) for h in handles} == {id(handles[0])}
    assert handles[0].sent == 1
    batcher.add("x", "k", b"0123456789", Props())  # 14 bytes: room for no 10-byte message more (20)
    batcher.add("x", "other", b"z", Props())  # its own batch: another routing key
    batcher.add("x", "k", b"9876543210", Props())  # would make 28: the open batch goes first, alone, as it is
    assert published[-1][2:] == (b"0123456789", published[-1][3])
    assert published[-1][3].headers is None
    batcher.add("x", "k", b"0123456789abcdef", Props())  # 14 + 20 > 20: released, then 20 >= 20 released
    assert [p[2] for p in published[-2:]] == [b"9876543210", b"0123456789abcdef"]
    batcher.release_all()
    assert published[-1][1:3] == ("other", b"z")


# -- inbound -------------------------------------------------------------------------------------
def test_spring_batches_are_split_into_records_and_a_damaged_one_goes_whole_to_the_dlq(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("processor", source, {"output": sink}, "--reversestring=true", DLQ, *FAST_RETRY,
                           group=group)
    app.wait_for_log("Consuming")
    damaged = spring_batch([b"lost?", b"never"])[:-2]
    rabbit.publish(source, [spring_batch([b"one", b"two", b"three"])], headers=spring_headers(3))
    rabbit.publish(source, [b"single"], headers={"kept": "yes"})
    rabbit.publish(source, [damaged], headers=spring_headers(2))
    rabbit.publish(source, [spring_batch([b"\xff not utf-8", b"four"])], headers=spring_headers(2))
    got = rabbit.read(f"{sink}.check", 5, settle=1.0)
    assert [body for _, _, body in got] == [b"eno", b"owt", b"eerht", b"elgnis", b"ruof"]
    assert all("springBatchFormat" not in (p.headers or {}) and "amqp_batchSize" not in (p.headers or {})
               for _, p, _ in got)  # records, not batches: their outputs are single messages
    assert got[3][1].headers["kept"] == "yes"
    dead = rabbit.read(f"{source}.{group}.dlq", 2, settle=1.0)
    assert [body for _, _, body in dead] == [damaged, b"\xff not utf-8"]  # the damaged batch whole, as it came
    first = dead[0][1].headers
    assert first["springBatchFormat"] == "lengthHeader4"
    assert "insufficient batch data" in first["x-exception-message"]
    assert "springBatchFormat" not in dead[1][1].headers  # one message of a batch: that message alone
    assert app.metric("polyglot_records_failed_total", binding="input") == 2
    assert app.stop() == 0
    assert rabbit.depth(f"{source}.{group}") == 0  # every AMQP message acknowledged


def test_a_spring_batch_rejected_without_republishing_is_dead_lettered_whole(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("router", source, {"even": sink, "odd": sink}, DLQ, *FAST_RETRY,
                           "--spring.cloud.stream.rabbit.bindings.input.consumer.republishToDlq=false", group=group)
    app.wait_for_log("Consuming")
    body = spring_batch([b"1", b"no digit", b"2"])
    rabbit.publish(source, [body], headers=spring_headers(3))
    assert sorted(b for _, _, b in rabbit.read(f"{sink}.check", 2)) == [b"Even timestamp: 2", b"Odd timestamp: 1"]
    _, properties, dead = rabbit.read(f"{source}.{group}.dlq", 1, settle=1.0)[0]
    assert dead == body
    assert properties.headers["x-death"][0]["reason"] == "rejected"
    assert app.stop() == 0
    assert rabbit.depth(f"{source}.{group}") == 0


def test_kill_9_in_the_middle_of_spring_batches_loses_nothing(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    rabbit.declare_group(source, group)
    values = [f"v{i:05d}".encode() for i in range(10_000)]
    for start in range(0, len(values), 50):
        rabbit.publish(source, [spring_batch(values[start:start + 50])], headers=spring_headers(50))
    args = ("--reversestring=true", "--spring.cloud.stream.rabbit.bindings.input.consumer.prefetch=20")
    app = start_rabbit_app("processor", source, {"output": sink}, *args, group=group)
    wait_for(lambda: rabbit.depth(f"{sink}.check") > 2000, 60, "some records through")
    app.kill()
    assert rabbit.depth(f"{sink}.check") < len(values)  # killed in the middle
    app = start_rabbit_app("processor", source, {"output": sink}, *args, group=group)
    got = Counter(body for _, _, body in rabbit.read(f"{sink}.check", len(values), timeout=120, settle=1.0))
    assert set(got) == {v[::-1] for v in values}  # each at least once
    assert app.stop() == 0
    assert rabbit.depth(f"{source}.{group}") == 0


# -- outbound ------------------------------------------------------------------------------------
def test_batching_enabled_publishes_spring_batches_that_spring_splits(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("invoice", source, {"output": sink}, f"{PRODUCER}.batchingEnabled=true",
                           f"{PRODUCER}.batchSize=4", group=group)
    app.wait_for_log("Consuming")
    orders = [json.dumps({"id": i, "amount": 10.0}).encode() for i in range(10)]
    rabbit.publish(source, orders, content_type="application/json")
    got = rabbit.read(f"{sink}.check", 3, settle=1.0)  # 10 invoices in batches of at most 4
    invoices = [json.loads(body) for _, p, b in got for body in messages_of(p, b)]
    assert sorted(i["order"] for i in invoices) == list(range(10))
    for _, properties, body in got:
        count = len(messages_of(properties, body))
        assert count <= 4
        if count > 1:
            assert properties.headers["springBatchFormat"] == "lengthHeader4"
            assert properties.headers["amqp_batchSize"] == count
        assert properties.content_type == "application/json"  # the first message's properties
    assert max(len(messages_of(p, body)) for _, p, body in got) > 1
    assert app.stop() == 0


def test_a_python_consumer_reads_what_a_batching_python_producer_sends(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str]) -> None:
    source, middle, sink, group = names("in"), names("mid"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    first = start_rabbit_app("processor", source, {"output": middle}, "--reversestring=true",
                             f"{PRODUCER}.batchingEnabled=true", f"{PRODUCER}.requiredGroups={group}", group=group)
    second = start_rabbit_app("processor", middle, {"output": sink}, "--reversestring=true", group=group)
    first.wait_for_log("Consuming")
    second.wait_for_log("Consuming")
    values = [f"m{i:04d}".encode() for i in range(1000)]
    rabbit.publish(source, values)
    got = rabbit.read(f"{sink}.check", len(values), settle=1.0)
    assert sorted(body for _, _, body in got) == values  # reversed twice, each once
    assert first.stop() == 0
    assert second.stop() == 0


@pytest.mark.parametrize("batching", [False, True])
def test_a_message_amqp_cannot_carry_goes_to_the_dlq_and_the_others_flow(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, names: Callable[[str], str], batching: bool) -> None:
    """A header key over AMQP's 255 bytes: pika refuses to encode it; that record is dead-lettered (with batching:
    refused before it opens a batch, whose first message's properties the batch is sent with), the rest flow."""
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    app = start_rabbit_app("shapes", source, {"output": sink}, DLQ, *FAST_RETRY,
                           f"{PRODUCER}.batchingEnabled={str(batching).lower()}", f"{PRODUCER}.batchSize=2",
                           group=group)
    app.wait_for_log("Consuming")
    rabbit.publish(source, [b"long-key", b"text", b"text", b"text"])
    got = rabbit.read(f"{sink}.check", 2 if batching else 3, settle=1.0)
    assert [t for _, p, body in got for t in messages_of(p, body)] == [b"t\xc3\xabxt"] * 3
    dead = rabbit.read(f"{source}.{group}.dlq", 1, settle=1.0)
    assert [body for _, _, body in dead] == [b"long-key"]
    assert "a name over 255 bytes" in dead[0][1].headers["x-exception-message"]
    assert app.stop() == 0
    assert rabbit.depth(f"{source}.{group}") == 0


def test_spring_batches_in_and_out_in_batch_mode_survive_the_broker_closing_every_connection(
        start_rabbit_app: Callable[..., App], rabbit: Rabbit, rabbitmq: RabbitMQ, names: Callable[[str], str]) -> None:
    """Batch mode (enableBatching) on Spring batches of 13 in, batchingEnabled (7) out; the broker closes every
    connection three times mid-flow: each record comes out at least once, the input queue drains."""
    source, sink, group = names("in"), names("out"), names("g")
    rabbit.declare_group(sink, "check")
    rabbit.declare_group(source, group)
    values = [f"v{i:05d}" for i in range(9_009)]
    consumer = "--spring.cloud.stream.rabbit.bindings.input.consumer"
    app = start_rabbit_app("batch", source, {"output": sink},
                           "--spring.cloud.stream.bindings.input.consumer.batch-mode=true",
                           f"{consumer}.enableBatching=true", f"{consumer}.batchSize=50",
                           f"{consumer}.receiveTimeout=100", f"{consumer}.prefetch=30",
                           f"{PRODUCER}.batchingEnabled=true", f"{PRODUCER}.batchSize=7", group=group)
    app.wait_for_log("Consuming")
    rabbit.close()
    seen = 0
    for chunk in range(3):  # a third of the input, then the drop once its outputs flow
        checker = Rabbit(rabbitmq)
        part = values[chunk * 3003:(chunk + 1) * 3003]
        for start in range(0, len(part), 13):
            checker.publish(source, [spring_batch([v.encode() for v in part[start:start + 13]])],
                            headers=spring_headers(13))
        wait_for(lambda checker=checker, seen=seen: checker.depth(f"{sink}.check") > seen + 20, 60,
                 "records flowing (again)")
        seen = checker.depth(f"{sink}.check")
        checker.close()
        rabbitmq.ctl("close_all_connections", "test")
    reader = Rabbit(rabbitmq)
    got: set[str] = set()
    wait_for(lambda: got.update(m.decode().split("|")[0][::-1] for _, p, body in
                                reader.read(f"{sink}.check", 1, timeout=2) for m in messages_of(p, body))
             or set(values) <= got, 150, "every record out")
    wait_for(lambda: reader.depth(f"{source}.{group}") == 0, 60, "the input drained")
    assert app.stop() == 0
    reader.close()
