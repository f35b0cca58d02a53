"""Exactly-once's configuration (``transactionIdPrefix``), on both Kafka clients: what the binder refuses or warns
about, the transactional producer's settings and id, and each shape of app with the prefix on Tansu (what a
read_committed consumer sees: ``devkit/committed_reader.py``)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka.record import MemoryRecords

from conftest import Kafka
from devkit.apps import App
from devkit.committed_reader import Connection, PartitionLog, _fetch, read_committed, read_logs
from devkit.waiting import wait_for
from util import kafka_python, kafka_python_settings, librdkafka, librdkafka_settings, transactions
from util.arguments import ConfigError, Properties
from util.bindings import resolve_input

PREFIX_KEY = "spring.cloud.stream.kafka.binder.transaction.transactionIdPrefix"
PREFIX = f"--{PREFIX_KEY}="
TX_CONFIG = "--spring.cloud.stream.kafka.binder.transaction.producer.configuration"
BINDER = "--spring.cloud.stream.kafka.binder"
SETTINGS: dict[str, Any] = {"librdkafka": librdkafka_settings, "kafka-python": kafka_python_settings}
TEXT = [("contentType", b'"text/plain"')]
StartApp = Callable[..., App]


def key(client: str, java: str) -> str:
    """A Java client key as the client's settings spell it."""
    return java if client == "librdkafka" else java.replace(".", "_")


def props(*args: str, environ: dict[str, str] | None = None) -> Properties:
    return Properties(list(args), environ or {})


def tx_settings(client: str, *args: str) -> dict[str, Any]:
    return SETTINGS[client].client_settings(props(PREFIX + "tx-", *args), None, "transaction")


def config_errors(app: App) -> list[str]:
    """The app's configuration error lines, once it exited 1 (no traceback)."""
    assert app.wait(60) == 1, app.log[-3000:]
    assert "Traceback" not in app.log, app.log[-3000:]
    return [line for line in app.log.splitlines() if "Configuration error" in line]


# -- settings (no broker) ----------------------------------------------------------------------------------------
def test_the_transactional_producer_takes_acks_all_and_its_own_configuration_last(client: str) -> None:
    settings = tx_settings(client, f"{BINDER}.configuration.compression.type=lz4",
                           f"{BINDER}.producerProperties.compression.type=snappy",
                           f"{TX_CONFIG}.compression.type=gzip",
                           "--spring.cloud.stream.kafka.bindings.output.producer.configuration.linger.ms=7")
    assert settings["acks"] == "all"  # the binder's default requiredAcks=1 becomes all
    assert settings[key(client, "compression.type")] == "gzip"
    assert settings[key(client, "linger.ms")] == 5  # the binding's own 7 is not the transactional producer's
    assert tx_settings(client, f"{BINDER}.requiredAcks=all")["acks"] == "all"
    assert tx_settings(client, f"{BINDER}.requiredAcks=-1")["acks"] == "all"
    assert tx_settings(client, f"{BINDER}.requiredAcks=1", f"{TX_CONFIG}.acks=all")["acks"] == "all"  # acks wins


@pytest.mark.parametrize(("setting", "named"), [(f"{BINDER}.requiredAcks=1", f"{BINDER[2:]}.requiredAcks"),
                                                (f"{BINDER}.requiredAcks=0", f"{BINDER[2:]}.requiredAcks"),
                                                (f"{BINDER}.producerProperties.acks=0", "acks"),
                                                (f"{TX_CONFIG}.acks=1", "acks")])
def test_acks_other_than_all_are_refused_naming_the_property(client: str, setting: str, named: str) -> None:
    with pytest.raises(ConfigError, match=rf"Property '{re.escape(named)}' is [01], but '{PREFIX_KEY}'"):
        tx_settings(client, setting)


def test_consumers_keep_read_uncommitted_unless_configured(client: str) -> None:
    binding = ["--spring.cloud.stream.bindings.input.destination=t", "--spring.cloud.stream.bindings.input.group=g"]
    plain = props(PREFIX + "tx-", *binding)
    settings = SETTINGS[client].consumer_settings(plain, resolve_input(plain))
    level = settings.get(key(client, "isolation.level"), KafkaConsumer.DEFAULT_CONFIG["isolation_level"])
    assert level == "read_uncommitted"
    given = props(PREFIX + "tx-", *binding, f"{BINDER}.consumerProperties.isolation.level=read_committed")
    assert SETTINGS[client].consumer_settings(given, resolve_input(given))[
        key(client, "isolation.level")] == "read_committed"


@pytest.mark.parametrize(("args", "environ", "expected"), [
    (["--spring.cloud.stream.instanceIndex=3", "--spring.cloud.stream.instanceCount=4"], {}, "3"),
    ([], {"SPRING_CLOUD_STREAM_INSTANCEINDEX": "2"}, "2"),
    (["--spring.cloud.stream.instanceCount=3"], {"INSTANCE_INDEX": "1"}, "1"),  # a deployer's env var (the alias)
    (["--spring.cloud.stream.instanceIndex=0", "--spring.cloud.stream.instanceCount=2"], {}, "0"),
    ([], {}, "pod-7f9c"),  # no index: the pod's name, whatever the count says (a Deployment's pods have none)
    (["--spring.cloud.stream.instanceCount=1"], {}, "pod-7f9c"),
    (["--spring.cloud.stream.instanceCount=2"], {}, "pod-7f9c"),
])
def test_the_suffix_is_the_index_else_the_host_name(
        args: list[str], environ: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", "pod-7f9c")
    properties = props(PREFIX + " tx- ", *args, environ=environ)
    assert transactions.suffix(properties) == expected
    assert transactions.transactional_id(properties, librdkafka.Client(properties), {"output": None}) == (
        "tx-" + expected)


@pytest.mark.parametrize(("args", "environ"), [([PREFIX + "  "], {}), ([PREFIX], {}), ([PREFIX + "${NONE:}"], {}),
                                               ([], {"SPRING_CLOUD_STREAM_KAFKA_BINDER_TRANSACTION_"
                                                     "TRANSACTIONIDPREFIX": ""})])
def test_an_empty_prefix_turns_transactions_off(args: list[str], environ: dict[str, str]) -> None:
    """As Spring's binder (StringUtils.hasText): a way to turn off a prefix set for every app."""
    properties = props(*args, environ=environ)
    assert transactions.transactional_id(properties, librdkafka.Client(properties), {"output": None}) is None


def test_no_prefix_no_transactions_and_a_sink_none(caplog: pytest.LogCaptureFixture) -> None:
    kafka = librdkafka.Client(props())
    assert transactions.transactional_id(props(), kafka, {"output": None}) is None
    with caplog.at_level(logging.INFO):
        assert transactions.transactional_id(props(PREFIX + "tx-"), kafka, {}) is None
    assert f"'{PREFIX_KEY}' is set, but a sink sends nothing" in caplog.text


def test_the_bindings_own_producer_properties_are_warned_about_by_name(caplog: pytest.LogCaptureFixture) -> None:
    bindings = "spring.cloud.stream.kafka.bindings"
    properties = props(PREFIX + "tx-", f"--{bindings}.even.producer.configuration.linger.ms=7",
                       f"--{bindings}.odd.producer.configuration.linger.ms=9")
    with caplog.at_level(logging.WARNING):
        transactions.transactional_id(properties, librdkafka.Client(properties), {"even": None, "odd": None})
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{bindings}.even.producer.configuration.linger.ms" in warning
    assert f"{bindings}.odd.producer.configuration.linger.ms" in warning


# -- apps on real servers ----------------------------------------------------------------------------------------
def test_the_rabbit_binder_refuses_the_prefix_in_one_line(
        names: Callable[[str], str], start_rabbit_app: StartApp) -> None:
    app = start_rabbit_app("processor", names("in"), {"output": names("out")}, PREFIX + "tx-")
    [line] = config_errors(app)
    assert f"Property '{PREFIX_KEY}' is the Kafka binder's" in line


@pytest.mark.parametrize(("setting", "named"), [(f"{BINDER}.requiredAcks=1", f"'{BINDER[2:]}.requiredAcks' is 1"),
                                                (f"{BINDER}.producerProperties.acks=0", "'acks' is 0")])
def test_acks_not_all_stop_a_transactional_app_in_one_line(
        setting: str, named: str, kafka: Kafka, names: Callable[[str], str], start_stream_app: StartApp) -> None:
    app = start_stream_app("processor", kafka.create(names("in")), {"output": names("out")}, PREFIX + "tx-", setting)
    [line] = config_errors(app)
    assert named in line
    assert PREFIX_KEY in line


def test_a_setting_idempotence_forbids_is_a_configuration_error_not_a_broker_one(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartApp) -> None:
    """The transactional producer is idempotent: both clients refuse more than 5 requests in flight."""
    app = start_stream_app("processor", kafka.create(names("in")), {"output": names("out")}, PREFIX + "tx-",
                           f"{TX_CONFIG}.max.in.flight.requests.per.connection=10")
    [line] = config_errors(app)
    assert re.search(r"max.in.flight\S*( must be set <= 5|=10)", line), line
    assert "Broker error" not in app.log


def test_a_random_uuid_prefix_gives_each_start_its_own_transactional_id(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartApp) -> None:
    source, ids = kafka.create(names("in")), []
    for _ in range(2):
        app = start_stream_app("processor", source, {"output": names("out")}, PREFIX + "${random.uuid}-")
        ids.append(app.wait_for_log(r"Transactions: .* transactional\.id '([^']*)'").group(1))
        assert app.stop() == 0
    assert ids[0] != ids[1]
    assert all(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}-.+", found) for found in ids), ids


def open_records(bootstrap: str, *topics: str) -> int:
    return sum(log.open_count for topic in topics for log in read_logs(bootstrap, topic).values())


def test_a_transactional_processor_takes_the_transaction_producer_configuration(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartApp) -> None:
    """compression.type=gzip given to the transactional producer is in its batches' attributes; the binding's own
    linger.ms is named in a warning."""
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    ends = kafka.produce(source, [f"value {i}".encode() for i in range(50)])
    linger = "spring.cloud.stream.kafka.bindings.output.producer.configuration.linger.ms"
    app = start_stream_app("processor", source, {"output": sink}, PREFIX + "tx-", f"{TX_CONFIG}.compression.type=gzip",
                           f"--{linger}=7", group=group)
    wait_for(kafka.caught_up(group, ends), 60, "every record committed")
    assert len(read_committed(kafka.bootstrap, sink, 50)) == 50
    assert codecs(kafka.bootstrap, sink) == {GZIP}
    assert re.search(rf"WARN .*Transactions: the bindings' own .*{re.escape(linger)}", app.log), app.log[-3000:]
    assert app.stop() == 0


GZIP = 1  # a record batch's compression codec (attributes & 7)


def codecs(bootstrap: str, topic: str) -> set[int]:
    """The compression codecs of partition 0's data batches, as written (control batches left out)."""
    host, _, port = bootstrap.rpartition(":")
    broker = Connection(host, int(port))
    try:
        data = wait_for(lambda: _fetch(broker, PartitionLog(topic, 0)), 30, f"a fetch of {topic}")
    finally:
        broker.close()
    records, found = MemoryRecords(bytes(data.records or b"")), set()
    while (batch := records.next_batch()) is not None:
        if not batch.is_control_batch:
            found.add(batch.compression_type)
    return found


def test_a_transactional_source_commits_each_poll(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartApp) -> None:
    """Four calls a poll; the function fails once at 12 (that poll's first three still sent): every number but 12
    committed once, nothing aborted or left open."""
    sink = kafka.create(names("out"))
    app = start_stream_app("source", None, {"output": sink}, PREFIX + "src-", "--count=30", "--fail-at=12",
                           "--spring.integration.poller.fixed-delay=10",
                           "--spring.integration.poller.max-messages-per-poll=4")
    found = read_committed(kafka.bootstrap, sink, 29, timeout=60)
    assert sorted(int(r.value) for r in found) == [n for n in range(1, 31) if n != 12]
    [log] = read_logs(kafka.bootstrap, sink).values()
    assert (log.open_count, log.aborted) == (0, [])
    assert re.search(r"transactional\.id 'src-.+'", app.log)
    assert app.stop() == 0


def test_a_sink_with_the_prefix_says_so_and_commits_its_offsets(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartApp, tmp_path: Path) -> None:
    source, group, out = kafka.create(names("in")), names("g"), tmp_path / "out.txt"
    values = [f"v{i}" for i in range(20)]
    ends = kafka.produce(source, [v.encode() for v in values], headers=TEXT)
    app = start_stream_app("sink", source, {}, PREFIX + "tx-", f"--sink.file={out}", group=group)
    wait_for(kafka.caught_up(group, ends), 60, "every record committed")
    assert out.read_text().splitlines() == values
    assert re.search(rf"INFO.*'{PREFIX_KEY}' is set, but a sink sends nothing", app.log), app.log[-3000:]
    assert "transactional.id" not in app.log
    assert app.stop() == 0


def test_a_filter_that_drops_a_whole_batch_commits_its_offsets_without_a_transaction(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartApp) -> None:
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    ends = kafka.produce(source, [b"drop"] * 30)
    app = start_stream_app("filter", source, {"output": sink}, PREFIX + "tx-", group=group)
    wait_for(kafka.caught_up(group, ends), 60, "the dropped records' offsets committed")
    assert [log.high_watermark for log in read_logs(kafka.bootstrap, sink).values()] == [0]  # not even a marker
    ends = kafka.produce(source, [b"drop", b"keep"])
    wait_for(kafka.caught_up(group, ends), 60, "the kept record's offset committed")
    assert [r.value for r in read_committed(kafka.bootstrap, sink, 1)] == [b"keep"]
    assert open_records(kafka.bootstrap, sink) == 0
    assert app.stop() == 0


BATCH = ("--spring.cloud.stream.bindings.input.consumer.batch-mode=true",
         "--spring.cloud.stream.bindings.input.consumer.maxAttempts=2",
         "--spring.cloud.stream.bindings.input.consumer.backOffInitialInterval=10",
         "--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true")


def test_batch_mode_commits_each_output_and_a_dead_letter_once(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: StartApp) -> None:
    """``poison`` fails alone (BatchError), ``boom`` its whole batch: each record committed once, sent or
    dead-lettered, in its batch's transaction."""
    values = [f"v{i:03d}".encode() for i in range(300)]
    values[100], values[250] = b"poison", b"boom"
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    dlq = kafka.create(f"error.{source}.{group}")
    ends = kafka.produce(source, values, headers=TEXT)
    app = start_stream_app("batch", source, {"output": sink}, *BATCH, PREFIX + "tx-", group=group)
    wait_for(kafka.caught_up(group, ends), 90, "every record committed")
    dead = [r.value for r in read_committed(kafka.bootstrap, dlq, 2)]
    out = read_committed(kafka.bootstrap, sink, len(values) - len(dead))
    assert {b"poison", b"boom"} <= set(dead)
    assert Counter(r.value.decode().split("|")[0][::-1].encode() for r in out) + Counter(dead) == Counter(values)
    assert open_records(kafka.bootstrap, sink, dlq) == 0
    assert app.stop() == 0


def test_idempotence_turned_off_is_refused_for_the_transactional_producer(client: str) -> None:
    properties = props(PREFIX + "tx-", f"{BINDER}.transaction.producer.configuration.enable.idempotence=false")
    transport = librdkafka.Client(properties) if client == "librdkafka" else kafka_python.Client(properties)
    with pytest.raises(ConfigError, match=r"'enable\.idempotence' is false"):
        transport.transactional("tx-0", None)
