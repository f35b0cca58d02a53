"""Spring Cloud Task's lifecycle on Data Flow's database: the TASK_EXECUTION row and its params.

Each step commits at once, so Data Flow and the Composed Task Runner see it. A row is always
finalized: on success, on an exception, and on SIGTERM, with the text the database refuses written
reduced (``task_text``). Never fake success: if the database cannot record the outcome, the process
exits non-zero.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, InternalError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from . import logs, task_lock, task_schema
from .arguments import CONFIG_PROPERTIES, ConfigError, Property
from .datasource import PROPERTIES as DATASOURCE_PROPERTIES
from .datasource import Datasource, datasource
from .task_metrics import PROPERTIES as METRICS_PROPERTIES
from .task_metrics import TaskMetrics
from .task_signals import Signals, TaskTerminatedError
from .task_text import FORMS, MESSAGE_SIZE, Fit, fitter, stack_trace

log = logging.getLogger(__name__)

TABLE_PREFIX = Property("spring.cloud.task.tablePrefix", str, "TASK_",
                        "Prefix of the task tables (Data Flow 2.11 passes BOOT3_TASK_ for Boot 3 apps).")
EXECUTION_ID = Property("spring.cloud.task.executionid", int, None,
                        "Execution row that Data Flow created; absent: the task creates its own.")
TASK_NAME = Property("spring.cloud.task.name", str, None, "Task name; default spring.application.name.")
APP_NAME = Property("spring.application.name", str, "application", "Application name, the default task name.")
PARENT_ID = Property("spring.cloud.task.parent-execution-id", int, None, "Execution id of the composed task.")
EXTERNAL_ID = Property("spring.cloud.task.external-execution-id", str, None,
                       "External execution id, kept only when the server set none.")
INITIALIZE = Property("spring.cloud.task.initialize-enabled", bool, True,
                      "Create the task tables when they are missing.")
END_RETRY = Property("task.end.retry-seconds", float, 60.0,
                     "How long recording the end retries, with back-off, while the database is unreachable.")
PROPERTIES = (*DATASOURCE_PROPERTIES, TABLE_PREFIX, EXECUTION_ID, TASK_NAME, APP_NAME, PARENT_ID, EXTERNAL_ID,
              INITIALIZE, END_RETRY, *task_lock.PROPERTIES, *METRICS_PROPERTIES, *logs.PROPERTIES,
              *CONFIG_PROPERTIES)
# What a write of the task tables can raise: the driver's errors, or a value its encoding cannot hold.
DATABASE_ERRORS = (SQLAlchemyError, UnicodeError)
# MariaDB's and MySQL's refusals of a value that mysqlclient raises as OperationalError, not DataError:
# 1366 incorrect string value (a character the column's charset lacks), 1300 invalid character string,
# 3988 conversion from the connection's collation impossible.
_MYSQL_REFUSALS = frozenset({1300, 1366, 3988})
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,49}")
_SECRET_KEY = re.compile(r"password|secret|credential|token|jaas", re.I)


@dataclass(frozen=True)
class TaskExecution:
    """What the task body knows of its run."""

    id: int
    name: str


class TaskRepository:
    """The task tables of one database, under one prefix."""

    def __init__(self, source: Datasource, prefix: str) -> None:
        if not _IDENTIFIER.fullmatch(prefix):
            raise ConfigError(f"Invalid value for property '{TABLE_PREFIX.name}': a table prefix is letters, "
                              "digits and underscores, starting with a letter (such as TASK_)")
        self.source, self.prefix = source, prefix
        # NullPool: a fresh connection for each step, so a long task body outlives no idle connection.
        self.engine: Engine = create_engine(source.url, poolclass=NullPool)
        # PostgreSQL folds the DDL's unquoted names to lower case; MySQL keeps them as written.
        fold = str.lower if source.dialect == "postgresql" else str
        metadata = MetaData()
        self.execution = Table(
            fold(f"{prefix}EXECUTION"), metadata,
            Column("task_execution_id", BigInteger, primary_key=True), Column("start_time", DateTime),
            Column("end_time", DateTime), Column("task_name", String(100)), Column("exit_code", Integer),
            Column("exit_message", String(MESSAGE_SIZE)), Column("error_message", String(MESSAGE_SIZE)),
            Column("last_updated", DateTime), Column("external_execution_id", String(255)),
            Column("parent_execution_id", BigInteger))
        self.params = Table(fold(f"{prefix}EXECUTION_PARAMS"), metadata,
                            Column("task_execution_id", BigInteger), Column("task_param", String(MESSAGE_SIZE)))
        self.sequence, self.lock = fold(f"{prefix}SEQ"), fold(f"{prefix}LOCK")

    def initialize(self) -> None:
        """Create the tables from the dialect's Spring Cloud Task DDL when one is missing, as Spring does: a table
        a launch racing this one created meanwhile is passed over (``task_schema``)."""
        if task_schema.complete(self.engine, [self.execution.name, self.lock], self.sequence):
            return
        if task_schema.create(self.engine, self._schema(), self.prefix):
            log.info("Created the task tables with prefix %s in the %s", self.prefix, self.source.where)

    def _schema(self) -> str:
        if self.source.dialect != "mysql":
            return self.source.dialect
        with self.engine.connect() as connection:
            version = connection.execute(text("SELECT VERSION()")).scalar_one()
        return "mariadb" if "mariadb" in str(version).lower() else "mysql"

    def start(self, execution_id: int | None, name: str, external_id: str | None, parent_id: int | None,
              arguments: Sequence[str], fit: Fit) -> int:
        """Record the start, as Spring Cloud Task does, in one transaction; returns the execution id.

        ``fit`` makes each text storable (see ``task_text``).
        """
        now = datetime.now()
        name, external = fit("TASK_NAME", name), fit("EXTERNAL_EXECUTION_ID", external_id)
        with self.engine.begin() as connection:
            if execution_id is None:
                execution_id = self._next_id(connection)
                connection.execute(self.execution.insert().values(
                    task_execution_id=execution_id, start_time=now, task_name=name, last_updated=now,
                    external_execution_id=external, parent_execution_id=parent_id))
            else:
                row = self.execution.c
                updated = connection.execute(self.execution.update()
                                             .where(row.task_execution_id == execution_id, row.end_time.is_(None))
                                             .values(start_time=now, task_name=name, last_updated=now,
                                                     parent_execution_id=parent_id,
                                                     external_execution_id=func.coalesce(
                                                         row.external_execution_id, external)))
                if updated.rowcount == 0:
                    self._refuse(connection, execution_id)
            if arguments:
                connection.execute(self.params.insert(), [
                    {"task_execution_id": execution_id, "task_param": fit("TASK_PARAM", sanitize(arg))}
                    for arg in arguments])
        return execution_id

    def _refuse(self, connection: Any, execution_id: int) -> None:
        """Why a launch cannot take this row: it is missing, or it already ended (never re-open it)."""
        found = connection.execute(select(self.execution.c.end_time)
                                   .where(self.execution.c.task_execution_id == execution_id)).first()
        if found is None:
            raise LookupError(f"no row {execution_id} in {self.execution.name} of the {self.source.where}; "
                              f"check '{EXECUTION_ID.name}' and '{TABLE_PREFIX.name}'")
        raise LookupError(f"Invalid TaskExecution, ID {execution_id} task is already complete")

    def _next_id(self, connection: Any) -> int:
        """The next id from TASK_SEQ, the way of each dialect."""
        if self.source.dialect == "postgresql":
            return connection.execute(text(f"SELECT nextval('{self.sequence}')")).scalar_one()
        if self.source.dialect == "mysql":
            kind = connection.execute(text(
                "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"),
                {"t": self.sequence}).scalar_one_or_none()
            if kind == "SEQUENCE":  # MariaDB
                return connection.execute(text(f"SELECT NEXTVAL({self.sequence})")).scalar_one()
            connection.execute(text(f"UPDATE {self.sequence} SET ID = LAST_INSERT_ID(ID + 1)"))
            return connection.execute(text("SELECT LAST_INSERT_ID()")).scalar_one()
        connection.execute(text(f"UPDATE {self.sequence} SET ID = ID + 1"))  # SQLite: serialised by the write lock
        return connection.execute(text(f"SELECT ID FROM {self.sequence}")).scalar_one()

    def finish(self, execution_id: int, exit_code: int, exit_message: str | None, error: str | None,
               fit: Fit) -> None:
        """Record END_TIME, EXIT_CODE, EXIT_MESSAGE and ERROR_MESSAGE (each text made storable by ``fit``)."""
        now = datetime.now()
        with self.engine.begin() as connection:
            connection.execute(self.execution.update()
                               .where(self.execution.c.task_execution_id == execution_id)
                               .values(end_time=now, exit_code=exit_code, last_updated=now,
                                       exit_message=fit("EXIT_MESSAGE", exit_message or None),
                                       error_message=fit("ERROR_MESSAGE", error or None)))

    def rows(self) -> list[dict[str, Any]]:
        """Every execution row, oldest first (for the demo and operators)."""
        with self.engine.connect() as connection:
            result = connection.execute(select(self.execution).order_by(self.execution.c.task_execution_id))
            return [dict(row._mapping) for row in result]


def sanitize(argument: str) -> str:
    """A launch argument as TASK_EXECUTION_PARAMS keeps it: secrets masked, as Data Flow shows them."""
    key, sep, _ = argument.partition("=")
    if sep and _SECRET_KEY.search(key):
        return f"{key}=******"
    argument = re.sub(r"(://[^/@:\s]*:)[^@/\s]*@", r"\1******@", argument)  # user:password@host
    return re.sub(r"(?i)(password=)[^&;]*", r"\1******", argument)


# The task body: the execution in, keyword options from properties, an optional exit message out.
Body = Callable[..., str | None]
T = TypeVar("T")


def run_task(body: Body, options: Mapping[str, Property]) -> None:
    """Record the run around ``body(execution, **options)`` and exit 0, 1 (exception) or 128+signal."""
    logs.start_logging()
    signals = Signals()
    try:
        properties, values = logs.read_properties(options)
        source = datasource(properties)
        repository = TaskRepository(source, properties.get(TABLE_PREFIX))
        name = properties.get(TASK_NAME) or properties.get(APP_NAME)
        launch = (properties.get(EXECUTION_ID), name, properties.get(EXTERNAL_ID), properties.get(PARENT_ID))
        initialize = properties.get(INITIALIZE) or source.dialect == "sqlite"
        end_retry = properties.get(END_RETRY)
        single_instance = task_lock.settings(properties)
        metrics = TaskMetrics.configure(properties)
    except ConfigError as error:
        log.error("Configuration error: %s", error)
        sys.exit(1)
    try:
        if initialize:
            repository.initialize()
        started = "the new execution" if launch[0] is None else f"execution {launch[0]}"
        execution = TaskExecution(_recording(lambda fit: repository.start(*launch, sys.argv[1:], fit), 0,
                                             "start", started, source.where), name)
    except (*DATABASE_ERRORS, LookupError) as error:
        log.error("Cannot record the task start in the %s: %s", source.where, _reason(error))
        sys.exit(1)
    metrics.start(execution.id, name, launch[3], launch[2])
    exit_code, exit_message, error_text = task_lock.guarded(  # the lock of single-instance-enabled, if on
        single_instance, source, repository.prefix, name, execution.id, end_retry,
        lambda: _outcome(metrics.watch(body), execution, values, signals), signals.waiting)
    metrics.end(exit_code)
    try:
        _recording(lambda fit: repository.finish(execution.id, exit_code, exit_message, error_text, fit), end_retry,
                   "end", f"execution {execution.id}", source.where)
    except DATABASE_ERRORS as error:
        retried = f" after {end_retry:g} s of retries" if _transient(error) else ""
        log.error("Cannot record the end of execution %d in the %s%s: %s; the row stays RUNNING until an operator "
                  "finalizes it", execution.id, source.where, retried, _reason(error))
        metrics.close()
        sys.exit(exit_code or 1)
    log.info("Execution %d of %s %s (exit code %d)", execution.id, execution.name,
             "completed" if exit_code == 0 else "failed", exit_code)
    metrics.close()
    sys.exit(exit_code)


def _outcome(body: Body, execution: TaskExecution, values: dict[str, Any],
             signals: Signals) -> tuple[int, str | None, str | None]:
    """Run the body; its exit code, exit message and error message."""
    try:
        with signals.armed():
            exit_message = body(execution, **values)
        exit_code, error_text = 0, None
    except TaskTerminatedError as error:
        log.warning("%s: recording execution %d as failed", error, execution.id)
        exit_code, exit_message, error_text = error.exit_code, None, str(error)
    except SystemExit as error:  # the body called sys.exit(): its code is the outcome
        exit_code = error.code if isinstance(error.code, int) else int(error.code is not None)
        exit_message, error_text = None, None if exit_code == 0 else f"Task exited with code {exit_code}"
    except BaseException as error:  # noqa: BLE001 - any failure of the body (asyncio's CancelledError, a library's
        # KeyboardInterrupt too) is the task's failure: the row is finished, never left RUNNING
        log.error("Task %s (execution %d) failed: %s: %s", execution.name, execution.id, type(error).__name__, error)
        exit_code, exit_message, error_text = 1, None, stack_trace(error)
    if signals.terminated and exit_code != 128 + signals.terminated:
        terminated = TaskTerminatedError(signals.terminated)
        log.warning("%s, but the task body caught it: recording execution %d as failed", terminated, execution.id)
        exit_code, exit_message, error_text = terminated.exit_code, None, str(terminated)
    return exit_code, exit_message, error_text


def _recording(write: Callable[[Fit], T], seconds: float, step: str, execution: str, where: str) -> T:
    """Run ``write``, the ``step`` of ``execution``: a refused value is written again at once one form down
    (``task_text.FORMS``); what a retry can mend (``_transient``) is retried with back-off (0.5 s to 8 s)
    for ``seconds``.
    """
    deadline, delay, form, warned = time.monotonic() + seconds, 0.5, 0, set[str]()
    what = f"the {step} of {execution}"
    while True:
        try:
            return write(fitter(form, execution, warned))
        except DATABASE_ERRORS as error:
            if _refused(error) and form < len(FORMS) - 1:
                form += 1
                log.warning("The %s refused a value for %s: %s; writing the text %s", where, what, _reason(error),
                            FORMS[form])
                continue
            remaining = deadline - time.monotonic()
            if not _transient(error) or remaining <= 0:
                raise
            pause = min(delay, remaining)
            log.warning("Cannot record %s in the %s (%s); retrying in %.1f s", what, where, _reason(error), pause)
            time.sleep(pause)
            delay = min(delay * 2, 8.0)


def _refused(error: Exception) -> bool:
    """The database refused a value: the same write can never succeed, whatever the wait.

    psycopg: DataError (NUL, a value too long), or UnicodeEncodeError for a character the database's encoding
    lacks; mysqlclient: DataError (1406, too long), OperationalError 1366 for a character the column's charset
    lacks; both: UnicodeEncodeError for a lone surrogate.
    """
    if isinstance(error, (DataError, UnicodeError)):
        return True
    if not isinstance(error, OperationalError):
        return False
    args = getattr(error.orig, "args", ())
    return bool(args) and args[0] in _MYSQL_REFUSALS


def _transient(error: Exception) -> bool:
    """Connection loss, a database unreachable, restarting or read-only (a failover), a deadlock: a retry may pass.

    A refused value, an SQL or privilege error (ProgrammingError, IntegrityError) would fail again: no retry.
    """
    if _refused(error):
        return False
    if isinstance(error, (OperationalError, InterfaceError, InternalError)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _reason(error: Exception) -> str:
    """The driver's own message, one line, without SQLAlchemy's statement and link."""
    cause = getattr(error, "orig", None) or error
    return " ".join(str(cause).split())[:300]
