"""Faults on the wire, through the proxy: damaged batches, header keys that are not UTF-8, produce requests
a broker never answers during a SIGTERM, an address that resets every connection; and functions that filter,
settings that are not numbers. Each on both Kafka clients, on a real broker."""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable

import confluent_kafka
import crc32c
import pytest
from kafka import KafkaProducer
from kafka.record.default_records import DefaultRecordBatchBuilder
from test_faults_edges import DLQ, TEXT, by_value, delivery_down, health

from conftest import Figures, Kafka
from devkit.apps import App
from devkit.kafka_proxy import KafkaProxy
from devkit.waiting import wait_for

NOT_ENOUGH_REPLICAS = 19  # a retriable refusal: the client keeps sending until its delivery timeout


class RawKey(str):
    """A header key kafka-python writes as these bytes: not UTF-8, yet legal on the wire."""

    def encode(self, *_args: object, **_kwargs: object) -> bytes:
        return b"\xff\xfebad"


def test_a_header_key_that_is_not_utf8_never_stops_the_partition(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App], client: str) -> None:
    source, sink, group = kafka.create(names("in")), names("out"), names("g")
    for value, extra in ((b"before", []), (b"poison", [(RawKey("x"), b"v")]), (b"after", [])):
        kafka.producer.send(source, value, headers=[("contentType", TEXT), *extra])
    kafka.producer.flush(30)
    app = start_processor(source, sink, "--reversestring=true", *DLQ, group=group)
    wait_for(kafka.caught_up(group, {0: 3}), 60, "every record committed")
    if client == "librdkafka":  # it cannot read any header of such a record: its error path, without them
        assert [r.value for r in kafka.read(sink, 2, settle=1.0)] == [b"erofeb", b"retfa"]
        [dead] = kafka.read(f"error.{source}.{group}", 1)
        assert dead.value == b"poison"
        assert dict(dead.headers)["x-exception-fqcn"] == b"util.headers.UnreadableRecordError"
        assert "header key that is not UTF-8" in dict(dead.headers)["x-exception-message"].decode()
    else:  # as Java: the key decoded with replacement characters, the record processed
        out = kafka.read(sink, 3, settle=1.0)
        assert [r.value for r in out] == [b"erofeb", b"nosiop", b"retfa"]
        assert "\ufffd\ufffdbad" in dict(out[1].headers)
    assert health(app)[0] == 200
    assert app.stop() == 0


def test_a_byte_flipped_in_a_fetched_batch_is_never_passed_on_and_flows_once_intact(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], start_processor: Callable[..., App],
        client: str, figures: Figures) -> None:
    kafka, proxy = proxied
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    values = [f"intact-{i:02d}".encode() for i in range(10)]
    kafka.produce(source, values, headers=[("contentType", TEXT)])
    proxy.corrupt(b"intact-05")  # its batch's CRC no longer matches
    app = start_processor(source, sink, "--reversestring=true", group=group,
                          env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    wait_for(lambda: "fetched records damaged" in delivery_down(app), 60, "health DOWN naming the damage")
    wait_for(lambda: app.log.count("cannot be read") >= 2, 60, "fetched again after a back-off, still damaged")
    damaged = kafka.read(sink, 10, timeout=2, settle=0.5)
    assert all(r.value != b"50-tcatnI" for r in damaged)  # the flipped payload never passes
    assert kafka.committed(group).get(0, 0) <= 5
    proxy.corrupt(None)
    mended = time.monotonic()
    wait_for(kafka.caught_up(group, {0: 10}), 90, "everything committed once the batch reads intact")
    assert by_value(kafka.read(sink, 10, settle=1.0)) == {v[::-1]: 1 for v in values}
    wait_for(lambda: health(app)[0] == 200, 30, "health UP")
    assert app.stop() == 0
    figures.add(f"{client}: fetch responses damaged, passed on, committed past the damage", f"{proxy.corrupted}, 0, 0")
    figures.add(f"{client}: damage gone to everything committed", f"{time.monotonic() - mended:.1f} s")


@pytest.mark.parametrize("fault", ["held", "refused"])
def test_sigterm_while_the_broker_does_not_take_the_sends_exits_within_the_drain_and_loses_nothing(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], start_processor: Callable[..., App],
        client: str, fault: str, figures: Figures) -> None:
    kafka, proxy = proxied
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    if fault == "held":
        proxy.hold(sink)  # produce requests swallowed: never written, never answered
    else:
        proxy.refuse(sink, NOT_ENOUGH_REPLICAS)
    values = [f"record {i:02d}".encode() for i in range(20)]
    kafka.produce(source, values, headers=[("contentType", TEXT)])
    args = ("--reversestring=true", "--spring.cloud.stream.kafka.binder.producerProperties.enable.idempotence=false")
    env = {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap}
    app = start_processor(source, sink, *args, group=group, env=env)
    wait_for(lambda: proxy.held or proxy.refused, 60, "a produce request not taken")
    stopped = time.monotonic()
    code = app.stop(timeout=30)
    took = time.monotonic() - stopped
    assert took < 11, f"exit {code} {took:.1f} s after SIGTERM:\n{app.log[-2000:]}"
    assert "Stopped cleanly" in app.log or "Shutdown did not finish" in app.log  # ended by the drain, not a crash
    proxy.allow(sink)
    again = start_processor(source, sink, *args, group=group, env=env)
    wait_for(kafka.caught_up(group, {0: 20}), 90, "everything committed after the restart")
    assert set(by_value(kafka.read(sink, 20, settle=1.0))) == {v[::-1] for v in values}
    assert again.stop() == 0
    figures.add(f"{client}, produce requests {fault}: SIGTERM to exit (exit code)", f"{took:.1f} s ({code})")
    figures.add(f"{client}, produce requests {fault}: records lost after the restart", 0)


def test_a_function_that_returns_none_filters_the_record(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    source, sink, group = kafka.create(names("in")), names("out"), names("g")
    kafka.produce(source, [b"a", b"drop", b"b"], headers=[("contentType", TEXT)])
    app = start_stream_app("filter", source, {"output": sink}, *DLQ, group=group)
    wait_for(kafka.caught_up(group, {0: 3}), 60, "every record committed")
    assert [r.value for r in kafka.read(sink, 2, settle=1.0)] == [b"a", b"b"]
    assert app.metric("polyglot_records_failed_total", binding="input") == 0
    assert "drop" not in app.log
    assert "Traceback" not in app.log
    assert app.stop() == 0


@pytest.mark.parametrize("value", ["abc", "300000abc", "0x493e0"])  # librdkafka itself takes the last two
@pytest.mark.parametrize("key", ["max.poll.interval.ms", "max.request.size", "fetch.max.bytes"])
def test_a_setting_that_is_not_a_number_is_one_line_naming_it(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App], key: str, value: str) -> None:
    app = start_processor(kafka.create(names("in")), names("out"), *DLQ,
                          f"--spring.cloud.stream.kafka.binder.configuration.{key}={value}")
    assert app.wait(60) == 1
    assert re.search(r"Configuration error: .*'(max.poll.interval.ms|max.request.size|message.max.bytes|"
                     r"fetch.max.bytes)'", app.log), app.log
    assert "Traceback" not in app.log


def test_an_address_that_resets_every_connection_is_health_down_and_neither_floods_the_log_nor_stops_the_app(
        proxied: tuple[Kafka, KafkaProxy], names: Callable[[str], str], start_processor: Callable[..., App],
        client: str, figures: Figures) -> None:
    kafka, proxy = proxied
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    app = start_processor(source, sink, "--reversestring=true", group=group,
                          env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": kafka.bootstrap})
    app.wait_for_log("Partitions assigned")
    before = app.log.count("\n")
    proxy.reset(True)  # a load balancer in front of a dead broker
    started = time.monotonic()
    wait_for(lambda: proxy.resets >= 5, 120, "five connections reset")
    wait_for(lambda: "Connection reset by peer" in str(health(app)[1]), 30, "health DOWN naming the resets")
    wait_for(lambda: time.monotonic() - started >= 15, 30, "15 s of resets")  # a window to count reconnects in
    lines, resets, took = app.log.count("\n") - before, proxy.resets, time.monotonic() - started
    assert lines < 60, app.log[-3000:]
    # about one reconnection a second for each of the app's few clients, and the health check's probe every 2 s
    # (librdkafka re-bootstrapping at once with its own back-off: 35 a second)
    assert resets / took < 15, f"{resets} connections in {took:.0f} s"
    proxy.reset(False)
    kafka.produce(source, [b"abc"], headers=[("contentType", TEXT)])
    wait_for(kafka.caught_up(group, {0: 1}), 120, "the record processed once the broker answers again")
    assert [r.value for r in kafka.read(sink, 1)] == [b"cba"]
    assert app.stop() == 0
    figures.add(f"{client}: connections reset in {took:.0f} s, log lines meanwhile", f"{resets}, {lines}")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_batches_compressed_with_each_of_javas_codecs_are_read_and_written(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App], codec: str) -> None:
    """As a Java producer with ``compression.type`` writes them (here librdkafka); kafka-python exited 1 on snappy
    and zstd input, on every restart, and refused lz4 output with a traceback."""
    source, sink = kafka.create(names("in")), kafka.create(names("out"))
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka.bootstrap, "compression.type": codec,
                                         "linger.ms": 50})
    values = [f"record {i:02d}".encode() for i in range(20)]
    for value in values:
        producer.produce(source, value, headers=[("contentType", TEXT)])
    assert producer.flush(30) == 0
    app = start_processor(source, sink, "--reversestring=true",
                          f"--spring.cloud.stream.kafka.binder.producerProperties.compression.type={codec}")
    assert [r.value for r in kafka.read(sink, 20, settle=1.0)] == [v[::-1] for v in values]
    assert "Traceback" not in app.log
    assert app.stop() == 0


def test_a_codec_the_client_does_not_know_is_one_line_naming_it(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App]) -> None:
    app = start_processor(kafka.create(names("in")), names("out"),
                          "--spring.cloud.stream.kafka.binder.producerProperties.compression.type=bogus")
    assert app.wait(60) == 1
    assert re.search(r"Configuration error: .*(compression.*bogus|bogus.*compression|codec: bogus)", app.log), app.log
    assert "Traceback" not in app.log


@pytest.mark.parametrize("codec", ["gzip", "zstd", "snappy", "lz4"])
def test_a_compressed_batch_that_cannot_be_decompressed_stalls_its_partition(
        kafka: Kafka, names: Callable[[str], str], start_processor: Callable[..., App], codec: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A faulty producer's batch: its compressed bytes damaged, its CRC computed over the damage (the broker keeps
    it). kafka-python let the codec library's error end the app, on every restart; librdkafka skipped the batch."""
    source, sink = kafka.create(names("in")), kafka.create(names("out"))
    kafka.produce(source, [b"before"], headers=[("contentType", TEXT)])
    build = DefaultRecordBatchBuilder.build

    def damaged(self: DefaultRecordBatchBuilder) -> bytearray:
        batch = bytearray(build(self))
        for at in range(61, min(len(batch), 71)):  # the compressed records, after the batch's header
            batch[at] ^= 0x5A
        struct.pack_into(">I", batch, 17, crc32c.crc32c(bytes(batch[21:])))
        return batch

    monkeypatch.setattr(DefaultRecordBatchBuilder, "build", damaged)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, compression_type=codec, enable_idempotence=False)
    producer.send(source, b"poison " * 50, headers=[("contentType", TEXT)]).get(10)
    producer.close(5)
    monkeypatch.undo()
    kafka.produce(source, [b"after"], headers=[("contentType", TEXT)])
    app = start_processor(source, sink, "--reversestring=true")
    assert [r.value for r in kafka.read(sink, 1)] == [b"erofeb"]
    wait_for(lambda: "fetched records damaged" in delivery_down(app), 60, "health DOWN naming the damage")
    wait_for(lambda: app.log.count("cannot be read") >= 2, 60, "fetched again after a back-off, still damaged")
    assert [r.value for r in kafka.read(sink, 2, timeout=2, settle=0.5)] == [b"erofeb"]  # nothing past the damage
    assert app.process.poll() is None
    assert "Traceback" not in app.log
    assert app.stop() == 0
