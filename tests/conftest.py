"""Fixtures: a real Tansu broker for the session, recipe processes, Kafka helpers."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

ROOT = Path(__file__).resolve().parent.parent
# Recipe scripts import their own ``util``; the copies are identical (a test says so), the processor's is used.
sys.path[:0] = [str(ROOT), str(ROOT / "polyglot-python-processor"), str(ROOT / "polyglot-python-app")]

from devkit.apps import App  # noqa: E402
from devkit.tansu import Tansu  # noqa: E402
from devkit.topics import read_topic  # noqa: E402

STREAM_APPS = {"processor": ("polyglot-python-processor/python_processor.py", ("output",)),
               "router": ("polyglot-python-app/python_router_app.py", ("even", "odd"))}
# Tansu takes half the session timeout to complete a group join: keep it short in tests.
FAST_GROUPS = ("--spring.cloud.stream.kafka.binder.consumerProperties.session.timeout.ms=6000",
               "--spring.cloud.stream.kafka.binder.consumerProperties.heartbeat.interval.ms=2000")


class Kafka:
    """Test-side producer, reader and admin on one broker."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: KafkaProducer | None = None

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            # The test broker forgets producer ids on restart: no idempotence in tests.
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=False, acks="all",
                                           linger_ms=5)
        return self._producer

    def create(self, topic: str, partitions: int = 1) -> str:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(topic, partitions, -1)])
        finally:
            admin.close()
        return topic

    def produce(self, topic: str, values: Sequence[bytes], headers: list[tuple[str, bytes]] | None = None,
                partition: int | Callable[[int], int] | None = None) -> dict[int, int]:
        """Send and flush; returns the expected end offset of each partition written."""
        futures = [self.producer.send(topic, value, headers=headers,
                                      partition=partition(i) if callable(partition) else partition)
                   for i, value in enumerate(values)]
        self.producer.flush(60)
        ends: dict[int, int] = {}
        for future in futures:
            meta = future.get(10)
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends

    def read(self, topic: str, count: int, timeout: float = 60, settle: float = 0.0) -> list[Any]:
        return read_topic(self.bootstrap, topic, count, timeout, settle)

    def committed(self, group: str) -> dict[int, int]:
        """The group's committed offset per partition (all topics of the test are distinct)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            offsets = admin.list_group_offsets(group).get(group, {})
        finally:
            admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    def caught_up(self, group: str, ends: dict[int, int]) -> Callable[[], bool]:
        """A condition: the group committed at least ``ends`` (partition -> offset)."""
        return lambda: all(self.committed(group).get(p, -1) >= end for p, end in ends.items())

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(5)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    tansu = Tansu(tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    yield tansu
    tansu.stop()


@pytest.fixture
def kafka(broker: Tansu) -> Iterator[Kafka]:
    client = Kafka(broker.bootstrap)
    yield client
    client.close()


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Topic and group names unique to the test."""
    tag = f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    return lambda kind: f"{kind}.{tag}"


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Start recipe scripts; every process still running at the end of the test is killed."""
    started: list[App] = []

    def start(script: str, args: Sequence[str] = (), env: dict[str, str] | None = None) -> App:
        app = App(script, args, env, tmp_path / f"app-{len(started)}.log")
        started.append(app)
        return app

    yield start
    for app in started:
        app.kill()


@pytest.fixture
def start_stream_app(broker: Tansu, start_app: Callable[..., App]) -> Callable[..., App]:
    """A stream app as SCDF's Kubernetes deployer starts it: exec-style args, brokers from the env.

    ``sinks`` maps output bindings to topics; None values (and a None source or group) are left out.
    """

    def start(kind: str, source: str | None, sinks: dict[str, str | None], *extra: str, group: str | None = "s",
              env: dict[str, str] | None = None) -> App:
        args = ["--server.port=0", *FAST_GROUPS, *extra]
        bindings = {"input.destination": source, "input.group": group,
                    **{f"{name}.destination": topic for name, topic in sinks.items()}}
        args += [f"--spring.cloud.stream.bindings.{key}={value}" for key, value in bindings.items() if value]
        environ = {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": broker.bootstrap, **(env or {})}
        return start_app(STREAM_APPS[kind][0], args, environ)

    return start


@pytest.fixture
def start_processor(start_stream_app: Callable[..., App]) -> Callable[..., App]:
    def start(source: str | None, sink: str | None, *extra: str, **kwargs: Any) -> App:
        return start_stream_app("processor", source, {"output": sink}, *extra, **kwargs)

    return start
