"""The task's faults on MariaDB and PostgreSQL: a database that restarts, one that stays down, kill -9,
text the database cannot store, a deep stack."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable

from sqlalchemy.exc import DataError

from conftest import ROOT, TASK_SCRIPT, Figures, TaskDatabase, task_ddl
from devkit.apps import App
from devkit.databases import MariaDB, PostgreSQL
from devkit.waiting import wait_for
from util.task_status import _recording
from util.task_text import MESSAGE_SIZE, Fit, fitter, stack_trace

StartApp = Callable[..., App]
RETRYING = "Cannot record the end of execution"


def launch(start_app: StartApp, db: TaskDatabase, *args: str, env: dict[str, str] | None = None) -> App:
    return start_app(TASK_SCRIPT, [*args, "--spring.cloud.task.name=python-task", *db.args], env)


def test_database_restart_during_the_run_still_completes_the_row(
        server: MariaDB | PostgreSQL, task_db: Callable[..., TaskDatabase], start_app: StartApp,
        figures: Figures) -> None:
    db = task_db()
    db.insert_execution(11, "python-task")
    app = launch(start_app, db, "--sleep.seconds=5", "--spring.cloud.task.executionid=11")
    app.wait_for_log("started, execution id 11")
    down = time.monotonic()
    server.stop()
    try:  # the run ends while the database is down: let it retry three times (0.5 + 1 + 2 s)
        wait_for(lambda: app.log.count(RETRYING) >= 3, 30, "three failed attempts")
    finally:
        server.start()
    downtime = time.monotonic() - down
    assert app.wait(60) == 0, app.log
    written = time.monotonic() - down - downtime
    row = db.rows()[11]
    assert row["END_TIME"] is not None
    assert (row["EXIT_CODE"], row["ERROR_MESSAGE"]) == (0, None)
    retries = app.log.count(RETRYING)
    figures.add(f"{server.name}: database down (stop to accepting again)", f"{downtime:.1f} s")
    figures.add(f"{server.name}: failed attempts, then the row written and exit 0", f"{retries}, "
                f"{written:.1f} s after the database was back")


def test_database_that_stays_down_ends_the_task_non_zero(
        server: MariaDB | PostgreSQL, task_db: Callable[..., TaskDatabase], start_app: StartApp,
        figures: Figures) -> None:
    db = task_db()
    db.insert_execution(12, "python-task")
    app = launch(start_app, db, "--sleep.seconds=3", "--spring.cloud.task.executionid=12",
                 "--task.end.retry-seconds=4")
    app.wait_for_log("started, execution id 12")
    server.stop()
    try:
        app.wait_for_log(RETRYING, 30)
        first = time.monotonic()
        code = app.wait(30)
        gave_up = time.monotonic() - first
    finally:
        server.start()
    assert code == 1, app.log
    assert re.search(r"Cannot record the end of execution 12 in the .* after 4 s of retries: .*"
                     r"the row stays RUNNING", app.log), app.log
    assert db.rows()[12]["END_TIME"] is None
    figures.add(f"{server.name}: exit code, time from the first failed attempt to the exit",
                f"{code}, {gave_up:.1f} s (task.end.retry-seconds=4)")


def operator_cleanup(execution_id: int, prefix: str) -> str:
    """The statement the task's README gives operators, for one execution."""
    readme = (ROOT / "polyglot-python-task" / "README.md").read_text()
    sql = re.search(r"<!-- operator-cleanup -->\n```sql\n(.*?)```", readme, re.S).group(1)
    sql = re.sub(r"\bTASK_EXECUTION\b", f"{prefix}EXECUTION", sql.replace("<id>", str(execution_id)))
    return sql.strip().rstrip(";")


def test_kill_9_leaves_the_row_running_the_readme_cleans_it_and_the_next_launch_is_unaffected(
        server: MariaDB | PostgreSQL, task_db: Callable[..., TaskDatabase], start_app: StartApp,
        figures: Figures) -> None:
    db = task_db(prefix="BOOT3_TASK_")
    db.insert_execution(21, "python-task")
    killed = launch(start_app, db, "--sleep.seconds=600", "--spring.cloud.task.executionid=21")
    killed.wait_for_log("started, execution id 21")
    killed.kill()
    stale = db.rows()[21]
    assert stale["START_TIME"] is not None
    assert (stale["END_TIME"], stale["EXIT_CODE"]) == (None, None)  # Data Flow shows RUNNING

    db.insert_execution(22, "python-task")
    after = launch(start_app, db, "--sleep.seconds=0", "--spring.cloud.task.executionid=22")
    assert after.wait(60) == 0, after.log
    rows = db.rows()
    assert (rows[22]["EXIT_CODE"], rows[21]["END_TIME"]) == (0, None)

    server.admin(operator_cleanup(21, db.prefix), database=db.name)
    cleaned = wait_for(lambda: db.rows()[21], 10, "the row")
    assert cleaned["END_TIME"] is not None
    assert (cleaned["EXIT_CODE"], cleaned["ERROR_MESSAGE"]) == (137, "Killed (SIGKILL): finalized by an operator")
    server.admin(operator_cleanup(22, db.prefix), database=db.name)
    assert db.rows()[22]["EXIT_CODE"] == 0  # a finished row is never touched
    figures.add(f"{server.name}: killed row before the cleanup", "END_TIME NULL, EXIT_CODE NULL (RUNNING)")


def test_malicious_table_prefix_stops_the_launch_before_any_sql(
        task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    db = task_db()
    db.insert_execution(31, "python-task")
    malicious = "TASK_EXECUTION; DROP TABLE TASK_SEQ; --"
    args = [arg for arg in db.args if "tablePrefix" not in arg]
    app = start_app(TASK_SCRIPT, ["--sleep.seconds=0", "--spring.cloud.task.executionid=31", *args,
                                  f"--spring.cloud.task.tablePrefix={malicious}"])
    assert app.wait(60) == 1
    errors = [line for line in app.log.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert "Invalid value for property 'spring.cloud.task.tablePrefix'" in errors[0]
    assert db.rows()[31]["START_TIME"] is None  # untouched: nothing reached the database
    assert db.server.admin(f"SELECT COUNT(*) FROM {db.table('SEQ')}", database=db.name)[0][0] >= 0


# -- text the database cannot store as given ---------------------------------------------------------
UNICODE = {"mariadb": "utf8mb4", "postgresql": "UTF8"}  # the test MariaDB's own default is latin1
NOT_UTF8 = "caf\udce9"  # what Python makes of the bytes caf\xe9 in argv or the environment


def charset_db(server: MariaDB | PostgreSQL, charset: str) -> TaskDatabase:
    """A fresh database of ``charset`` with the task tables."""
    db = TaskDatabase(server, f"task_{uuid.uuid4().hex[:10]}", "scdf", "scdf-secret")
    server.create_database(db.name, db.user, db.password, task_ddl(server.name), charset)
    return db


def warnings(app: App) -> list[str]:
    return [line for line in app.log.splitlines() if " WARN " in line]


def test_non_utf8_launch_argument_is_stored_cleaned_and_the_run_completes(
        server: MariaDB | PostgreSQL, start_app: StartApp) -> None:
    db = charset_db(server, UNICODE[server.name])
    db.insert_execution(41, "python-task")
    app = launch(start_app, db, "--sleep.seconds=0", f"--note={NOT_UTF8}", "--spring.cloud.task.executionid=41")
    assert app.wait(60) == 0, app.log
    row = db.rows()[41]
    assert row["END_TIME"] is not None
    assert (row["EXIT_CODE"], row["ERROR_MESSAGE"]) == (0, None)
    assert "--note=caf\ufffd" in db.params(41)
    assert [line for line in warnings(app) if "TASK_PARAM" in line and "execution 41" in line], app.log


def test_non_utf8_error_message_is_recorded_cleaned_and_the_task_exits_1(
        server: MariaDB | PostgreSQL, start_app: StartApp) -> None:
    db = charset_db(server, UNICODE[server.name])
    db.insert_execution(42, "python-task")
    app = launch(start_app, db, "--sleep.seconds=0", "--spring.cloud.task.executionid=42",
                 "--task.end.retry-seconds=5", env={"ERROR_MESSAGE": NOT_UTF8})
    assert app.wait(60) == 1, app.log
    row = db.rows()[42]
    assert row["END_TIME"] is not None
    assert (row["EXIT_CODE"], row["EXIT_MESSAGE"]) == (1, None)
    assert row["ERROR_MESSAGE"].startswith("RuntimeError: caf\ufffd\n"), row["ERROR_MESSAGE"]
    assert [line for line in warnings(app) if "ERROR_MESSAGE" in line and "execution 42" in line], app.log


def test_nul_in_the_exit_message_is_stored_cleaned_without_retrying(
        server: MariaDB | PostgreSQL, start_app: StartApp) -> None:
    db = charset_db(server, UNICODE[server.name])
    db.insert_execution(43, "python-task")
    app = launch(start_app, db, "--sleep.seconds=0", "--spring.cloud.task.executionid=43",
                 "--task.end.retry-seconds=5", env={"SPRING_APPLICATION_JSON": json.dumps({"exit.message": "DONE\0"})})
    assert app.wait(60) == 0, app.log
    row = db.rows()[43]
    assert row["END_TIME"] is not None
    assert (row["EXIT_CODE"], row["EXIT_MESSAGE"]) == (0, "DONE\ufffd")
    assert "retrying" not in app.log
    assert [line for line in warnings(app) if "EXIT_MESSAGE" in line and "execution 43" in line], app.log


def test_emoji_in_a_latin1_mariadb_database_is_stored_reduced(mariadb: MariaDB, start_app: StartApp) -> None:
    db = charset_db(mariadb, "latin1")
    db.insert_execution(44, "python-task")
    app = launch(start_app, db, "--sleep.seconds=0", "--exit.message=DONE \U0001F600",
                 "--spring.cloud.task.executionid=44", "--task.end.retry-seconds=5")
    assert app.wait(60) == 0, app.log
    row = db.rows()[44]
    assert row["END_TIME"] is not None
    assert (row["EXIT_CODE"], row["EXIT_MESSAGE"], row["ERROR_MESSAGE"]) == (0, "DONE ?", None)
    assert "--exit.message=DONE ?" in db.params(44)
    assert "retrying" not in app.log
    refused = [line for line in warnings(app) if "Incorrect string value" in line]
    assert len(refused) == 2, app.log  # one at the start (TASK_PARAM), one at the end (EXIT_MESSAGE)


def test_each_form_writes_less_text_and_the_last_writes_null() -> None:
    forms = [fitter(form, "execution 1", set())("EXIT_MESSAGE", "caf\udce9 \U0001F600\0") for form in range(3)]
    assert forms == ["caf\ufffd \U0001F600\ufffd", "caf? ??", None]
    assert fitter(0, "execution 1", set())("TASK_NAME", "n" * 150) == "n" * 100  # cut to VARCHAR(100)


def test_a_value_refused_in_every_form_is_written_null_at_once() -> None:
    written: list[str | None] = []

    def write(fit: Fit) -> str:
        written.append(fit("EXIT_MESSAGE", "DONE"))
        if written[-1] is not None:
            raise DataError("UPDATE", {}, Exception("refused"))
        return "recorded"

    started = time.monotonic()
    assert _recording(write, 60, "end", "execution 1", "test database") == "recorded"
    assert written == ["DONE", "DONE", None]
    assert time.monotonic() - started < 1  # a refusal is never retried with back-off


def dive(depth: int, message: str) -> None:
    """``depth`` frames, alternating with ``climb`` so that Python does not fold them into one repeated line."""
    if depth:
        climb(depth - 1, message)
    raise RuntimeError(message)


def climb(depth: int, message: str) -> None:
    dive(depth, message)


def raised(depth: int, message: str) -> RuntimeError:
    try:
        dive(depth // 2, message)
    except RuntimeError as error:
        return error
    raise AssertionError("dive did not raise")


def test_error_message_starts_with_the_exception_and_keeps_the_innermost_frames() -> None:
    deep = stack_trace(raised(40, "the disk is full"))
    assert deep.startswith("RuntimeError: the disk is full\nTraceback (most recent call last):\n")
    assert len(deep) <= MESSAGE_SIZE
    assert re.search(r"\.\.\. \d+ outer frames cut", deep)
    assert deep.rstrip().endswith("raise RuntimeError(message)")  # the innermost frame, where it was raised
    shallow = stack_trace(raised(0, "boom"))
    assert shallow.startswith("RuntimeError: boom\nTraceback (most recent call last):\n")
    assert "cut" not in shallow
    assert shallow.count("RuntimeError: boom") == 1
    huge = stack_trace(raised(3, "x" * 10_000))
    assert len(huge) == MESSAGE_SIZE
    assert huge.startswith("RuntimeError: xxx")
