"""The task's faults on MariaDB and PostgreSQL: a database that restarts, one that stays down, kill -9."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from conftest import ROOT, TASK_SCRIPT, Figures, TaskDatabase
from devkit.apps import App
from devkit.databases import MariaDB, PostgreSQL
from devkit.waiting import wait_for

StartApp = Callable[..., App]
RETRYING = "Cannot record the end of execution"


def launch(start_app: StartApp, db: TaskDatabase, *args: str) -> App:
    return start_app(TASK_SCRIPT, [*args, "--spring.cloud.task.name=python-task", *db.args])


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
