"""Fixtures: a real Tansu broker for the session, recipe processes, Kafka helpers."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

ROOT = Path(__file__).resolve().parent.parent
# Recipe scripts import their own ``util``; the copies are identical (a test says so), the processor's is used.
sys.path[:0] = [str(ROOT), str(ROOT / "polyglot-python-processor"), str(ROOT / "polyglot-python-app"),
                str(ROOT / "polyglot-python-task")]

import util  # noqa: E402

# The shared modules come from the processor's copy; the task's own modules (datasource, task_status) from its folder.
util.__path__.append(str(ROOT / "polyglot-python-task" / "util"))

from devkit.apps import App  # noqa: E402
from devkit.databases import MariaDB, PostgreSQL  # noqa: E402
from devkit.kafka_proxy import KafkaProxy  # noqa: E402
from devkit.rabbitmq import RabbitMQ  # noqa: E402
from devkit.tansu import Tansu, free_port  # noqa: E402
from devkit.topics import read_topic  # noqa: E402

STREAM_APPS = {"processor": ("polyglot-python-processor/python_processor.py", ("output",)),
               "router": ("polyglot-python-app/python_router_app.py", ("even", "odd"))}
# The other two shapes, as a user writes them (tests/steps, run on the processor's util).
STEPS = {"source": ("tests/steps/python_source.py", ("output",)), "sink": ("tests/steps/python_sink.py", ()),
         "filter": ("tests/steps/python_filter.py", ("output",)),
         "flaky": ("tests/steps/python_flaky.py", ("output",)),
         "invoice": ("tests/steps/python_invoice.py", ("output",)),
         "shapes": ("tests/steps/python_shapes.py", ("output",)),
         "batch": ("tests/steps/python_batch.py", ("output",)),
         "batch-router": ("tests/steps/python_batch_router.py", ("even", "odd")),
         "batch-edges": ("tests/steps/python_batch_edges.py", ("output",)),
         "batch-sink": ("tests/steps/python_batch_sink.py", ()),
         "gated-sink": ("tests/steps/python_gated_sink.py", ())}
# Tansu takes half the session timeout to complete a group join: keep it short in tests.
FAST_GROUPS = ("--spring.cloud.stream.kafka.binder.consumerProperties.session.timeout.ms=6000",
               "--spring.cloud.stream.kafka.binder.consumerProperties.heartbeat.interval.ms=2000")


# Every stream test runs on each Kafka client the binder supports (the default first); one marked
# ``one_client`` (what it checks does not touch the client) runs on the default only.
CLIENTS = ("librdkafka", "kafka-python")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "client" in metafunc.fixturenames:
        one = metafunc.definition.get_closest_marker("one_client") is not None
        metafunc.parametrize("client", CLIENTS[:1] if one else CLIENTS)


def client_arg(client: str) -> str:
    return f"--spring.cloud.stream.kafka.binder.client={client}"


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

    def read(self, topic: str, count: int, timeout: float = 60, settle: float = 0.0,
             until: Callable[[list[Any]], bool] | None = None) -> list[Any]:
        return read_topic(self.bootstrap, topic, count, timeout, settle, until)

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
def proxied(tmp_path: Path) -> Iterator[tuple[Kafka, KafkaProxy]]:
    """A broker of the test's own behind a proxy that refuses, holds or corrupts (``devkit/kafka_proxy.py``);
    apps reach it at ``kafka.bootstrap`` (the proxy)."""
    port = free_port()
    tansu = Tansu(tmp_path / "proxied-tansu.log", advertised=port).start()
    proxy = KafkaProxy(tansu.port, port).start()
    kafka = Kafka(tansu.bootstrap)
    yield kafka, proxy
    kafka.close()
    proxy.stop()
    tansu.stop()


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Topic and group names unique to the test."""
    tag = f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    return lambda kind: f"{kind}.{tag}"


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Start recipe scripts; every process still running at the end of the test is killed."""
    started: list[App] = []

    def start(script: str, args: Sequence[str] = (), env: dict[str, str] | None = None,
              cwd: Path | None = None) -> App:
        if script.startswith("tests/steps/"):
            env = {"PYTHONPATH": str(ROOT / "polyglot-python-processor"), **(env or {})}
        app = App(script, args, env, tmp_path / f"app-{len(started)}.log", cwd=cwd)
        started.append(app)
        return app

    yield start
    for app in started:
        app.kill()


GROUP = "the test's own group"  # start_stream_app's default: no group is shared between tests


@pytest.fixture
def start_stream_app(broker: Tansu, start_app: Callable[..., App], names: Callable[[str], str],
                     client: str) -> Callable[..., App]:
    """A stream app as SCDF's Kubernetes deployer starts it, on the test's Kafka client: exec-style args,
    brokers from the env.

    ``sinks`` maps output bindings to topics; None values (and a None source or group) are left out. By
    default the group is the test's own (``names("s")``): the test broker holds a member that left in the
    middle of a group join for up to max.poll.interval.ms, which must not hold up the next test.
    """

    def start(kind: str, source: str | None, sinks: dict[str, str | None], *extra: str, group: str | None = GROUP,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> App:
        group = names("s") if group == GROUP else group
        args = ["--server.port=0", client_arg(client), *FAST_GROUPS, *extra]
        bindings = {"input.destination": source, "input.group": group,
                    **{f"{name}.destination": topic for name, topic in sinks.items()}}
        args += [f"--spring.cloud.stream.bindings.{key}={value}" for key, value in bindings.items() if value]
        environ = {"SPRING_CLOUD_STREAM_KAFKA_BINDER_BROKERS": broker.bootstrap, **(env or {})}
        return start_app({**STREAM_APPS, **STEPS}[kind][0], args, environ, cwd)

    return start


@pytest.fixture
def start_processor(start_stream_app: Callable[..., App]) -> Callable[..., App]:
    def start(source: str | None, sink: str | None, *extra: str, **kwargs: Any) -> App:
        return start_stream_app("processor", source, {"output": sink}, *extra, **kwargs)

    return start


# -- RabbitMQ ------------------------------------------------------------------------------------
class Rabbit:
    """Publish to and read from a RabbitMQ node as a Spring app beside ours would, with pika."""

    def __init__(self, server: RabbitMQ) -> None:
        import pika

        self.server, self.pika = server, pika
        self.connection = pika.BlockingConnection(pika.URLParameters(server.url))
        self.channel = self.connection.channel()

    def publish(self, exchange: str, bodies: Sequence[bytes], content_type: str | None = "text/plain",
                headers: dict[str, Any] | None = None, routing_key: str | None = None) -> None:
        """As Spring's producer: persistent, routing key = the destination."""
        properties = self.pika.BasicProperties(content_type=content_type, delivery_mode=2, headers=headers)
        for body in bodies:
            self.channel.basic_publish(exchange, routing_key or exchange, body, properties)

    def declare_group(self, destination: str, group: str, arguments: dict[str, Any] | None = None) -> str:
        """The durable group queue a Spring consumer of ``destination`` declares (bound with ``#``)."""
        queue = f"{destination}.{group}"
        self.channel.exchange_declare(destination, "topic", durable=True)
        self.channel.queue_declare(queue, durable=True, arguments=arguments)
        self.channel.queue_bind(queue, destination, "#")
        return queue

    def read(self, queue: str, count: int, timeout: float = 60, settle: float = 0.0) -> list[tuple[Any, Any, bytes]]:
        """``(method, properties, body)`` of the queue's messages (acknowledged), until ``count`` or ``timeout``."""
        got: list[tuple[Any, Any, bytes]] = []
        deadline = time.monotonic() + timeout
        settle_until = None
        while time.monotonic() < deadline:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is not None:
                got.append((method, properties, body))
                continue
            if len(got) >= count:
                settle_until = settle_until or time.monotonic() + settle
                if time.monotonic() >= settle_until:
                    break
            self.connection.sleep(0.05)
        return got

    def depth(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the node may be gone already
            self.connection.close()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    server = RabbitMQ(tmp_path_factory.mktemp("rabbitmq") / "rabbitmq.log").start()
    yield server
    server.remove()


@pytest.fixture
def rabbit(rabbitmq: RabbitMQ) -> Iterator[Rabbit]:
    client = Rabbit(rabbitmq)
    yield client
    client.close()


@pytest.fixture
def start_rabbit_app(rabbitmq: RabbitMQ, start_app: Callable[..., App], names: Callable[[str], str]) -> \
        Callable[..., App]:
    """A stream app on the rabbit binder, as Data Flow's Kubernetes deployer starts it (exec-style args)."""

    def start(kind: str, source: str | None, sinks: dict[str, str | None], *extra: str, group: str | None = GROUP,
              env: dict[str, str] | None = None, server: RabbitMQ | None = None) -> App:
        group = names("s") if group == GROUP else group
        args = ["--server.port=0", *extra]
        bindings = {"input.destination": source, "input.group": group,
                    **{f"{name}.destination": topic for name, topic in sinks.items()}}
        args += [f"--spring.cloud.stream.bindings.{key}={value}" for key, value in bindings.items() if value]
        port = (server or rabbitmq).port
        environ = {"SPRING_RABBITMQ_HOST": "127.0.0.1", "SPRING_RABBITMQ_PORT": str(port), **(env or {})}
        return start_app({**STREAM_APPS, **STEPS}[kind][0], args, environ)

    return start


# -- task databases ------------------------------------------------------------------------------
# The project's fixtures when shared/ sits beside the clone (as in CI), else the identical copy the task ships.
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures" / "spring-cloud-task"
FIXTURES = SHARED_FIXTURES if SHARED_FIXTURES.is_dir() else ROOT / "polyglot-python-task" / "util" / "schema"
TASK_SCRIPT = "polyglot-python-task/python_task.py"
COLUMNS = ("TASK_EXECUTION_ID", "START_TIME", "END_TIME", "TASK_NAME", "EXIT_CODE", "EXIT_MESSAGE", "ERROR_MESSAGE",
           "LAST_UPDATED", "EXTERNAL_EXECUTION_ID", "PARENT_EXECUTION_ID")


def task_ddl(schema: str, prefix: str = "TASK_") -> str:
    """The Spring Cloud Task DDL of ``schema`` (mysql, mariadb, postgresql) with its table prefix replaced."""
    ddl = (FIXTURES / f"schema-{schema}.sql").read_text()
    if prefix != "TASK_":
        ddl = re.sub(r"\bTASK_(EXECUTION_PARAMS|EXECUTION|TASK_BATCH|SEQ|LOCK|EXEC_PARAMS_FK|EXEC_BATCH_FK)\b",
                     lambda m: prefix + m.group(1), ddl)
    return ddl


@dataclass
class TaskDatabase:
    """One database of a real server with the task tables, and what a launch passes to reach it."""

    server: MariaDB | PostgreSQL
    name: str
    user: str
    password: str
    prefix: str = "TASK_"
    scheme: str | None = None  # the JDBC scheme, if not the server's own (jdbc:mysql: for MariaDB)

    @property
    def url(self) -> str:
        return f"jdbc:{self.scheme or self.server.scheme}://127.0.0.1:{self.server.port}/{self.name}?connectTimeout=5"

    @property
    def args(self) -> list[str]:
        return [f"--spring.datasource.url={self.url}", f"--spring.datasource.username={self.user}",
                f"--spring.datasource.password={self.password}",
                f"--spring.cloud.task.tablePrefix={self.prefix}"]

    def table(self, name: str) -> str:
        table = self.prefix + name
        return table.lower() if isinstance(self.server, PostgreSQL) else table

    def insert_execution(self, execution_id: int, name: str, external_id: str | None = None) -> None:
        """What Data Flow writes before a launch: the id, the name, LAST_UPDATED; then the pod name."""
        external = "NULL" if external_id is None else f"'{external_id}'"
        self.server.admin(f"INSERT INTO {self.table('EXECUTION')} (TASK_EXECUTION_ID, TASK_NAME, LAST_UPDATED, "
                          f"EXTERNAL_EXECUTION_ID) VALUES ({execution_id}, '{name}', CURRENT_TIMESTAMP, {external})",
                          database=self.name)

    def rows(self) -> dict[int, dict[str, Any]]:
        rows = self.server.admin(f"SELECT {', '.join(COLUMNS)} FROM {self.table('EXECUTION')}", database=self.name)
        return {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in rows}

    def params(self, execution_id: int) -> list[str]:
        rows = self.server.admin(f"SELECT TASK_PARAM FROM {self.table('EXECUTION_PARAMS')} "
                                 f"WHERE TASK_EXECUTION_ID = {execution_id}", database=self.name)
        return [row[0] for row in rows]


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    server = MariaDB().start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    server = PostgreSQL().start()
    yield server
    server.remove()


@pytest.fixture(params=["mariadb", "postgresql"])
def server(request: pytest.FixtureRequest) -> MariaDB | PostgreSQL:
    return request.getfixturevalue(request.param)


def new_task_db(server: MariaDB | PostgreSQL, prefix: str = "TASK_", schema: str | None = None,
                user: str = "scdf", password: str = "scdf-secret", tables: bool = True) -> TaskDatabase:
    """A fresh database with the task tables of the server's own schema (or ``schema``), under ``prefix``."""
    name = f"task_{uuid.uuid4().hex[:10]}"
    server.create_database(name, user, password, task_ddl(schema or server.name, prefix) if tables else "")
    return TaskDatabase(server, name, user, password, prefix)


@pytest.fixture
def task_db(server: MariaDB | PostgreSQL) -> Callable[..., TaskDatabase]:
    """``new_task_db`` on each server in turn."""
    return lambda **kwargs: new_task_db(server, **kwargs)


# -- the fault suite's figures ---------------------------------------------------------------------
# ``FAULTS_REPORT`` names the Markdown file the test_faults_* figures go to (``make faults``:
# faults/results/latest.md); ``FAULTS_SOAK_SECONDS`` sets the soak (300 in ``make faults``).
FAULTS_REPORT = os.environ.get("FAULTS_REPORT")
SOAK_SECONDS = float(os.environ.get("FAULTS_SOAK_SECONDS", "20"))
_FIGURES: dict[str, list[tuple[str, str]]] = {}
_OUTCOMES: dict[str, str] = {}


class Figures:
    """The figures of one test, in the order measured."""

    def __init__(self, test: str) -> None:
        self.rows = _FIGURES.setdefault(test, [])

    def add(self, name: str, value: object) -> None:
        self.rows.append((name, str(value)))


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(_title(request.node.nodeid))


def _title(nodeid: str) -> str:
    return nodeid.split("/")[-1].replace(".py::", ": ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if "test_faults_" in item.nodeid and (report.when == "call" or report.failed):
        _OUTCOMES.setdefault(_title(item.nodeid), report.outcome)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not FAULTS_REPORT or not _OUTCOMES:
        return
    lines = ["# Fault and abuse suite: latest results", "",
             f"`make faults` on {datetime.date.today()}: {platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, the embedded Tansu broker, MariaDB and PostgreSQL from Debian, "
             f"a {SOAK_SECONDS:g} s soak. Every figure is as measured in this run.", ""]
    for test, outcome in _OUTCOMES.items():
        lines += [f"## {test}: {outcome}", ""]
        if _FIGURES.get(test):
            lines += ["| figure | value |", "|---|---|", *(f"| {n} | {v} |" for n, v in _FIGURES[test]), ""]
    path = Path(FAULTS_REPORT)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
