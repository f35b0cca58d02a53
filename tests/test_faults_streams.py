"""The stream apps' faults on a real broker: kill -9, a lost instance, a broker restart, abusive payloads, a soak."""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)
from kafka.future import Future
from test_stream_apps import expected, latest_assignment, read_outputs, sinks_for

from conftest import SOAK_SECONDS, STREAM_APPS, Figures, Kafka, client_arg
from devkit.apps import App
from devkit.tansu import Tansu, free_port
from devkit.waiting import wait_for
from util.kafka_python import about_the_record, outcome
from util.settle import Delivery

StartStreamApp = Callable[..., App]
TICK = 1 / 100  # /proc/<pid>/stat counts CPU time in clock ticks of 10 ms
POLL_BATCH = 500  # max.poll.records: what one poll hands the loop, across its partitions


class Sent:
    """A record as the binder sees one: topic, partition, offset."""

    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = "t", 0, offset


def test_refusals_about_the_record_take_its_error_path_and_the_brokers_rewind() -> None:
    refused, lost, acl = (MessageSizeTooLargeError("too large"), KafkaConnectionError("broker gone"),
                          TopicAuthorizationFailedError("no ACL yet"))
    assert [about_the_record(e) for e in (refused, TypeError("a header"), ValueError("no key, no value"))] == [
        True, True, True]
    assert [about_the_record(e) for e in (lost, acl, KafkaTimeoutError("no metadata"))] == [False, False, False]
    acknowledged, failed, unfinished = Future().success(0), Future().failure(acl), Future()
    outcomes = [Delivery(Sent(0), acknowledged).failure(outcome), Delivery(Sent(1), failed).failure(outcome),
                Delivery(Sent(2)).failure(outcome), Delivery(Sent(3), refused=refused).failure(outcome)]
    assert outcomes == [None, acl, None, refused]
    assert isinstance(Delivery(Sent(4), unfinished).failure(outcome), KafkaTimeoutError)  # sent again


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK


def received(app: App) -> float:
    return app.metric("polyglot_records_received_total", binding="input")


@pytest.mark.parametrize("kind", sorted(STREAM_APPS))
def test_kill_9_mid_stream_then_restart_loses_nothing(
        kind: str, kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp,
        figures: Figures) -> None:
    count, partitions = 50_000, 2
    source, sinks, group = kafka.create(names("in"), partitions), sinks_for(kind, names), names("g")
    values = [f"11/23/26 10:00:00 #{i:05d}".encode() for i in range(count)]
    ends = kafka.produce(source, values, partition=lambda i: i % partitions)
    first = start_stream_app(kind, source, sinks, "--reversestring=true", group=group)
    wait_for(lambda: received(first) >= count // 4, 90, "a quarter of the records")
    first.process.kill()
    first.process.wait(10)
    committed = sum(kafka.committed(group).values())
    assert committed < count, "kill -9 should land in the middle of the records"

    second = start_stream_app(kind, source, sinks, "--reversestring=true", group=group)
    wait_for(kafka.caught_up(group, ends), 120, "the restarted app to commit everything")
    want = [expected(kind, v) for v in values]
    found = read_outputs(kafka, sinks, count, want)
    assert set(found) == set(want), "records lost"
    duplicates = len(found) - count
    assert 0 <= duplicates <= POLL_BATCH * partitions
    assert second.stop() == 0
    figures.add(f"{kind}: records, partitions", f"{count}, {partitions}")
    figures.add(f"{kind}: committed when killed", committed)
    figures.add(f"{kind}: lost", count - len(set(found) & set(want)))
    figures.add(f"{kind}: duplicates (bound: {POLL_BATCH} a poll, {POLL_BATCH * partitions} allowed)", duplicates)


@pytest.mark.parametrize("kind", sorted(STREAM_APPS))
def test_survivor_takes_over_the_partitions_of_an_instance_killed_with_kill_9(
        kind: str, kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp,
        figures: Figures) -> None:
    count, partitions = 20_000, 4
    source, sinks, group = kafka.create(names("in"), partitions), sinks_for(kind, names), names("g")
    survivor = start_stream_app(kind, source, sinks, "--reversestring=true", group=group)
    survivor.wait_for_log(r"Partitions assigned: \S")
    victim = start_stream_app(kind, source, sinks, "--reversestring=true", group=group)
    for app in (survivor, victim):
        wait_for(lambda app=app: latest_assignment(app).count(source) == 2, 60, "a 2-partition share each")
    values = [f"11/23/26 10:00:00 #{i:05d}".encode() for i in range(count)]
    ends = kafka.produce(source, values, partition=lambda i: i % partitions)
    wait_for(lambda: received(victim) > 0, 60, "the victim to take records")
    victim.process.kill()
    killed = time.monotonic()
    wait_for(lambda: latest_assignment(survivor).count(source) == partitions, 60, "the survivor to take over")
    takeover = time.monotonic() - killed
    wait_for(kafka.caught_up(group, ends), 120, "the survivor to commit everything")
    done = time.monotonic() - killed
    want = {expected(kind, v) for v in values}
    found = read_outputs(kafka, sinks, count, want)
    assert set(found) == want, "records lost"
    assert survivor.stop() == 0
    figures.add(f"{kind}: takeover (kill -9 to all {partitions} partitions assigned to the survivor)",
                f"{takeover:.1f} s with session.timeout.ms=6000")
    figures.add(f"{kind}: kill -9 to everything committed", f"{done:.1f} s")
    figures.add(f"{kind}: lost, duplicates", f"0, {len(found) - count}")


def test_sigterm_while_no_broker_answers_stops_at_once(start_app: Callable[..., App], client: str,
                                                      figures: Figures) -> None:
    bindings = ["--spring.cloud.stream.bindings.input.destination=in",
                "--spring.cloud.stream.bindings.output.destination=out"]
    app = start_app(STREAM_APPS["processor"][0], ["--server.port=0", client_arg(client), *bindings],
                    {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": f"127.0.0.1:{free_port()}"})
    assert health(app)[0] == 503  # the actuator answers, DOWN, while the client keeps trying
    signalled = time.monotonic()
    assert app.stop(timeout=10) == 0
    figures.add(f"{client}: SIGTERM to exit while connecting to an unreachable broker",
                f"{time.monotonic() - signalled:.1f} s")
    assert "Stopped while connecting to the brokers" in app.log


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Tansu]:
    """A broker of the test's own, free to stop and start."""
    tansu = Tansu(tmp_path / "own-tansu.log").start()
    yield tansu
    tansu.stop()


def health(app: App) -> tuple[int, dict]:
    status, body = app.get("/actuator/health")
    return status, json.loads(body) if status else {}


@pytest.mark.parametrize("kind", sorted(STREAM_APPS))
def test_broker_stopped_for_10_s_then_started_again(
        kind: str, own_broker: Tansu, names: Callable[[str], str], start_stream_app: StartStreamApp,
        figures: Figures) -> None:
    kafka = Kafka(own_broker.bootstrap)
    source, sinks, group = names("in"), sinks_for(kind, names), names("g")
    try:
        for topic in (source, *sinks.values()):
            kafka.create(topic)
        app = start_stream_app(kind, source, sinks, "--reversestring=true", group=group,
                               env={"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": own_broker.bootstrap})
        before = [f"11/23/26 10:00:00 #{i:03d}".encode() for i in range(100)]
        wait_for(kafka.caught_up(group, kafka.produce(source, before)), 60, "the records before the outage")
        assert health(app)[0] == 200

        cpu = cpu_seconds(app.process.pid)
        own_broker.stop()
        stopped = time.monotonic()
        _, body = wait_for(lambda: (h := health(app))[0] == 503 and h, 10, "health DOWN")
        down_after = time.monotonic() - stopped
        assert body["components"]["broker"]["status"] == "DOWN"
        with pytest.raises(subprocess.TimeoutExpired):  # the outage: the app must neither exit nor spin
            app.process.wait(10 - (time.monotonic() - stopped))
        outage_cpu = cpu_seconds(app.process.pid) - cpu
        outage = time.monotonic() - stopped
        assert outage_cpu < 0.25 * outage, f"{outage_cpu:.1f} s of CPU in a {outage:.0f} s outage"

        own_broker.start()
        started = time.monotonic()
        for topic in (source, *sinks.values()):  # the test broker lost everything: recreate the topics
            with contextlib.suppress(TopicAlreadyExistsError):
                kafka.create(topic)
        wait_for(lambda: health(app)[0] == 200, 30, "health UP")
        up_after = time.monotonic() - started
        after = [f"11/23/26 10:00:10 #{i:03d}".encode() for i in range(100)]
        kafka.produce(source, after)
        found = wait_for(lambda: set(read_outputs(kafka, sinks, 1)) >= {expected(kind, v) for v in after}, 90,
                         "the records produced after the restart")
        resumed = time.monotonic() - started
        assert found
        assert app.stop() == 0
    finally:
        kafka.close()
    figures.add(f"{kind}: health DOWN after the broker stopped", f"{down_after:.1f} s")
    figures.add(f"{kind}: CPU used during the {outage:.0f} s outage", f"{outage_cpu:.2f} s "
                f"({100 * outage_cpu / outage:.0f}% of a core)")
    figures.add(f"{kind}: health UP after the broker started", f"{up_after:.1f} s")
    figures.add(f"{kind}: new records processed after the broker started", f"{resumed:.1f} s")


TEXT = b'"text/plain"'
BIG = 1_000_000  # "1 MB": fits the default max.request.size (1 MiB) with its headers
HUGE = 2 * 1024 * 1024  # more than max.request.size: the output cannot be sent
# case: (payload, contentType header or None for the binding's default, extra headers)
PAYLOADS: dict[str, tuple[bytes, bytes | None, int]] = {
    "empty": (b"", TEXT, 0),
    "1 MB": (b"x" * (BIG - 1) + b"4", TEXT, 0),
    "2 MiB": (b"y" * (HUGE - 1) + b"6", TEXT, 0),
    "invalid UTF-8": (b"\xff\xfe 10:00:01", TEXT, 0),
    "NUL bytes": (b"10:00\x0002", TEXT, 0),
    "10,000 headers": (b"10:00:03", TEXT, 10_000),
    "binary contentType": (b"\x00\x01\xfe\xff7", b'"application/octet-stream"', 0),
    "undecodable contentType header": (b"10:00:05", b"\xff\xfe", 0),
}
# What each app does with each case: processed to a binding, or the dead-letter topic.
PATHS = {
    "processor": {"empty": "output", "1 MB": "output", "2 MiB": "dlq", "invalid UTF-8": "dlq",
                  "NUL bytes": "output", "10,000 headers": "output", "binary contentType": "output",
                  "undecodable contentType header": "dlq"},
    "router": {"empty": "dlq", "1 MB": "even", "2 MiB": "dlq", "invalid UTF-8": "dlq", "NUL bytes": "even",
               "10,000 headers": "odd", "binary contentType": "dlq", "undecodable contentType header": "dlq"},
}


def processed(kind: str, case: str) -> bytes:
    payload, content_type, _ = PAYLOADS[case]
    if kind == "router":
        return expected(kind, payload)[1]
    return payload if content_type == b'"application/octet-stream"' else payload.decode()[::-1].encode()


@pytest.mark.parametrize("kind", sorted(STREAM_APPS))
def test_abusive_payloads_take_their_documented_path_and_the_app_keeps_running(
        kind: str, kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp,
        figures: Figures) -> None:
    source, sinks, group = kafka.create(names("in")), sinks_for(kind, names), names("g")
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=False,
                             max_request_size=4 * HUGE)  # the upstream app allows big records
    try:
        for case, (payload, content_type, extra) in PAYLOADS.items():
            headers = [("case", case.encode()), *([("contentType", content_type)] if content_type else []),
                       *((f"x-abuse-{i:05d}", b"0123456789abcdef") for i in range(extra))]
            producer.send(source, payload, headers=headers)
        producer.send(source, b"10:00:08", headers=[("case", b"after"), ("contentType", TEXT)])
        producer.flush(60)
    finally:
        producer.close(5)
    app = start_stream_app(kind, source, sinks, "--reversestring=true", group=group, env={
        "SPRING_CLOUD_STREAM_KAFKA_BINDINGS_INPUT_CONSUMER_ENABLEDLQ": "true",
        "SPRING_CLOUD_STREAM_BINDINGS_INPUT_CONSUMER_BACKOFFINITIALINTERVAL": "100"})
    wait_for(kafka.caught_up(group, {0: len(PAYLOADS) + 1}), 120, "every record to be committed")
    where: dict[str, tuple[str, Any]] = {}
    dlq = f"error.{source}.{group}"
    for binding, topic in [*sinks.items(), ("dlq", dlq)]:
        for record in kafka.read(topic, 0, timeout=0, settle=2.0):
            where[dict(record.headers)["case"].decode()] = (binding, record)
    after = "output" if kind == "processor" else "even"
    assert {case: binding for case, (binding, _) in where.items()} == {**PATHS[kind], "after": after}
    for case, (binding, record) in where.items():
        if case == "after":
            continue
        if binding == "dlq":
            assert record.value == PAYLOADS[case][0], case
            assert dict(record.headers)["x-original-topic"] == source.encode()
        else:
            assert record.value == processed(kind, case), case
    assert sum(key.startswith("x-abuse-") for key, _ in where["10,000 headers"][1].headers) == 10_000
    assert app.process.poll() is None
    assert health(app)[0] == 200
    assert app.stop() == 0
    for case in [*PAYLOADS, "after"]:
        binding, record = where[case]
        reason = dict(record.headers).get("x-exception-fqcn", b"").decode()
        figures.add(f"{kind}: {case}", f"dead-lettered ({reason})" if reason else f"processed to {binding}")


def memory_and_files(pid: int) -> tuple[float, int]:
    """Resident memory (MiB) and open file descriptors of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    return rss_kib / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.mark.parametrize("kind", sorted(STREAM_APPS))
@pytest.mark.timeout(SOAK_SECONDS + 180)
def test_soak_at_a_steady_rate_grows_neither_memory_nor_files(
        kind: str, kafka: Kafka, names: Callable[[str], str], start_stream_app: StartStreamApp,
        figures: Figures) -> None:
    rate, tick = 1000, 0.1  # records a second, sent in bursts every tick
    source, sinks, group = kafka.create(names("in"), 2), sinks_for(kind, names), names("g")
    app = start_stream_app(kind, source, sinks, "--reversestring=true", group=group)
    app.wait_for_log(r"Partitions assigned: \S")
    samples: list[tuple[float, float, int]] = []
    pacing = threading.Event()  # never set: waiting on it paces the load
    started = time.monotonic()
    sent, ends = 0, {}
    while (elapsed := time.monotonic() - started) < SOAK_SECONDS:
        burst = [f"11/23/26 10:00:00 #{sent + i:07d}".encode() for i in range(int(rate * tick))]
        for partition, end in kafka.produce(source, burst, partition=lambda i, n=sent: (n + i) % 2).items():
            ends[partition] = max(ends.get(partition, 0), end)
        sent += len(burst)
        if not samples or elapsed - samples[-1][0] >= 1.0:
            samples.append((elapsed, *memory_and_files(app.process.pid)))
        pacing.wait(max(0.0, started + sent / rate - time.monotonic()))
    wait_for(kafka.caught_up(group, ends), 60, "the soak's records to be committed")
    assert app.stop() == 0

    def window(start: float, end: float) -> list[tuple[float, float, int]]:
        return [s for s in samples if start * SOAK_SECONDS <= s[0] < end * SOAK_SECONDS]

    warm, last = window(0.25, 0.5), window(0.75, 1.01)  # the first quarter is warm-up
    rss_warm, rss_last = statistics.median(s[1] for s in warm), statistics.median(s[1] for s in last)
    # medians: the health check's probe of the brokers holds a socket for a moment every 2 s
    fds_warm, fds_last = statistics.median(s[2] for s in warm), statistics.median(s[2] for s in last)
    assert rss_last - rss_warm < 5.0, f"RSS grew from {rss_warm:.1f} to {rss_last:.1f} MiB"
    assert fds_last <= fds_warm, f"open files grew from {fds_warm} to {fds_last}"
    figures.add(f"{kind}: records, rate, length", f"{sent}, {rate}/s, {SOAK_SECONDS:g} s")
    figures.add(f"{kind}: RSS first sample, median of the 2nd quarter, of the last quarter, peak",
                f"{samples[0][1]:.1f}, {rss_warm:.1f}, {rss_last:.1f}, {max(s[1] for s in samples):.1f} MiB")
    figures.add(f"{kind}: open files, median of the 2nd quarter, of the last quarter", f"{fds_warm:g}, {fds_last:g}")
