"""The task's metrics pushed to a real Pushgateway, scraped by a real Prometheus, read by Data Flow's task dashboard."""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TASK_SCRIPT, TaskDatabase
from devkit.apps import App
from devkit.prometheus import Prometheus
from devkit.pushgateway import Pushgateway
from devkit.tansu import free_port
from devkit.waiting import wait_for
from util.arguments import ConfigError, Properties
from util.pushgateway import GRACE, TIMEOUT, Gateway
from util.task_metrics import TaskMetrics, label_name, parse_duration

StartApp = Callable[..., App]
PG = "--management.prometheus.metrics.export.pushgateway"
BOOT2_PG = "--management.metrics.export.prometheus.pushgateway"
# Data Flow's common task tags, as the server passes them (application-task-common-properties-defaults.yml).
DATA_FLOW_TAGS = ("--management.metrics.tags.application=${spring.cloud.task.name:unknown}-"
                  "${spring.cloud.task.executionid:unknown}", "--management.metrics.tags.service=task-application")
# The task panels of Data Flow's Grafana dashboard (src/grafana/prometheus/docker/grafana/dashboards/
# scdf-task-batch.json), each expr exactly as there; the Spring Batch panels have no task counterpart.
DASHBOARD = {
    "Task Count": "count(count by (task_name,task_execution_id) (spring_cloud_task_seconds_count))",
    "Active Tasks Count": "spring_cloud_task_active_seconds_active_count",
    "Task Duration": "sum(spring_cloud_task_seconds_sum) by (task_name,task_execution_id)",
    "Active Task Duration": 'sum(spring_cloud_task_active_seconds_duration_sum{task_name=~"$task_name",'
                            'task_execution_id=~"$task_execution_id"}) by (task_name, task_execution_id)',
    "Task Rate": "rate(spring_cloud_task_seconds_count[1m])",
    "Active Task Rate": 'rate(spring_cloud_task_active_seconds_active_count{task_name=~"$task_name"}[1m]) ',
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[Pushgateway, Prometheus]]:
    """A Pushgateway and a Prometheus scraping it every second, keeping the pushed job labels."""
    pushgateway = Pushgateway().start()
    try:
        prometheus = Prometheus([f"127.0.0.1:{pushgateway.port}"], "/metrics", honor_labels=True).start()
    except BaseException:
        pushgateway.remove()
        raise
    yield pushgateway, prometheus
    prometheus.remove()
    pushgateway.remove()


def pushing(url: str, *extra: str) -> list[str]:
    """Pushes enabled to ``url``, each execution in its own group."""
    return [f"{PG}.enabled=true", f"{PG}.base-url={url}",
            f"{PG}.grouping-key.execution=${{spring.cloud.task.executionid:${{random.uuid}}}}", *extra]


def sqlite_task(start_app: StartApp, tmp_path: Path, *args: str) -> App:
    return start_app(TASK_SCRIPT, [f"--spring.datasource.url=jdbc:sqlite:{tmp_path / 'tasks.db'}", *args])


def sqlite_rows(tmp_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "tasks.db") as db:
        return db.execute("SELECT TASK_EXECUTION_ID, EXIT_CODE, END_TIME IS NOT NULL FROM TASK_EXECUTION").fetchall()


def series(prometheus: Prometheus, expression: str, **labels: str) -> list[dict[str, Any]]:
    """The samples of ``expression`` that carry ``labels``."""
    return [r for r in prometheus.query(expression) if labels.items() <= r["metric"].items()]


def unique(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def test_every_query_of_the_task_dashboard_finds_the_run(
        task_db: Callable[..., TaskDatabase], start_app: StartApp, gateway: tuple[Pushgateway, Prometheus]) -> None:
    pushgateway, prometheus = gateway
    db, name = task_db(), unique("dash")
    db.insert_execution(42, name)
    app = start_app(TASK_SCRIPT, ["--sleep.seconds=0", *pushing(pushgateway.url, f"{PG}.shutdown-operation=PUSH"),
                                  *DATA_FLOW_TAGS, "--spring.cloud.task.executionid=42",
                                  f"--spring.cloud.task.name={name}", *db.args])
    assert app.wait(60) == 0, app.log
    ours = {"task_name": name, "task_execution_id": "42"}
    exprs = {title: expr.replace("$task_name", name).replace("$task_execution_id", "42")
             for title, expr in DASHBOARD.items()}

    def answered() -> bool:  # the rates need two scrapes of the pushed group
        return all(prometheus.query(expr) if title == "Task Count" else series(prometheus, expr, **ours)
                   for title, expr in exprs.items())

    wait_for(answered, 60, "every task panel's query to find the run")
    assert series(prometheus, "count by (task_name,task_execution_id) (spring_cloud_task_seconds_count)", **ours)
    assert float(prometheus.query(exprs["Task Count"])[0]["value"][1]) >= 1
    # Grafana's template variables: label_values(task_name), label_values({task_name="$task_name"},task_execution_id)
    assert name in prometheus.label_values("task_name")
    assert prometheus.label_values("task_execution_id", f'{{task_name="{name}"}}') == ["42"]
    [timer] = series(prometheus, "spring_cloud_task_seconds_count", **ours)
    assert timer["metric"] | {"__name__": "", "instance": ""} == {
        "__name__": "", "instance": "", "job": "spring", "execution": "42", "task_name": name,
        "task_execution_id": "42", "task_parent_execution_id": "null", "task_external_execution_id": "unknown",
        "task_exit_code": "0", "task_exception": "none", "task_status": "success", "application": f"{name}-42",
        "service": "task-application"}
    assert series(prometheus, "spring_cloud_task_active_seconds_active_count == 0", **ours)
    assert series(prometheus, "spring_cloud_task_seconds_max", **ours)


def test_a_succeeded_and_a_failed_run_differ_by_their_tags(
        start_app: StartApp, tmp_path: Path, gateway: tuple[Pushgateway, Prometheus]) -> None:
    pushgateway, prometheus = gateway
    name = unique("outcome")
    for extra, code in (([], 0), (["--error.message=x"], 1)):
        app = sqlite_task(start_app, tmp_path, "--sleep.seconds=0", f"--spring.cloud.task.name={name}",
                          "--spring.cloud.task.parent-execution-id=7",
                          "--spring.cloud.task.external-execution-id=pod-1",
                          *pushing(pushgateway.url, f"{BOOT2_PG}.shutdown-operation=PUSH"), *extra)
        assert app.wait(60) == code, app.log
    runs = wait_for(lambda: len(found := series(prometheus, "spring_cloud_task_seconds_count", task_name=name)) == 2
                    and found, 30, "both runs in Prometheus")
    tags = {r["metric"]["task_execution_id"]: {k: r["metric"][k] for k in (
        "task_exit_code", "task_exception", "task_status", "task_parent_execution_id", "task_external_execution_id")}
        for r in runs}
    assert tags == {"1": {"task_exit_code": "0", "task_exception": "none", "task_status": "success",
                          "task_parent_execution_id": "7", "task_external_execution_id": "pod-1"},
                    "2": {"task_exit_code": "1", "task_exception": "RuntimeError", "task_status": "failure",
                          "task_parent_execution_id": "7", "task_external_execution_id": "pod-1"}}
    assert {r["metric"]["application"] for r in runs} == {f"{name}-unknown"}  # no executionid: Data Flow's default


def test_the_periodic_push_shows_the_running_task_then_the_terminated_one(
        start_app: StartApp, tmp_path: Path, gateway: tuple[Pushgateway, Prometheus]) -> None:
    pushgateway, prometheus = gateway
    name = unique("running")
    app = sqlite_task(start_app, tmp_path, "--sleep.seconds=600", f"--spring.cloud.task.name={name}",
                      *pushing(pushgateway.url, f"{PG}.push-rate=200ms", f"{PG}.shutdown-operation=POST",
                               f"{PG}.job=python-tasks"))

    def active() -> bool:
        assert app.process.poll() is None, app.log
        return bool(series(prometheus, "spring_cloud_task_active_seconds_active_count == 1", task_name=name,
                           job="python-tasks"))

    wait_for(active, 60, "the running task's active_count 1 in Prometheus")
    assert not series(prometheus, "spring_cloud_task_seconds_count", task_name=name)  # recorded at the end only
    assert series(prometheus, "spring_cloud_task_active_seconds_duration_sum > 0", task_name=name)
    assert app.stop(signal.SIGTERM, timeout=30) == 143
    ended = {"task_name": name, "task_status": "failure", "task_exit_code": "143",
             "task_exception": "TaskTerminatedError"}
    wait_for(lambda: series(prometheus, "spring_cloud_task_seconds_count", **ended), 30, "the terminated run")
    wait_for(lambda: series(prometheus, "spring_cloud_task_active_seconds_active_count == 0", task_name=name), 30,
             "active_count 0")
    assert sqlite_rows(tmp_path) == [(1, 143, 1)]


def test_shutdown_operation_delete_removes_the_group(
        start_app: StartApp, tmp_path: Path, gateway: tuple[Pushgateway, Prometheus]) -> None:
    pushgateway, _ = gateway
    name = unique("delete")
    app = sqlite_task(start_app, tmp_path, "--sleep.seconds=600", f"--spring.cloud.task.name={name}",
                      *pushing(pushgateway.url, f"{PG}.push-rate=100ms", f"{PG}.shutdown-operation=DELETE",
                               f"{PG}.job={name}"))

    def group() -> bool:
        assert app.process.poll() is None, app.log
        return any(labels.get("job") == name for labels in pushgateway.group_labels())

    wait_for(group, 60, "the periodic push's group")
    assert app.stop(signal.SIGTERM, timeout=30) == 143
    assert not [labels for labels in pushgateway.group_labels() if labels.get("job") == name]
    assert "Pushgateway" not in app.log


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


# A raw HTTP server's part: the connection (its request already read) and the event that ends the test's servers.
Respond = Callable[[socket.socket, threading.Event], None]


@pytest.fixture
def raw_server() -> Iterator[Callable[[Respond, list[bytes]], int]]:
    """Loopback HTTP servers that answer byte by byte: ``start(respond, requests)`` is the port of one that keeps
    each request it reads in ``requests``; every server and its threads end with the test."""
    stop = threading.Event()
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def handle(connection: socket.socket, respond: Respond, requests: list[bytes]) -> None:
        with connection:
            connection.settimeout(5)
            try:
                requests.append(connection.recv(65536))
                respond(connection, stop)
            except OSError:  # the task closed the connection
                pass

    def serve(listener: socket.socket, respond: Respond, requests: list[bytes]) -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # the accept timeout, or the listener closed
                continue
            thread = threading.Thread(target=handle, args=(connection, respond, requests), daemon=True)
            threads.append(thread)
            thread.start()

    def start(respond: Respond, requests: list[bytes]) -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.2)
        listeners.append(listener)
        threads.append(threading.Thread(target=serve, args=(listener, respond, requests), daemon=True))
        threads[-1].start()
        return listener.getsockname()[1]

    yield start
    stop.set()
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(10)


def test_a_redirect_is_a_failed_push_and_no_credential_follows_it(
        start_app: StartApp, tmp_path: Path, raw_server: Callable[[Respond, list[bytes]], int]) -> None:
    """A Pushgateway URL that answers 302 to another host: urllib would follow it with the Authorization header."""
    elsewhere: list[bytes] = []
    other = raw_server(lambda c, _: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), elsewhere)
    redirect = (f"HTTP/1.1 302 Found\r\nLocation: http://localhost:{other}/steal\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n").encode()
    pushes: list[bytes] = []
    port = raw_server(lambda c, _: c.sendall(redirect), pushes)
    app = sqlite_task(start_app, tmp_path, "--sleep.seconds=0", *pushing(
        f"http://127.0.0.1:{port}", f"{PG}.token=s3cr3t-token", f"{PG}.shutdown-operation=PUT"))
    assert app.wait(60) == 0, app.log
    assert [request.split(b" ", 1)[0] for request in pushes] == [b"PUT"]
    assert elsewhere == []
    [warning] = [line for line in app.log.splitlines() if " WARN " in line]
    assert "PUT of the task's metrics" in warning
    assert "HTTP 302 Found" in warning
    assert "s3cr3t" not in app.log


def test_a_pushgateway_that_trickles_its_answer_delays_the_end_by_one_timeout_at_most(
        start_app: StartApp, tmp_path: Path, raw_server: Callable[[Respond, list[bytes]], int]) -> None:
    """A byte a second: no read ever times out, yet the push is abandoned after TIMEOUT (and GRACE) seconds."""
    def trickle(connection: socket.socket, stop: threading.Event) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stop.wait(1):
            connection.sendall(b"X")

    port = raw_server(trickle, [])
    app = sqlite_task(start_app, tmp_path, "--sleep.seconds=0", *pushing(
        f"http://127.0.0.1:{port}", f"{PG}.shutdown-operation=PUT", f"{PG}.push-rate=1h"))
    app.wait_for_log("Execution 1 of application completed")
    ended = time.monotonic()
    assert app.wait(60) == 0, app.log
    assert time.monotonic() - ended < TIMEOUT + GRACE + 3
    assert f"PUT of the task's metrics to the Prometheus Pushgateway at http://127.0.0.1:{port}" in app.log
    assert "(abandoned)" in app.log


def test_a_malformed_base_url_is_a_configuration_error_without_its_credentials(
        start_app: StartApp, tmp_path: Path) -> None:
    app = sqlite_task(start_app, tmp_path, "--sleep.seconds=0", f"{PG}.enabled=true",
                      f"{PG}.base-url=http://user:s3cret@[::1")  # a typo'd IPv6 address
    assert app.wait(60) == 1
    assert f"Configuration error: Invalid value for property '{PG[2:]}.base-url': Invalid IPv6 URL" in app.log
    assert "Traceback" not in app.log
    assert "s3cret" not in app.log
    for url in ("http://pg:99999", "ftp://pg", "http://", "http://pg:port"):
        with pytest.raises(ConfigError, match=rf"'{PG[2:]}\.base-url'"):
            TaskMetrics.configure(Properties([f"{PG}.enabled=true", f"{PG}.base-url={url}"], {}))
    with pytest.raises(ConfigError, match=rf"'{PG[2:]}\.address'"):
        TaskMetrics.configure(Properties([f"{PG}.enabled=true", f"{PG}.address=pg:x"], {}))


def test_tag_keys_not_starting_with_a_letter_are_named_as_micrometer_names_them(
        start_app: StartApp, tmp_path: Path, gateway: tuple[Pushgateway, Prometheus]) -> None:
    """PrometheusNamingConvention.tagKey puts m_ before a name not starting with a letter: ``__reserved``, a name
    Prometheus reserves, would make the Pushgateway refuse every push."""
    assert [label_name(key) for key in ("task.name", "_team", "__reserved", "1st", "é")] == [
        "task_name", "m__team", "m___reserved", "m_1st", "m__"]
    pushgateway, _ = gateway
    name = unique("tags")
    app = sqlite_task(start_app, tmp_path, "--sleep.seconds=0", f"--spring.cloud.task.name={name}",
                      *pushing(pushgateway.url, f"{PG}.shutdown-operation=PUT"),
                      "--management.metrics.tags.__reserved=x", "--management.metrics.tags._team=y")
    assert app.wait(60) == 0
    assert " WARN " not in app.log, app.log
    [sample] = [s for s in pushgateway.samples("spring_cloud_task_seconds_count") if s.labels["task_name"] == name]
    assert (sample.labels["m___reserved"], sample.labels["m__team"]) == ("x", "y"), sample.labels


@pytest.mark.parametrize("where", ["down", "error"])
def test_a_pushgateway_down_or_failing_never_changes_the_outcome(
        where: str, start_app: StartApp, tmp_path: Path, gateway: tuple[Pushgateway, Prometheus]) -> None:
    _, prometheus = gateway
    port = free_port() if where == "down" else prometheus.port  # Prometheus answers 404 to a push
    app = sqlite_task(start_app, tmp_path, "--sleep.seconds=1", *pushing(
        f"http://scdf:pg-s3cret@127.0.0.1:{port}", f"{PG}.push-rate=100ms", f"{PG}.shutdown-operation=PUT"))
    assert app.wait(60) == 0, app.log
    assert sqlite_rows(tmp_path) == [(1, 0, 1)]
    warnings = [line for line in app.log.splitlines() if " WARN " in line]
    assert len(warnings) == 1, app.log
    assert f"Prometheus Pushgateway at http://127.0.0.1:{port}/metrics/job/spring/execution/" in warnings[0]
    assert ("Connection refused" if where == "down" else "HTTP 404") in warnings[0]
    assert "pg-s3cret" not in app.log


def test_a_pushgateway_that_never_answers_delays_the_end_by_one_timeout_at_most(
        start_app: StartApp, tmp_path: Path, silent_port: int) -> None:
    app = sqlite_task(start_app, tmp_path, "--sleep.seconds=0", *pushing(
        f"127.0.0.1:{silent_port}", f"{PG}.shutdown-operation=PUT", f"{PG}.push-rate=1h"))
    app.wait_for_log("Execution 1 of application completed")
    ended = time.monotonic()
    assert app.wait(60) == 0, app.log
    assert time.monotonic() - ended < TIMEOUT + 5
    assert "timed out" in app.log
    assert sqlite_rows(tmp_path) == [(1, 0, 1)]


def test_a_bad_push_rate_is_a_configuration_error(start_app: StartApp, tmp_path: Path) -> None:
    app = sqlite_task(start_app, tmp_path, "--sleep.seconds=0", f"{PG}.enabled=true", f"{PG}.push-rate=soon")
    assert app.wait(60) == 1
    assert f"'{PG[2:]}.push-rate': expected a duration" in app.log


def test_push_settings_as_boot_reads_them() -> None:
    assert [parse_duration(text, "x") for text in ("1m", "30s", "500", "250ms", "PT1M", "PT0.5S", "P1DT1H", "2h")] == [
        60, 30, 0.5, 0.25, 60, 0.5, 90000, 7200]
    with pytest.raises(ConfigError):
        parse_duration("1 minute", "x")
    gateway = Gateway.of("https://user:p%40ss@pg.example:9091/base", "job", {})
    assert (gateway.url, gateway.username, gateway.password) == ("https://pg.example:9091/base", "user", "p@ss")
    assert "p@ss" not in repr(gateway)
    assert "p@ss" not in gateway.where
    boot2 = Properties([f"{BOOT2_PG}.enabled=true", f"{BOOT2_PG}.job=j", f"{BOOT2_PG}.grouping-key.instance=i",
                        "--spring.application.name=app"], {})
    pusher = TaskMetrics.configure(boot2).pusher
    assert pusher is not None
    assert (pusher.gateway.url, pusher.gateway.job, dict(pusher.gateway.grouping_key), pusher.rate,
            pusher.shutdown) == ("http://localhost:9091", "j", {"instance": "i"}, 60, "NONE")
    boot35 = Properties([f"{PG}.enabled=true", f"{PG}.address=pg:9091", f"{PG}.scheme=https",
                         "--spring.application.name=app"], {})
    pusher = TaskMetrics.configure(boot35).pusher
    assert pusher is not None
    assert (pusher.gateway.url, pusher.gateway.job) == ("https://pg:9091", "app")
    assert TaskMetrics.configure(Properties([], {})).pusher is None
    assert Gateway.of("pg:9091", "j", {}, "u", "p")._authorization() == [("Authorization", "Basic dTpw")]
    assert Gateway.of("pg:9091", "j", {}, token="t")._authorization() == [("Authorization", "Bearer t")]
    with pytest.raises(ConfigError, match="mutually exclusive"):
        TaskMetrics.configure(Properties([f"{PG}.enabled=true", f"{PG}.token=t", f"{PG}.username=u"], {}))

