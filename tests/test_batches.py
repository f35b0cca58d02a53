"""Batch mode on Tansu, each Kafka client: the function takes a poll's records as a list; each failure rule."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from conftest import Kafka
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
