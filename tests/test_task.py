"""The task recipe against real MariaDB and PostgreSQL servers built from Spring Cloud Task's DDL."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT, TASK_SCRIPT, TaskDatabase, new_task_db
from devkit.apps import App
from devkit.databases import MariaDB, PostgreSQL
from devkit.tansu import free_port
from util import task_schema
from util.arguments import ConfigError
from util.datasource import from_jdbc
from util.task_status import TaskRepository, sanitize

StartApp = Callable[..., App]
QUICK = "--sleep.seconds=0"


def launch(start_app: StartApp, db: TaskDatabase, *args: str, env: dict[str, str] | None = None) -> App:
    """As Data Flow launches a task: the user's arguments, then the platform's (exec entry point style)."""
    return start_app(TASK_SCRIPT, [*args, "--spring.cloud.task.name=python-task", *db.args], env)


def test_completes_the_row_data_flow_created(task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    db = task_db()
    db.insert_execution(42, "python-task", external_id="python-task-pod-1")
    app = launch(start_app, db, QUICK, "--spring.cloud.task.executionid=42",
                 "--spring.cloud.task.external-execution-id=ignored-when-set")
    assert app.wait(60) == 0, app.log
    row = db.rows()[42]
    assert row["START_TIME"] is not None
    assert row["END_TIME"] >= row["START_TIME"]
    assert (row["EXIT_CODE"], row["EXIT_MESSAGE"], row["ERROR_MESSAGE"]) == (0, None, None)
    assert (row["TASK_NAME"], row["EXTERNAL_EXECUTION_ID"], row["PARENT_EXECUTION_ID"]) == (
        "python-task", "python-task-pod-1", None)
    launched = [QUICK, "--spring.cloud.task.executionid=42",
                "--spring.cloud.task.external-execution-id=ignored-when-set", "--spring.cloud.task.name=python-task",
                *db.args]
    assert sorted(db.params(42)) == sorted(sanitize(arg) for arg in launched)
    assert "--spring.datasource.password=******" in db.params(42)
    assert "started, execution id 42" in app.log


def test_failing_run_records_the_error_and_exits_1(
        task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    db = task_db()
    db.insert_execution(7, "python-task")
    app = launch(start_app, db, QUICK, "--error.message=MyTestError", "--spring.cloud.task.executionid=7")
    assert app.wait(60) == 1
    row = db.rows()[7]
    assert row["END_TIME"] is not None
    assert (row["EXIT_CODE"], row["EXIT_MESSAGE"]) == (1, None)
    assert "RuntimeError: MyTestError" in row["ERROR_MESSAGE"]
    assert "Traceback" in row["ERROR_MESSAGE"]


def test_exit_message_drives_composed_task_transitions(
        task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    db = task_db()
    db.insert_execution(8, "pp1")
    app = launch(start_app, db, QUICK, "--exit.message=CUSTOM", "--spring.cloud.task.executionid=8",
                 "--spring.cloud.task.parent-execution-id=5")
    assert app.wait(60) == 0
    row = db.rows()[8]
    assert (row["EXIT_CODE"], row["EXIT_MESSAGE"], row["PARENT_EXECUTION_ID"]) == (0, "CUSTOM", 5)


def test_sigterm_during_the_wait_finalizes_the_row(
        task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    db = task_db()
    db.insert_execution(9, "python-task")
    app = launch(start_app, db, "--sleep.seconds=600", "--spring.cloud.task.executionid=9")
    app.wait_for_log("started, execution id 9")
    assert app.stop(signal.SIGTERM, timeout=20) == 143
    row = db.rows()[9]
    assert row["END_TIME"] is not None
    assert row["EXIT_CODE"] == 143
    assert "terminated by SIGTERM" in row["ERROR_MESSAGE"]


def test_launch_without_execution_id_creates_rows_from_task_seq(
        task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    assert_own_rows(task_db(), start_app)  # MariaDB: a SEQUENCE; PostgreSQL: a SEQUENCE


def test_launch_without_execution_id_with_the_mysql_task_seq_table(mariadb: MariaDB, start_app: StartApp) -> None:
    db = new_task_db(mariadb, schema="mysql")  # TASK_SEQ as a one-row table
    db.scheme = "mysql"  # and a Connector/J URL, as a MySQL install of Data Flow passes it
    assert_own_rows(db, start_app)


def assert_own_rows(db: TaskDatabase, start_app: StartApp) -> None:
    for _ in range(2):
        assert launch(start_app, db, QUICK, "--spring.cloud.task.external-execution-id=ext-1").wait(60) == 0
    rows = db.rows()
    assert sorted(rows) == [1, 2]
    assert all(r["EXIT_CODE"] == 0 and r["EXTERNAL_EXECUTION_ID"] == "ext-1" for r in rows.values())


def test_boot3_table_prefix(task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    db = task_db(prefix="BOOT3_TASK_")
    db.insert_execution(3, "python-task")
    assert launch(start_app, db, QUICK, "--spring.cloud.task.executionid=3").wait(60) == 0
    assert db.rows()[3]["EXIT_CODE"] == 0
    assert db.params(3)


def test_password_with_special_characters_from_a_secret_env_var(
        task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    password = "p@ss:w/rd?#%&="
    db = task_db(user="special", password=password)
    db.insert_execution(11, "python-task")
    args = [a for a in db.args if "password" not in a]
    app = start_app(TASK_SCRIPT, [QUICK, "--spring.cloud.task.executionid=11", *args],
                    {"SPRING_DATASOURCE_PASSWORD": password})
    assert app.wait(60) == 0, app.log
    assert db.rows()[11]["EXIT_CODE"] == 0
    assert password not in app.log


def test_a_profile_file_and_a_secret_mounted_as_a_config_tree(
        task_db: Callable[..., TaskDatabase], start_app: StartApp, tmp_path: Path) -> None:
    """As an operator configures a Spring task on Kubernetes: SPRING_PROFILES_ACTIVE picks application-prod.yml
    in the working directory, which imports the password from a Secret mounted as a config tree (Kubernetes'
    ..data symlink layout); the password is in no log line (DEBUG) and no task row."""
    password = "s3cret-from-a-volume"
    db = task_db(user="mounted", password=password)
    db.insert_execution(12, "python-task")
    secret = tmp_path / "secrets"
    (secret / "..2026_12_04_00_00_00.1").mkdir(parents=True)
    (secret / "..2026_12_04_00_00_00.1" / "spring.datasource.password").write_text(password + "\n")
    (secret / "..data").symlink_to("..2026_12_04_00_00_00.1")
    (secret / "spring.datasource.password").symlink_to("..data/spring.datasource.password")
    work = tmp_path / "work"
    work.mkdir()
    (work / "application-prod.yml").write_text(
        f"spring.config.import: optional:configtree:{secret}/\nexit:\n  message: from-the-prod-profile\n")
    args = [a for a in db.args if "password" not in a]
    app = start_app(TASK_SCRIPT, [QUICK, "--spring.cloud.task.executionid=12", "--logging.level.root=DEBUG", *args],
                    {"SPRING_PROFILES_ACTIVE": "prod"}, cwd=work)
    assert app.wait(60) == 0, app.log
    row = db.rows()[12]
    assert (row["EXIT_CODE"], row["EXIT_MESSAGE"]) == (0, "from-the-prod-profile")
    assert 'The following 1 profile is active: "prod"' in app.log
    assert password not in app.log
    assert not [param for param in db.params(12) if password in param]


def test_wrong_password_is_one_clear_line(task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    db = task_db()
    app = start_app(TASK_SCRIPT, [QUICK, *db.args[:2], "--spring.datasource.password=wrong-one",
                                  f"--spring.cloud.task.tablePrefix={db.prefix}"])
    assert app.wait(60) == 1
    assert f"database '{db.name}' at 127.0.0.1:{db.server.port}" in app.log
    assert "wrong-one" not in app.log
    assert len(app.log.strip().splitlines()) == 1


def test_missing_execution_row_is_an_error(task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    db = task_db()
    app = launch(start_app, db, QUICK, "--spring.cloud.task.executionid=999")
    assert app.wait(60) == 1
    assert "no row 999" in app.log


def test_stopped_server_fails_with_a_clear_error(start_app: StartApp) -> None:
    port = free_port()
    for scheme in ("mariadb", "postgresql"):
        app = start_app(TASK_SCRIPT, [QUICK, f"--spring.datasource.url=jdbc:{scheme}://127.0.0.1:{port}/dataflow",
                                      "--spring.datasource.username=u", "--spring.datasource.password=s3cr3t"])
        assert app.wait(60) == 1
        assert f"{scheme} database 'dataflow' at 127.0.0.1:{port}" in app.log
        assert "s3cr3t" not in app.log


def test_initialize_creates_missing_tables(task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    db = task_db(prefix="BOOT3_TASK_", tables=False)
    app = launch(start_app, db, QUICK, "--spring.cloud.task.initialize-enabled=true")
    assert app.wait(60) == 0, app.log
    assert [r["EXIT_CODE"] for r in db.rows().values()] == [0]


SINGLE = ("--sleep.seconds=3", "--spring.cloud.task.name=python-task",
          "--spring.cloud.task.single-instance-enabled=true")
HOLDS, REFUSED = "holds the single-instance lock", 'Task with name "python-task" is already running.'


def test_launches_racing_to_create_the_tables_on_an_empty_database_are_refused_not_failed(
        task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    """As Spring's TaskRepositoryInitializer (continueOnError): a table another launch created first is passed
    over, so each launch but the lock's holder is refused, its row recorded."""
    db = task_db(tables=False)
    apps = [launch(start_app, db, *SINGLE) for _ in range(8)]
    assert sorted(app.wait(120) for app in apps) == [0, *[1] * 7], [app.log[-400:] for app in apps]
    assert (sum(HOLDS in app.log for app in apps), sum(REFUSED in app.log for app in apps)) == (1, 7)
    assert sorted(row["EXIT_CODE"] for row in db.rows().values()) == [0, *[1] * 7]


def test_launches_racing_to_create_the_tables_of_a_new_sqlite_file_are_refused_not_failed(
        tmp_path: Path, start_app: StartApp) -> None:
    for round_ in range(3):
        url = f"--spring.datasource.url=jdbc:sqlite:{tmp_path / f'race{round_}.db'}"
        apps = [start_app(TASK_SCRIPT, [url, *SINGLE]) for _ in range(10)]
        assert sorted(app.wait(120) for app in apps) == [0, *[1] * 9], [app.log[-400:] for app in apps]
        assert sum(REFUSED in app.log for app in apps) == 9


@pytest.mark.parametrize(("kind", "schema"), [("mariadb", "mariadb"), ("mariadb", "mysql"),
                                              ("postgresql", "postgresql")])
def test_the_tables_are_complete_once_the_last_is_there_and_creating_them_again_passes_over_each(
        kind: str, schema: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue(kind)
    db = new_task_db(server, prefix="BOOT3_TASK_", schema=schema)  # mysql: TASK_SEQ a table, not a sequence
    repository = TaskRepository(from_jdbc(db.url, db.user, db.password), db.prefix)
    fold = str.lower if isinstance(server, PostgreSQL) else str
    tables = [fold(f"{db.prefix}{name}") for name in ("EXECUTION", "LOCK")]
    assert task_schema.complete(repository.engine, tables, repository.sequence)
    assert task_schema.create(repository.engine, schema, db.prefix) == 0
    db.server.admin(f"DROP TABLE {db.table('LOCK')}", database=db.name)
    assert not task_schema.complete(repository.engine, tables, repository.sequence)
    assert task_schema.create(repository.engine, schema, db.prefix) == 1
    assert task_schema.complete(repository.engine, tables, repository.sequence)
    repository.engine.dispose()


def test_embedded_sqlite_default(tmp_path: Path) -> None:
    for extra in ([], ["--error.message=Boom"]):
        subprocess.run([sys.executable, str(ROOT / TASK_SCRIPT), QUICK, *extra], cwd=tmp_path, timeout=60,
                       capture_output=True, check=False)
    rows = sqlite3.connect(tmp_path / "task-executions.db").execute(
        "SELECT TASK_EXECUTION_ID, TASK_NAME, EXIT_CODE, END_TIME IS NOT NULL FROM TASK_EXECUTION").fetchall()
    assert rows == [(1, "application", 0, 1), (2, "application", 1, 1)]


@pytest.mark.parametrize(("jdbc", "driver", "host", "port", "database", "query"), [
    ("jdbc:mysql://db:3306/dataflow?useSSL=false&serverTimezone=UTC&characterEncoding=UTF-8", "mysql+mysqldb",
     "db", 3306, "dataflow", {"charset": "utf8mb4", "connect_timeout": "10", "ssl_mode": "DISABLED"}),
    ("jdbc:mariadb://mariadb/dataflow?sslMode=verify-full&connectTimeout=3000", "mysql+mysqldb", "mariadb", 3306,
     "dataflow", {"charset": "utf8mb4", "connect_timeout": "3", "ssl_mode": "VERIFY_IDENTITY"}),
    ("jdbc:postgresql://pg:5433/dataflow?sslmode=require&ApplicationName=x&prepareThreshold=0", "postgresql+psycopg",
     "pg", 5433, "dataflow", {"connect_timeout": "10", "sslmode": "require", "application_name": "x"}),
])
def test_jdbc_url_conversion(jdbc: str, driver: str, host: str, port: int, database: str,
                             query: dict[str, str]) -> None:
    url = from_jdbc(jdbc, "scdf", "p@ss:/?#%").url
    assert (url.drivername, url.host, url.port, url.database, dict(url.query)) == (driver, host, port, database, query)
    assert url.password == "p@ss:/?#%"
    assert "p@ss" not in repr(url)


def test_jdbc_credentials_in_the_url_and_unsupported_schemes() -> None:
    url = from_jdbc("jdbc:mysql://db/x?user=a&password=b", None, None).url
    assert (url.username, url.password, dict(url.query).get("password")) == ("a", "b", None)
    with pytest.raises(ConfigError, match="jdbc:mysql:, jdbc:mariadb:, jdbc:postgresql: or jdbc:sqlite:"):
        from_jdbc("jdbc:oracle:thin:@db:1521:x", None, None)
    with pytest.raises(ConfigError, match=r"spring\.datasource\.url"):
        from_jdbc("jdbc:mysql://db:x/y", None, None)


def test_malicious_table_prefix_is_refused() -> None:
    source = from_jdbc("jdbc:sqlite:/tmp/never-created.db", None, None)
    with pytest.raises(ConfigError, match=r"spring\.cloud\.task\.tablePrefix"):
        TaskRepository(source, "TASK_; DROP TABLE TASK_EXECUTION; --")


def test_secrets_are_masked_in_params() -> None:
    assert sanitize("--spring.datasource.password=x") == "--spring.datasource.password=******"
    assert sanitize("--spring.datasource.url=jdbc:mysql://h/d?password=x&a=1") == (
        "--spring.datasource.url=jdbc:mysql://h/d?password=******&a=1")
    assert sanitize("--spring.datasource.url=jdbc:postgresql://scdf:p%40ss@h:5432/d") == (
        "--spring.datasource.url=jdbc:postgresql://scdf:******@h:5432/d")
    assert sanitize("--error.message=x") == "--error.message=x"


def test_body_calling_sys_exit_still_finalizes_the_row(tmp_path: Path) -> None:
    body = ("import sys; sys.path.insert(0, sys.argv[1]); from util.task_status import run_task; "
            "run_task(lambda execution: sys.exit(3), {})")
    done = subprocess.run([sys.executable, "-c", body, str(ROOT / "polyglot-python-task")], cwd=tmp_path,
                          timeout=60, capture_output=True, check=False)
    assert done.returncode == 3
    row = sqlite3.connect(tmp_path / "task-executions.db").execute(
        "SELECT EXIT_CODE, END_TIME IS NOT NULL, ERROR_MESSAGE FROM TASK_EXECUTION").fetchone()
    assert row == (3, 1, "Task exited with code 3")


SWALLOWING_BODY = """\
import logging, sys, time
sys.path.insert(0, {task!r})
from util.task_status import run_task

def body(execution):
    try:
        logging.getLogger("body").info("working")
        time.sleep(60)
    except {caught}:
        logging.getLogger("body").info("swallowed")
    return "COMPLETED"

run_task(body, {{}})
"""


@pytest.mark.parametrize("caught", ["Exception", "BaseException"])
def test_sigterm_the_body_swallows_is_still_recorded_as_the_termination(
        caught: str, tmp_path: Path, start_app: StartApp) -> None:
    script = tmp_path / "swallowing_task.py"
    script.write_text(SWALLOWING_BODY.format(task=str(ROOT / "polyglot-python-task"), caught=caught))
    app = start_app(str(script))
    app.wait_for_log("working")
    assert app.stop(signal.SIGTERM, timeout=20) == 143
    row = sqlite3.connect(tmp_path / "task-executions.db").execute(
        "SELECT EXIT_CODE, EXIT_MESSAGE, ERROR_MESSAGE FROM TASK_EXECUTION").fetchone()
    assert row == (143, None, "Task terminated by SIGTERM")


CANCELLED_BODY = """\
import asyncio, sys
sys.path.insert(0, {task!r})
from util.task_status import run_task

def body(execution):
    async def main():
        raise asyncio.CancelledError("the work was cancelled")
    asyncio.run(main())

run_task(body, {{}})
"""


def test_a_body_ending_in_a_base_exception_finishes_the_row_as_failed(tmp_path: Path, start_app: StartApp) -> None:
    """asyncio's CancelledError (or a library's KeyboardInterrupt) is no Exception: it left the row RUNNING."""
    script = tmp_path / "cancelled_task.py"
    script.write_text(CANCELLED_BODY.format(task=str(ROOT / "polyglot-python-task")))
    app = start_app(str(script))
    assert app.wait(30) == 1
    row = sqlite3.connect(tmp_path / "task-executions.db").execute(
        "SELECT END_TIME IS NOT NULL, EXIT_CODE, ERROR_MESSAGE FROM TASK_EXECUTION").fetchone()
    assert row[:2] == (1, 1)
    assert row[2].startswith("asyncio.exceptions.CancelledError: the work was cancelled\n")
    assert "Traceback" not in app.log


def test_relaunch_of_a_completed_execution_is_refused_and_leaves_the_row_alone(
        task_db: Callable[..., TaskDatabase], start_app: StartApp) -> None:
    db = task_db()
    db.insert_execution(11, "python-task")
    assert launch(start_app, db, QUICK, "--spring.cloud.task.executionid=11").wait(60) == 0
    before, params = db.rows()[11], sorted(db.params(11))
    again = launch(start_app, db, QUICK, "--spring.cloud.task.executionid=11")  # a Kubernetes Job retry
    assert again.wait(60) == 1
    assert "Invalid TaskExecution, ID 11 task is already complete" in again.log
    assert db.rows()[11] == before
    assert sorted(db.params(11)) == params


def test_ssl_true_in_a_postgresql_url_requires_a_verified_tls_connection(
        postgresql: PostgreSQL, start_app: StartApp) -> None:
    db = new_task_db(postgresql)  # the test server speaks no TLS: pgJDBC's ssl=true would refuse it too
    db.insert_execution(12, "python-task")
    args = [arg.replace("connectTimeout=5", "connectTimeout=5&ssl=true") for arg in db.args]
    app = start_app(TASK_SCRIPT, [QUICK, "--spring.cloud.task.executionid=12", *args])
    assert app.wait(60) == 1
    assert "SSL" in app.log
    assert db.rows()[12]["START_TIME"] is None


@pytest.mark.parametrize(("params", "query"), [
    ("ssl=true", {"sslmode": "verify-full", "sslrootcert": "system"}),
    ("ssl", {"sslmode": "verify-full", "sslrootcert": "system"}),
    ("ssl=true&sslrootcert=/etc/ca.pem", {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem"}),
    ("ssl=true&sslfactory=org.postgresql.ssl.NonValidatingFactory", {"sslmode": "require"}),
    ("ssl=true&sslmode=verify-ca", {"sslmode": "verify-ca"}),
    ("sslmode=disable", {"sslmode": "disable"}),
    ("ssl=false", {}),
])
def test_pgjdbc_ssl_parameters_map_to_libpq_ssl_modes(params: str, query: dict[str, str]) -> None:
    url = from_jdbc(f"jdbc:postgresql://pg/dataflow?{params}", "scdf", "x").url
    assert dict(url.query) == {"connect_timeout": "10", **query}


def test_table_prefix_with_a_trailing_newline_is_refused() -> None:
    source = from_jdbc("jdbc:sqlite:/tmp/never-created.db", None, None)
    with pytest.raises(ConfigError, match=r"spring\.cloud\.task\.tablePrefix"):
        TaskRepository(source, "TASK_\n")
