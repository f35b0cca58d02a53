"""Spring Cloud Task's single-instance lock: one running execution per task name, a row in ``<prefix>LOCK``.

As Spring Cloud Task 5's ``SingleInstanceTaskListener`` takes it through Spring Integration 7's
``JdbcLockRegistry``, ``DefaultLockRepository`` and ``LockRegistryLeaderInitiator``: region ``DEFAULT``,
``LOCK_KEY`` Java's ``UUID.nameUUIDFromBytes`` of the task name, ``CLIENT_ID`` the execution id, times in UTC,
``EXPIRED_AFTER`` now + ``single-instance-lock-ttl`` seconds. Taken after the execution row is recorded:
attempts every 100 ms for 500 ms, the outcome seen at the next ``single-instance-lock-check-interval``; held,
it is renewed every 500 ms (the leader initiator's heartbeat), so only a holder that died loses it, once it
expired; released (its row deleted) before the end is recorded, whatever the end.

On a lock table without ``EXPIRED_AFTER`` (Data Flow 2.11's ``TASK_LOCK`` and ``BOOT3_TASK_LOCK``), as the Spring
Cloud Task 2.x and 3.x apps Data Flow 2.11 launches take it through Spring Integration 5.5 to 6.x: taking or
renewing writes ``CREATED_DATE``, a row whose ``CREATED_DATE`` is older than the ttl is expired, and the ttl is in
milliseconds, as they pass it to ``setTimeToLive(int)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    and_,
    create_engine,
    delete,
    event,
    inspect,
    or_,
    update,
)
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from .arguments import ConfigError, Properties, Property
from .datasource import Datasource
from .task_signals import Pending, TaskTerminatedError, pause
from .task_text import stack_trace

log = logging.getLogger(__name__)

ENABLED = Property("spring.cloud.task.single-instance-enabled", bool, False,
                   "Refuse to run while an execution of the same task name runs, as Spring Cloud Task does "
                   "(a row in TASK_LOCK).")
TTL = Property("spring.cloud.task.single-instance-lock-ttl", int, 2**31 - 1,
               "Seconds a lock outlives its last renewal (every 500 ms while held): how long the lock of a "
               "killed task blocks the next launch.")
CHECK_INTERVAL = Property("spring.cloud.task.single-instance-lock-check-interval", int, 500,
                          "Milliseconds between the launch's checks whether it got the lock.")
PROPERTIES = (ENABLED, TTL, CHECK_INTERVAL)
REGION = "DEFAULT"
ATTEMPTS_FOR, ATTEMPT_EVERY, HEARTBEAT = 0.5, 0.1, 0.5  # Spring Integration's defaults, seconds
STATEMENT_TIMEOUT = 5  # seconds a lock statement may wait (for another's row lock): then it fails
DATABASE_ERRORS = (SQLAlchemyError, UnicodeError)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A busy database, not a broken one: a deadlock or lock wait timeout (MySQL), a serialization failure,
# deadlock or lock not available (PostgreSQL), a locked file (SQLite), a statement over STATEMENT_TIMEOUT.
# Spring retries these too.
_CONTENTION = frozenset({1205, 1213, 1969, "40001", "40P01", "55P03", "57014"})

# The run's outcome, as task_status records it: exit code, exit message, error message.
Outcome = tuple[int, str | None, str | None]


class TaskAlreadyRunningError(Exception):
    """Another execution of the task name holds the lock (Spring's TaskExecutionException, its message)."""

    def __init__(self, name: str) -> None:
        super().__init__(f'Task with name "{name}" is already running.')


@dataclass(frozen=True)
class LockSettings:
    """The single-instance properties of one launch."""

    ttl: timedelta
    check_interval: float  # seconds


def settings(properties: Properties) -> LockSettings | None:
    """The lock's settings, or None when ``single-instance-enabled`` is off; ConfigError on a bad value."""
    if not properties.get(ENABLED):
        return None
    ttl, interval = properties.get(TTL), properties.get(CHECK_INTERVAL)
    for prop, value in ((TTL, ttl), (CHECK_INTERVAL, interval)):
        if not 0 < value <= 2**31 - 1:
            raise ConfigError(f"Invalid value {value} for property '{prop.name}': expected a whole number from 1 "
                              f"to {2**31 - 1}")
    return LockSettings(timedelta(seconds=ttl), interval / 1000)


def lock_key(name: str) -> str:
    """``LOCK_KEY`` of a task name: the name itself when it is a UUID, else Java's ``UUID.nameUUIDFromBytes`` of
    its UTF-8 bytes (MD5, version 3), as Spring Integration's ``UUIDConverter`` makes it. A UUID is the strict
    8-4-4-4-12 form its ``UUID_REGEX`` matches (Spring Integration 6.2 and later; 5.x to 6.1 tried Java's lenient
    ``UUID.fromString``, which also reads shorter groups such as ``dead-beef-cafe-face-fade``)."""
    if _UUID.fullmatch(name):
        return str(uuid.UUID(name))
    return str(uuid.UUID(bytes=hashlib.md5(name.encode("utf-8", "replace"), usedforsecurity=False).digest(),
                         version=3))


def guarded(lock_settings: LockSettings | None, source: Datasource, prefix: str, name: str, execution_id: int,
            retry_seconds: float, run: Callable[[], Outcome], pending: Pending = lambda: None) -> Outcome:
    """``run()`` while holding the lock (without settings: just ``run()``); when another execution holds it,
    or the database fails, the refusal's outcome (exit code 1) without running; when a signal is ``pending``
    before the body, its termination (128+signal). Releasing retries a database that is down for
    ``retry_seconds``, unless a signal is pending."""
    if lock_settings is None:
        return run()
    lock = TaskLock(source, prefix, name, execution_id, lock_settings)
    try:
        signum = lock.acquire(pending)
    except TaskAlreadyRunningError as error:
        log.error("%s", error)
        lock.close()
        return 1, None, stack_trace(error)
    except DATABASE_ERRORS as error:
        signum = pending()
        if not signum:
            message = (f"Cannot take the single-instance lock of task {name} in {lock.table.name} of the "
                       f"{source.where}: {_reason(error)}")
            log.error("%s", message)
            lock.close()
            return 1, None, message
    if signum:  # as a body's termination: the row records it, a lock row this launch may have taken goes
        terminated = TaskTerminatedError(signum)
        log.warning("%s while taking the single-instance lock: recording execution %d as failed", terminated,
                    execution_id)
        lock.release(retry_seconds, pending)
        return terminated.exit_code, None, str(terminated)
    try:
        return run()
    finally:
        lock.release(retry_seconds, pending)


class TaskLock:
    """The lock of one task name, taken for one execution."""

    def __init__(self, source: Datasource, prefix: str, name: str, execution_id: int,
                 lock_settings: LockSettings) -> None:
        self.engine = _engine(source)
        table = f"{prefix}LOCK".lower() if source.dialect == "postgresql" else f"{prefix}LOCK"
        self.table = Table(table, MetaData(), Column("lock_key", String(36), primary_key=True),
                           Column("region", String(100), primary_key=True), Column("client_id", String(36)),
                           Column("created_date", DateTime), Column("expired_after", DateTime))
        self.name, self.key, self.client = name, lock_key(name), str(execution_id)
        self.settings = lock_settings
        self.legacy = False  # a table without EXPIRED_AFTER: Spring Integration 5.5 to 6.x's protocol
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self, pending: Pending) -> int | None:
        """Take the lock as Spring's listener does, or raise TaskAlreadyRunningError (or a database error); the
        signal that arrived meanwhile, if any (the lock may then be held: release it)."""
        with self.engine.connect() as connection:  # Data Flow 2.11's table has no EXPIRED_AFTER
            columns = {column["name"].lower() for column in inspect(connection).get_columns(self.table.name)}
        self.legacy = "expired_after" not in columns
        started, acquired = time.monotonic(), False
        deadline = started + ATTEMPTS_FOR
        while True:
            try:
                acquired = self._try()
            except OperationalError as error:
                if pending() or not _contended(error) or time.monotonic() >= deadline:
                    raise
            if acquired or time.monotonic() >= deadline or pause(ATTEMPT_EVERY, pending):
                break
        if acquired:
            log.info("Task %s (execution %s) holds the single-instance lock %s in %s", self.name, self.client,
                     self.key, self.table.name)
            self._heartbeat = threading.Thread(target=self._renew, name="task-lock-heartbeat", daemon=True)
            self._heartbeat.start()
        # The launch sees the outcome at its next check, as Spring's listener polls it.
        interval = self.settings.check_interval
        elapsed = time.monotonic() - started
        signum = pending() or pause(max(0.0, max(1, math.ceil(elapsed / interval)) * interval - elapsed), pending)
        if not acquired and not signum:
            raise TaskAlreadyRunningError(self.name)
        return signum

    def _try(self) -> bool:
        """One attempt: renew our row or take an expired one, else insert it; False when another holds it."""
        row = self.table.c
        now = _utc_now()
        expired = row.created_date < now - self.settings.ttl / 1000 if self.legacy else row.expired_after < now
        with self.engine.begin() as connection:
            taken = connection.execute(
                update(self.table)
                .where(row.region == REGION, row.lock_key == self.key, or_(row.client_id == self.client, expired))
                .values(client_id=self.client, **self._stamp(now))).rowcount
        if taken:
            return True
        now = _utc_now()
        try:
            with self.engine.begin() as connection:
                connection.execute(self.table.insert().values(
                    {"region": REGION, "lock_key": self.key, "client_id": self.client, "created_date": now,
                     **self._stamp(now)}))
        except IntegrityError:
            return False
        return True

    def _stamp(self, now: datetime) -> dict[str, datetime]:
        """What taking or renewing the lock writes: EXPIRED_AFTER, or on a legacy table CREATED_DATE."""
        return {"created_date": now} if self.legacy else {"expired_after": now + self.settings.ttl}

    def _extend(self) -> bool:
        """Push our row's expiry on; False when it is no longer ours. Never inserts: a renewal that outlives the
        release cannot bring the row back."""
        row = self.table.c
        with self.engine.begin() as connection:
            return bool(connection.execute(
                update(self.table).where(row.region == REGION, row.lock_key == self.key, row.client_id == self.client)
                .values(**self._stamp(_utc_now()))).rowcount)

    def _renew(self) -> None:
        """The heartbeat: every 500 ms, push EXPIRED_AFTER on; a failure is logged once a streak of them (a
        database going down fails in several ways as it goes), then retried."""
        trouble: str | None = None
        while not self._stop.wait(HEARTBEAT):
            try:
                problem = None if self._extend() else "its row is gone (it expired and another execution took it, " \
                                                      "or it was deleted)"
            except DATABASE_ERRORS as error:
                problem = f"the database failed: {_reason(error)}"
            if problem and not trouble:
                log.warning("Cannot renew the single-instance lock of task %s: %s; retrying", self.name, problem)
            elif trouble and not problem:
                log.info("Renewed the single-instance lock of task %s again", self.name)
            trouble = problem

    def release(self, retry_seconds: float, pending: Pending = lambda: None) -> None:
        """Stop the heartbeat and delete our row, retrying a database that is down (0.5 s doubling to 8 s) for
        ``retry_seconds``, or until a signal is pending; a failure then is one warning (the row stays until it
        expires). Each statement gives up after ``STATEMENT_TIMEOUT``, so the release is bounded."""
        self._stop.set()
        joined = time.monotonic() + STATEMENT_TIMEOUT + 1
        while self._heartbeat is not None and self._heartbeat.is_alive() and time.monotonic() < joined and \
                not pending():
            self._heartbeat.join(0.05)  # it only updates our row: deleting while it runs cannot leave a row
        deadline, delay = time.monotonic() + retry_seconds, 0.5
        try:
            while True:
                try:
                    if self._delete():
                        log.info("Released the single-instance lock of task %s", self.name)
                    return
                except DATABASE_ERRORS as error:
                    remaining = deadline - time.monotonic()
                    if isinstance(error, (OperationalError, InterfaceError)) and remaining > 0 and not pending():
                        log.warning("Cannot release the single-instance lock of task %s (%s); retrying in %.1f s",
                                    self.name, _reason(error), min(delay, remaining))
                        if not pause(min(delay, remaining), pending):
                            delay = min(delay * 2, 8.0)
                            continue
                    log.warning("Cannot release the single-instance lock of task %s (LOCK_KEY %s in %s): %s; it "
                                "stays until it expires", self.name, self.key, self.table.name, _reason(error))
                    return
        finally:
            self.close()

    def _delete(self) -> bool:
        """Delete our row; False when there was none (never taken, or taken over once expired)."""
        row = self.table.c
        with self.engine.begin() as connection:
            return bool(connection.execute(delete(self.table).where(
                and_(row.region == REGION, row.lock_key == self.key, row.client_id == self.client))).rowcount)

    def close(self) -> None:
        self._stop.set()
        self.engine.dispose()


def _engine(source: Datasource) -> Engine:
    """The lock's engine: a statement that waits for another's row lock fails after ``STATEMENT_TIMEOUT`` (then
    retried, or one line), so neither a launch nor its release hangs. READ COMMITTED, as Spring takes it: in
    InnoDB's REPEATABLE READ two launches' gap locks would deadlock each other. NullPool, as the task's own writes:
    no idle connection between heartbeats (one would hold off a PostgreSQL smart shutdown, and break unseen when
    the database restarts)."""
    if source.dialect == "sqlite":
        return create_engine(source.url, poolclass=NullPool, connect_args={"timeout": STATEMENT_TIMEOUT})
    url = source.url
    if source.dialect == "postgresql":
        ms = STATEMENT_TIMEOUT * 1000
        options = f"{url.query.get('options', '')} -c lock_timeout={ms} -c statement_timeout={ms}".strip()
        url = url.update_query_dict({"options": options})
    engine = create_engine(url, poolclass=NullPool, isolation_level="READ COMMITTED")
    if source.dialect == "mysql":
        event.listen(engine, "connect", _mysql_timeouts)
    return engine


def _mysql_timeouts(connection: Any, _record: Any) -> None:
    """Per session: InnoDB's row lock wait, and MariaDB's limit of any statement (MySQL has none)."""
    cursor = connection.cursor()
    try:
        cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {STATEMENT_TIMEOUT}")
        if "mariadb" in connection.get_server_info().lower():
            cursor.execute(f"SET SESSION max_statement_time = {STATEMENT_TIMEOUT}")
    finally:
        cursor.close()


def _utc_now() -> datetime:
    """Spring Integration's clock: ``LocalDateTime.now(ZoneOffset.UTC)``, to the microsecond."""
    return datetime.now(UTC).replace(tzinfo=None)


def _contended(error: OperationalError) -> bool:
    code = getattr(error.orig, "sqlstate", None) or next(iter(getattr(error.orig, "args", ())), None)
    return code in _CONTENTION or "database is locked" in str(error.orig)


def _reason(error: BaseException) -> str:
    """The driver's own message, one line, without SQLAlchemy's statement and link."""
    cause = getattr(error, "orig", None) or error
    return " ".join(str(cause).split())[:300]
