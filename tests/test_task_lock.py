"""The task's single-instance lock (``spring.cloud.task.single-instance-enabled``) on MariaDB, PostgreSQL and
SQLite: Spring's LOCK row, the refusal of a second launch, the release on every exit, a dead holder's lock."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import TASK_SCRIPT, TaskDatabase, new_task_db
from devkit.apps import App
from devkit.databases import PostgreSQL
from devkit.waiting import wait_for
from util.arguments import ConfigError, Properties
from util.task_lock import lock_key, settings

StartApp = Callable[..., App]
NAME = "python-task"
# Java's UUID.nameUUIDFromBytes("python-task".getBytes(UTF_8)), printed by a JVM (MD5, version 3 bits).
PYTHON_TASK_KEY = "097203fd-5fb9-35e1-8c2e-fe77f39c957b"
HOLDS = "holds the single-instance lock"
REFUSED = f'Task with name "{NAME}" is already running.'


@dataclass
class Target:
    """A task database and how to read it: a fresh MariaDB or PostgreSQL database, or an SQLite file."""

    args: list[str]
    query: Callable[[str], list[tuple]]
    lock_table: str
    execution_table: str

    def lock_rows(self) -> list[dict[str, Any]]:
        rows = self.query(f"SELECT LOCK_KEY, REGION, CLIENT_ID, CREATED_DATE, EXPIRED_AFTER FROM {self.lock_table}")
        return [{"LOCK_KEY": key.strip(), "REGION": region, "CLIENT_ID": client.strip(), "CREATED_DATE": _time(created),
                 "EXPIRED_AFTER": _time(expires)} for key, region, client, created, expires in rows]

    def execution(self, execution_id: int) -> dict[str, Any]:
        columns = ("EXIT_CODE", "END_TIME", "ERROR_MESSAGE")
        rows = self.query(f"SELECT {', '.join(columns)} FROM {self.execution_table} "
                          f"WHERE TASK_EXECUTION_ID = {execution_id}")
        return dict(zip(columns, rows[0], strict=True))


def _time(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def sqlite_target(path: Path) -> Target:
    def query(sql: str) -> list[tuple]:
        with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as connection:
            return connection.execute(sql).fetchall()

    return Target([f"--spring.datasource.url=jdbc:sqlite:{path}"], query, "TASK_LOCK", "TASK_EXECUTION")


def db_target(db: TaskDatabase) -> Target:
    return Target(db.args, lambda sql: db.server.admin(sql, database=db.name), db.table("LOCK"),
                  db.table("EXECUTION"))


@pytest.fixture(params=["mariadb", "postgresql", "sqlite"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return sqlite_target(tmp_path / "tasks.db")
    return db_target(new_task_db(request.getfixturevalue(request.param)))


def launch(start_app: StartApp, target: Target, *args: str, ttl: int = 60, interval: int = 100) -> App:
    return start_app(TASK_SCRIPT, [*args, f"--spring.cloud.task.name={NAME}", *target.args,
                                   "--spring.cloud.task.single-instance-enabled=true",
                                   f"--spring.cloud.task.single-instance-lock-ttl={ttl}",
                                   f"--spring.cloud.task.single-instance-lock-check-interval={interval}"])


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def test_lock_key_is_javas_name_uuid_from_bytes() -> None:
    assert lock_key(NAME) == PYTHON_TASK_KEY
    # More values a JVM printed: ASCII, and non-ASCII as UTF-8 bytes.
    assert lock_key("test") == "098f6bcd-4621-3373-8ade-4e832627b4f6"
    assert lock_key("tâche-é") == "f3191f7e-02ce-3abe-9e21-aebb1ee8f020"
    # A name that is a UUID is its own key, as Spring Integration's UUIDConverter reads it.
    assert lock_key("0B9F6BCD-4621-3373-8ADE-4E832627B4F6") == "0b9f6bcd-4621-3373-8ade-4e832627b4f6"
    # Only the strict 8-4-4-4-12 form is a UUID: Spring Integration 6.2+ (UUIDConverter's UUID_REGEX) hashes any
    # other name, even one Java's lenient UUID.fromString reads (five shorter hex groups: a valid task name).
    assert lock_key("dead-beef-cafe-face-fade") == "c77a1474-fdf7-3da4-954d-34ab24dd0ca5"


def test_settings_default_as_spring_and_refuse_nonsense() -> None:
    assert settings(Properties([], {})) is None
    on = settings(Properties(["--spring.cloud.task.single-instance-enabled=true"], {}))
    assert on is not None
    assert (on.ttl.total_seconds(), on.check_interval) == (2**31 - 1, 0.5)  # Integer.MAX_VALUE seconds, 500 ms
    for bad in ("--spring.cloud.task.single-instance-lock-ttl=0",
                "--spring.cloud.task.single-instance-lock-check-interval=-1",
                "--spring.cloud.task.single-instance-lock-ttl=10s"):
        with pytest.raises(ConfigError, match=r"spring\.cloud\.task\.single-instance-lock"):
            settings(Properties(["--spring.cloud.task.single-instance-enabled=true", bad], {}))


def test_second_launch_is_refused_while_the_renewed_lock_is_held_and_sigterm_releases_it(
        target: Target, start_app: StartApp) -> None:
    holder = launch(start_app, target, "--sleep.seconds=600", ttl=2)
    holder.wait_for_log(HOLDS)
    [row] = target.lock_rows()
    assert (row["LOCK_KEY"], row["REGION"], row["CLIENT_ID"]) == (PYTHON_TASK_KEY, "DEFAULT", "1")
    assert abs((row["EXPIRED_AFTER"] - row["CREATED_DATE"]).total_seconds() - 2) < 0.1
    assert abs((row["CREATED_DATE"] - utc_now()).total_seconds()) < 30  # UTC, as Spring Integration writes it
    first_expiry = row["EXPIRED_AFTER"]
    # Held, it is renewed: still held once the first EXPIRED_AFTER has passed.
    wait_for(lambda: utc_now() > first_expiry, 10, "the first EXPIRED_AFTER to pass")
    assert target.lock_rows()[0]["EXPIRED_AFTER"] > first_expiry
    started = time.monotonic()
    second = launch(start_app, target, "--sleep.seconds=0", ttl=2, interval=1500)
    assert second.wait(60) == 1, second.log
    assert time.monotonic() - started >= 1.5  # the refusal is seen at the first check, 1500 ms in
    assert REFUSED in second.log
    assert "started, execution id" not in second.log
    refused = target.execution(2)
    assert refused["EXIT_CODE"] == 1
    assert refused["END_TIME"] is not None
    assert refused["ERROR_MESSAGE"].startswith(f"util.task_lock.TaskAlreadyRunningError: {REFUSED}\n")
    assert [r["CLIENT_ID"] for r in target.lock_rows()] == ["1"]  # the refused launch left the lock alone
    assert holder.stop(signal.SIGTERM, timeout=20) == 143
    assert target.lock_rows() == []
    assert target.execution(1)["EXIT_CODE"] == 143


def test_the_lock_is_released_after_success_and_after_failure(target: Target, start_app: StartApp) -> None:
    assert launch(start_app, target, "--sleep.seconds=0").wait(60) == 0
    assert target.lock_rows() == []
    failing = launch(start_app, target, "--sleep.seconds=0", "--error.message=Boom")
    assert failing.wait(60) == 1
    assert HOLDS in failing.log
    assert target.lock_rows() == []
    assert "RuntimeError: Boom" in target.execution(2)["ERROR_MESSAGE"]
    assert launch(start_app, target, "--sleep.seconds=0").wait(60) == 0  # nothing left behind blocks the next
    assert [target.execution(i)["EXIT_CODE"] for i in (1, 2, 3)] == [0, 1, 0]


def test_a_killed_holders_lock_is_taken_once_it_expired(target: Target, start_app: StartApp) -> None:
    holder = launch(start_app, target, "--sleep.seconds=600", ttl=10)
    holder.wait_for_log(HOLDS)
    holder.kill()  # SIGKILL: nothing releases the lock
    [dead] = target.lock_rows()
    assert launch(start_app, target, "--sleep.seconds=0", ttl=10).wait(60) == 1  # not expired yet: refused
    wait_for(lambda: utc_now() > dead["EXPIRED_AFTER"], 30, "the dead holder's lock to expire")
    assert target.lock_rows() == [dead]  # still there: the next launch takes it over
    taker = launch(start_app, target, "--sleep.seconds=0", ttl=10)
    assert taker.wait(60) == 0, taker.log
    assert HOLDS in taker.log
    assert target.lock_rows() == []
    assert target.execution(3)["EXIT_CODE"] == 0


def test_a_database_error_while_locking_is_one_clear_line(target: Target, start_app: StartApp) -> None:
    launch(start_app, target, "--sleep.seconds=0").wait(60)  # SQLite: the tables exist from now on
    target.query(f"DROP TABLE {target.lock_table}")  # a table of another shape (a missing one is created)
    target.query(f"CREATE TABLE {target.lock_table} (LOCK_KEY CHAR(36))")
    app = launch(start_app, target, "--sleep.seconds=0")
    assert app.wait(60) == 1
    errors = [line for line in app.log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, app.log
    assert f"Cannot take the single-instance lock of task {NAME} in {target.lock_table}" in errors[0]
    assert "Traceback" not in app.log
    assert "scdf-secret" not in app.log
    row = target.execution(2)
    assert (row["EXIT_CODE"], row["END_TIME"] is not None) == (1, True)
    assert row["ERROR_MESSAGE"].startswith("Cannot take the single-instance lock")


@pytest.mark.parametrize("kind", ["mariadb", "postgresql"])
def test_a_database_restart_while_holding_the_lock_still_releases_it(
        kind: str, request: pytest.FixtureRequest, start_app: StartApp) -> None:
    server = request.getfixturevalue(kind)
    target = db_target(new_task_db(server))
    app = launch(start_app, target, "--sleep.seconds=4")
    app.wait_for_log("started, execution id 1")
    server.stop()
    try:  # the heartbeat fails: one warning, then it goes on trying
        app.wait_for_log("Cannot renew the single-instance lock of task python-task: the database failed")
    finally:
        server.start()
    assert app.wait(90) == 0, app.log
    assert app.log.count("Cannot renew the single-instance lock") == 1
    assert target.lock_rows() == []
    assert target.execution(1)["EXIT_CODE"] == 0


def test_launches_at_once_one_runs_the_rest_are_refused_even_for_an_expired_lock(
        target: Target, start_app: StartApp) -> None:
    # On a fresh database (SQLite: a new file, its tables created by the racing launches themselves)...
    apps = [launch(start_app, target, "--sleep.seconds=4") for _ in range(6)]
    assert sorted(app.wait(120) for app in apps) == [0, 1, 1, 1, 1, 1], [app.log[-600:] for app in apps]
    assert (sum(HOLDS in app.log for app in apps), sum(REFUSED in app.log for app in apps)) == (1, 5)
    assert target.lock_rows() == []
    # ... and for the expired lock of a killed holder.
    target.query(f"INSERT INTO {target.lock_table} (LOCK_KEY, REGION, CLIENT_ID, CREATED_DATE, EXPIRED_AFTER) "
                 f"VALUES ('{PYTHON_TASK_KEY}', 'DEFAULT', 'f0e1d2c3-0000-4000-8000-000000000000', "
                 "'2020-01-01 00:00:00', '2020-01-01 00:00:00')")
    apps = [launch(start_app, target, "--sleep.seconds=4") for _ in range(6)]
    assert sorted(app.wait(120) for app in apps) == [0, 1, 1, 1, 1, 1], [app.log[-600:] for app in apps]
    assert target.lock_rows() == []


def test_sigterm_during_the_check_interval_ends_the_launch_and_frees_its_lock(
        tmp_path: Path, start_app: StartApp) -> None:
    target = sqlite_target(tmp_path / "tasks.db")
    app = launch(start_app, target, "--sleep.seconds=0", interval=120000)  # the first check two minutes in
    app.wait_for_log(HOLDS)
    app.process.send_signal(signal.SIGTERM)
    assert app.wait(20) == 143, app.log
    assert "started, execution id" not in app.log
    assert target.lock_rows() == []
    row = target.execution(1)
    assert (row["EXIT_CODE"], row["ERROR_MESSAGE"]) == (143, "Task terminated by SIGTERM")


def pg_session(db: TaskDatabase) -> psycopg.Connection:
    """Another session of the database, as an operator's psql: its transactions stay open until it ends them."""
    return psycopg.connect(host=str(db.server.dir), port=db.server.port, user="postgres", dbname=db.name)


def lock_waits(db: TaskDatabase) -> int:
    """How many sessions of the database wait for another's lock."""
    [(count,)] = db.server.admin("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                                 "wait_event_type = 'Lock'", database=db.name)
    return count


def test_sigterm_ends_a_launch_whose_lock_statement_waits_for_another_transaction(
        postgresql: PostgreSQL, start_app: StartApp) -> None:
    db = new_task_db(postgresql)
    target = db_target(db)
    target.query(f"INSERT INTO {target.lock_table} VALUES ('{PYTHON_TASK_KEY}', 'DEFAULT', '99', '2020-01-01', "
                 "'2020-01-01')")
    with closing(pg_session(db)) as blocker:
        blocker.execute(f"SELECT * FROM {target.lock_table} FOR UPDATE")  # a transaction left open
        app = launch(start_app, target, "--sleep.seconds=0")
        wait_for(lambda: lock_waits(db), 60, "the launch's UPDATE of the expired row to wait for its row lock")
        app.process.send_signal(signal.SIGTERM)
        assert app.wait(30) == 143, app.log  # once its statement timed out (5 s)
        blocker.rollback()
    assert "started, execution id" not in app.log
    row = target.execution(1)
    assert (row["EXIT_CODE"], row["ERROR_MESSAGE"]) == (143, "Task terminated by SIGTERM")
    assert [r["CLIENT_ID"] for r in target.lock_rows()] == ["99"]


def test_a_second_sigterm_cuts_short_a_release_waiting_for_another_transaction(
        postgresql: PostgreSQL, start_app: StartApp) -> None:
    """The release's DELETE times out (5 s) and is retried for task.end.retry-seconds; a second SIGTERM ends the
    retries: one warning, the row stays until it expires, the run is recorded as terminated."""
    db = new_task_db(postgresql)
    target = db_target(db)
    app = launch(start_app, target, "--sleep.seconds=600", "--task.end.retry-seconds=600")
    app.wait_for_log("started, execution id 1")
    with closing(pg_session(db)) as blocker:
        blocker.execute(f"SELECT * FROM {target.lock_table} FOR UPDATE")
        app.process.send_signal(signal.SIGTERM)
        app.wait_for_log("Cannot release the single-instance lock of task python-task .*; retrying")
        app.process.send_signal(signal.SIGTERM)
        assert app.wait(30) == 143, app.log
        blocker.rollback()
    assert app.log.count("stays until it expires") == 1
    assert [r["CLIENT_ID"] for r in target.lock_rows()] == ["1"]
    assert target.execution(1)["EXIT_CODE"] == 143


def test_a_renewal_outliving_the_release_never_brings_the_row_back(
        postgresql: PostgreSQL, start_app: StartApp) -> None:
    """An operator deletes the row in a transaction not yet committed (the README's clean-up of a stuck lock): the
    heartbeat's UPDATE and the release's DELETE wait for it, time out, are retried; once it commits, the task
    exits and no row is left (the heartbeat only updates its own row, never inserts one)."""
    db = new_task_db(postgresql)
    target = db_target(db)
    app = launch(start_app, target, "--sleep.seconds=3", ttl=3600)
    app.wait_for_log(HOLDS)
    with closing(pg_session(db)) as blocker:
        blocker.execute(f"DELETE FROM {target.lock_table}")
        app.wait_for_log("Cannot release the single-instance lock of task python-task .*; retrying")
        blocker.commit()
    assert app.wait(60) == 0, app.log
    assert target.lock_rows() == []


@pytest.mark.parametrize("kind", ["mariadb", "postgresql"])
def test_a_data_flow_row_a_boot3_prefix_and_a_long_unicode_name(
        kind: str, request: pytest.FixtureRequest, start_app: StartApp) -> None:
    db = new_task_db(request.getfixturevalue(kind), prefix="BOOT3_TASK_")
    name = "tâche-🚀-" + "x" * 150
    single = ["--spring.cloud.task.single-instance-enabled=true", f"--spring.cloud.task.name={name}", *db.args]
    holder = start_app(TASK_SCRIPT, [*single, "--sleep.seconds=600"])
    holder.wait_for_log(HOLDS)
    db.insert_execution(5, "tache")
    second = start_app(TASK_SCRIPT, [*single, "--sleep.seconds=0", "--spring.cloud.task.executionid=5"])
    assert second.wait(60) == 1, second.log
    assert "is already running" in second.log
    assert "Traceback" not in second.log
    assert db.rows()[5]["EXIT_CODE"] == 1
    assert holder.stop(signal.SIGTERM, timeout=30) == 143
    assert db_target(db).lock_rows() == []


def test_a_server_and_client_time_zone_other_than_utc(postgresql: PostgreSQL, start_app: StartApp) -> None:
    db = new_task_db(postgresql)
    postgresql.admin(f"ALTER DATABASE \"{db.name}\" SET timezone TO 'America/New_York'")
    target = db_target(db)
    holder = start_app(TASK_SCRIPT, [f"--spring.cloud.task.name={NAME}", *db.args, "--sleep.seconds=600",
                                     "--spring.cloud.task.single-instance-enabled=true",
                                     "--spring.cloud.task.single-instance-lock-ttl=60"], env={"PGTZ": "Asia/Tokyo"})
    holder.wait_for_log(HOLDS)
    [row] = target.lock_rows()
    assert abs((row["EXPIRED_AFTER"] - utc_now()).total_seconds() - 60) < 5, row  # UTC whatever the zones
    assert launch(start_app, target, "--sleep.seconds=0").wait(60) == 1
    assert holder.stop(signal.SIGTERM, timeout=30) == 143


@pytest.mark.parametrize("kind", ["mariadb", "postgresql"])
def test_a_database_gone_for_good_while_the_lock_is_held(
        kind: str, request: pytest.FixtureRequest, start_app: StartApp) -> None:
    """The release and the end retry for task.end.retry-seconds each, then give up: exit 1, a few clear lines."""
    server = request.getfixturevalue(kind)
    app = launch(start_app, db_target(new_task_db(server)), "--sleep.seconds=3", "--task.end.retry-seconds=5")
    app.wait_for_log(HOLDS)
    server.stop()
    try:
        assert app.wait(120) == 1, app.log
    finally:
        server.start()
    assert "Traceback" not in app.log
    assert "stays until it expires" in app.log
    [error] = [line for line in app.log.splitlines() if " ERROR " in line]
    assert "Cannot record the end of execution 1" in error


@pytest.mark.parametrize("kind", ["mariadb", "postgresql"])
def test_the_lock_on_data_flow_2_11s_lock_table_without_expired_after(
        kind: str, request: pytest.FixtureRequest, start_app: StartApp) -> None:
    """Data Flow 2.11 creates TASK_LOCK and BOOT3_TASK_LOCK as Spring Integration 5.5-6.x had them, without
    EXPIRED_AFTER: CREATED_DATE is renewed, a row older than the ttl (milliseconds there) is expired."""
    db = new_task_db(request.getfixturevalue(kind), prefix="BOOT3_TASK_")
    target = db_target(db)
    target.query(f"ALTER TABLE {target.lock_table} DROP COLUMN EXPIRED_AFTER")

    def rows() -> list[tuple[str, datetime]]:
        return [(client.strip(), _time(created)) for client, created in
                target.query(f"SELECT CLIENT_ID, CREATED_DATE FROM {target.lock_table}")]

    holder = launch(start_app, target, "--sleep.seconds=600", ttl=60000)
    holder.wait_for_log(HOLDS)
    [(client, created)] = rows()
    assert client == "1"
    wait_for(lambda: rows()[0][1] > created, 10, "the renewal of CREATED_DATE")
    refused = launch(start_app, target, "--sleep.seconds=0", ttl=60000)
    assert refused.wait(60) == 1, refused.log
    assert REFUSED in refused.log
    assert holder.stop(signal.SIGTERM, timeout=30) == 143
    assert rows() == []
    # A killed holder's row, CREATED_DATE two minutes ago: expired for a ttl of one minute.
    target.query(f"INSERT INTO {target.lock_table} (LOCK_KEY, REGION, CLIENT_ID, CREATED_DATE) VALUES "
                 f"('{PYTHON_TASK_KEY}', 'DEFAULT', '99', '{utc_now() - timedelta(minutes=2):%Y-%m-%d %H:%M:%S}')")
    taker = launch(start_app, target, "--sleep.seconds=0", ttl=60000)
    assert taker.wait(60) == 0, taker.log
    assert HOLDS in taker.log
    assert rows() == []
