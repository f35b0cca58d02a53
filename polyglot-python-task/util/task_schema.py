"""Spring Cloud Task's DDL, run as its TaskRepositoryInitializer runs it: statement by statement, continuing on.

A statement whose table, sequence or row is already there is passed over, so launches racing to create the tables
of a fresh database all go on (and the lock then refuses all but one).
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

SCHEMAS = Path(__file__).parent / "schema"  # Spring Cloud Task's DDL of each database
# What a table prefix renames in the DDL: tables, the sequence and constraint names (never columns).
_PREFIXED = re.compile(r"\bTASK_(EXECUTION_PARAMS|EXECUTION|TASK_BATCH|SEQ|LOCK|EXEC_PARAMS_FK|EXEC_BATCH_FK)\b")
# Another launch created it first: MariaDB/MySQL table (or sequence) exists, duplicate key name, duplicate entry;
# PostgreSQL duplicate table, duplicate object, unique violation (of pg_type, by a concurrent CREATE).
_ALREADY_THERE = frozenset({1050, 1061, 1062, "42P07", "42710", "23505"})


def statements(schema: str, prefix: str) -> list[str]:
    """The statements of ``schema-<schema>.sql`` (sqlite, postgresql, mysql, mariadb) under ``prefix``."""
    ddl = (SCHEMAS / f"schema-{schema}.sql").read_text()
    found = []
    for statement in (s.strip() for s in ddl.split(";")):
        if statement:
            statement = _PREFIXED.sub(lambda m: prefix + m.group(1), statement)
            if prefix != "TASK_":  # PostgreSQL names the key's index after it: keep it unique
                statement = re.sub(r"\bLOCK_PK\b", f"{prefix}LOCK_PK", statement)
            found.append(statement)
    return found


def complete(engine: Engine, tables: list[str], sequence: str) -> bool:
    """Whether ``tables`` and ``sequence`` exist (a MySQL table, a MariaDB sequence or a PostgreSQL sequence)."""
    with engine.connect() as connection:
        inspector = inspect(connection)
        there = all(inspector.has_table(table) for table in tables)
        if there and engine.dialect.name == "postgresql":
            return inspector.has_sequence(sequence)
        return there and inspector.has_table(sequence)


def create(engine: Engine, schema: str, prefix: str) -> int:
    """Run the DDL, each statement in its own transaction; one that finds its object already there (created by
    a launch racing this one) is passed over. How many statements this run did; the first other error raises."""
    done = 0
    for statement in statements(schema, prefix):
        try:
            with engine.begin() as connection:
                connection.execute(text(statement))
            done += 1
        except SQLAlchemyError as error:
            if not already_there(error):
                raise
    return done


def already_there(error: SQLAlchemyError) -> bool:
    """The statement failed because its table, sequence, index or row exists."""
    cause = getattr(error, "orig", None)
    code = getattr(cause, "sqlstate", None) or next(iter(getattr(cause, "args", ())), None)
    return code in _ALREADY_THERE or isinstance(error, IntegrityError) or "already exists" in str(cause)
