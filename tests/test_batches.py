"""Batch mode on Tansu, each Kafka client: the function takes a poll's records as a list; each failure rule."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Kafka, Rabbit
from devkit.apps import App
from devkit.waiting import wait_for

TEXT = [("contentType", b'"text/plain"')]
BATCH = ("--spring.cloud.stream.bindings.input.consumer.batch-mode=true",
         "--spring.cloud.stream.bindings.input.consumer.maxAttempts=2",
         "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval=10",
         "--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true")


def _run(kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App],
         values: list[bytes]) -> tuple[list[str], list[bytes], App]:
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    dlq = kafka.create(f"error.{source}.{group}")
    kafka.produce(source, values, headers=TEXT)
    app = start_stream_app("batch", source, {"output": sink}, *BATCH, group=group)
    wait_for(kafka.caught_up(group, {0: len(values)}), 90, "every record committed")
    dead = kafka.read(dlq, 1, settle=2.0)
    out = kafka.read(sink, len(values) - len(dead), settle=1.0)
    return [r.value.decode() for r in out], [r.value for r in dead], app


def test_a_batch_step_gets_lists_and_each_record_comes_out_once(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    values = [f"v{i:04d}".encode() for i in range(1500)]
    out, dead, app = _run(kafka, names, start_stream_app, values)
    assert dead == []
    assert Counter(text.split("|")[0] for text in out) == Counter(v.decode()[::-1] for v in values)
    assert max(int(text.split("|")[1]) for text in out) > 1  # lists, not records one by one
    assert app.stop() == 0


def test_batch_failures_take_their_records_error_paths_and_the_rest_goes_on(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """Text that is not UTF-8 fails its conversion before the call; BatchError at ``poison``: the records before
    it sent, it dead-lettered after its attempts, the rest sent; ``boom``: its whole batch dead-lettered."""
    values = [f"v{i:04d}".encode() for i in range(600)]
    values[100], values[300], values[500] = b"\xffnot utf-8", b"poison", b"boom"
    out, dead, app = _run(kafka, names, start_stream_app, values)
    assert b"\xffnot utf-8" in dead
    assert b"poison" in dead
    assert b"boom" in dead
    sent = Counter(text.split("|")[0][::-1].encode() for text in out)
    assert sent + Counter(dead) == Counter(values), "a record lost or doubled"
    assert app.process.poll() is None
    assert app.stop() == 0


def test_sigterm_and_kill_mid_batch_lose_nothing(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """SIGTERM in the middle of 20,000 records drains the batch and exits 0; kill -9 of the next one; a third
    finishes: every record comes out at least once, the group commits them all."""
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    values = [f"v{i:05d}".encode() for i in range(20_000)]
    kafka.produce(source, values, headers=TEXT)
    first = start_stream_app("batch", source, {"output": sink}, *BATCH, group=group)
    wait_for(lambda: kafka.committed(group).get(0, 0) > 0, 60, "the first batches committed")
    assert first.stop() == 0
    second = start_stream_app("batch", source, {"output": sink}, *BATCH, group=group)
    done = kafka.committed(group).get(0, 0)
    wait_for(lambda: kafka.committed(group).get(0, 0) > done, 60, "the second instance committing")
    second.kill()
    third = start_stream_app("batch", source, {"output": sink}, *BATCH, group=group)
    wait_for(kafka.caught_up(group, {0: len(values)}), 120, "every record committed")
    def inputs(records: list[Any]) -> set[bytes]:
        return {r.value.decode().split("|")[0][::-1].encode() for r in records}

    # duplicates after kill -9 can make up the count first: read on until every input's output is there
    out = kafka.read(sink, len(values), settle=1.0, until=lambda records: inputs(records) >= set(values))
    assert inputs(out) == set(values)
    assert third.stop() == 0


def test_batch_mode_on_rabbitmq_takes_batch_size_deliveries_a_call(
        rabbit: Rabbit, names: Callable[[str], str], start_rabbit_app: Callable[..., App]) -> None:
    source, sink, group = names("in"), names("out"), "batches"
    rabbit_consumer = "--spring.cloud.stream.rabbit.bindings.input.consumer"
    app = start_rabbit_app("batch", source, {"output": sink},
                           "--spring.cloud.stream.bindings.input.consumer.batch-mode=true",
                           f"{rabbit_consumer}.enableBatching=true", f"{rabbit_consumer}.batchSize=5",
                           f"{rabbit_consumer}.receiveTimeout=200",
                           f"--spring.cloud.stream.bindings.output.producer.requiredGroups={group}", group=group)
    app.wait_for_log("Consuming")
    values = [f"m{i:02d}" for i in range(23)]
    rabbit.publish(source, [v.encode() for v in values])
    got = [body.decode() for _, _, body in rabbit.read(f"{sink}.{group}", len(values), settle=1.0)]
    assert sorted(text.split("|")[0][::-1] for text in got) == values
    sizes = [int(text.split("|")[1]) for text in got]
    assert max(sizes) == 5, sizes  # batchSize; the last ones within receiveTimeout
    assert app.stop() == 0


def test_a_batch_sink_writes_each_record_once_and_dead_letters_what_it_reports(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App], tmp_path: Path) -> None:
    """BatchError from a sink: what it wrote before the failed record is done (not written again), the record is
    dead-lettered after its attempts, and the records after it are written."""
    source, group, out = kafka.create(names("in")), names("g"), tmp_path / "sink.txt"
    values = [f"v{i:03d}" for i in range(300)]
    values[120] = "poison"
    kafka.produce(source, [v.encode() for v in values], headers=TEXT)
    app = start_stream_app("batch-sink", source, {}, *BATCH, f"--sink.file={out}", group=group)
    wait_for(kafka.caught_up(group, {0: len(values)}), 90, "every record committed")
    written = out.read_text().splitlines()
    assert written == [v for v in values if v != "poison"]  # in order, each once
    assert [r.value for r in kafka.read(f"error.{source}.{group}", 1, settle=1.0)] == [b"poison"]
    assert app.stop() == 0


def test_a_batch_router_sends_each_value_to_its_binding_filters_nones_and_dead_letters_what_it_reports(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    source, even, odd, group = kafka.create(names("in")), kafka.create(names("even")), kafka.create(names("odd")), \
        names("g")
    dlq = kafka.create(f"error.{source}.{group}")
    values = [str(1000 + i) for i in range(600)]
    values[250] = "no digit"
    kafka.produce(source, [v.encode() for v in values], headers=TEXT)
    app = start_stream_app("batch-router", source, {"even": even, "odd": odd}, *BATCH, group=group)
    wait_for(kafka.caught_up(group, {0: len(values)}), 90, "every record committed")
    stamps = [v for v in values if v[-1].isdigit() and not v.endswith("5")]
    got_even = [r.value.decode() for r in kafka.read(even, sum(int(v[-1]) % 2 == 0 for v in stamps), settle=1.0)]
    got_odd = [r.value.decode() for r in kafka.read(odd, sum(int(v[-1]) % 2 == 1 for v in stamps), settle=1.0)]
    assert Counter(got_even) == Counter(f"<{v}>" for v in stamps if int(v[-1]) % 2 == 0)  # each once
    assert Counter(got_odd) == Counter(f"<{v}>" for v in stamps if int(v[-1]) % 2 == 1)
    assert [r.value for r in kafka.read(dlq, 1, settle=1.0)] == [b"no digit"]
    assert app.stop() == 0
