"""MariaDB and PostgreSQL from Debian's packages, run as child processes in temp dirs on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .tansu import accepts, free_port
from .waiting import terminate, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _missing(*commands: str) -> None:
    absent = [c for c in commands if not (shutil.which(c) or Path(c).exists())]
    if absent:
        raise RuntimeError(f"missing {', '.join(absent)}: run `make system-deps` (Debian: mariadb-server, "
                           "postgresql)")


class _Server:
    """A database server process on a free loopback port, its files in a temp dir."""

    name = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"polyglot-{self.name}-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def _launch(self, command: Sequence[str]) -> None:
        with (self.dir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: self._answers() or self.process.poll() is not None, 60, f"{self.name} on {self.port}")
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {(self.dir / 'server.log').read_text()[-2000:]}")

    def _answers(self) -> bool:
        """Whether the server runs a query: an open port alone can still mean "the database system is starting up"."""
        if not accepts(self.port):
            return False
        try:
            self.admin("SELECT 1")
        except Exception:  # noqa: BLE001 - any refusal means not ready yet; the deadline reports it
            return False
        return True

    def admin(self, *statements: str, database: str | None = None) -> list[tuple]:
        """Run statements as the server's superuser; the rows of the last one."""
        raise NotImplementedError

    def stop(self) -> None:
        terminate(self.process, 30)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class MariaDB(_Server):
    name = "mariadb"
    scheme = "mariadb"

    def start(self) -> MariaDB:
        _missing("mariadb-install-db", "mariadbd")
        data = self.dir / "data"
        if not data.exists():
            subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                            "--auth-root-authentication-method=socket", "--skip-test-db"],
                           check=True, capture_output=True, timeout=120)
        self._launch(["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={self.dir / 'sock'}",
                      f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root",
                      f"--pid-file={self.dir / 'pid'}", "--skip-log-bin"])
        self.admin("DELETE FROM mysql.global_priv WHERE User = ''", "FLUSH PRIVILEGES")  # no anonymous users
        return self

    def admin(self, *statements: str, database: str | None = None) -> list[tuple]:
        """Run statements as root over the socket; the rows of the last one."""
        import MySQLdb

        connection = MySQLdb.connect(unix_socket=str(self.dir / "sock"), user="root", database=database or "",
                                     autocommit=True)
        try:
            cursor = connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            return list(cursor.fetchall() or [])
        finally:
            connection.close()

    def create_database(self, name: str, user: str, password: str, ddl: str, charset: str | None = None) -> None:
        """A database (the server's default character set unless ``charset``), its user, its tables."""
        self.admin(f"CREATE DATABASE `{name}`" + (f" CHARACTER SET {charset}" if charset else ""),
                   f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY {_sql_string(password)}",
                   f"GRANT ALL ON `{name}`.* TO '{user}'@'%'")
        statements = [s for s in ddl.split(";") if s.strip()]
        if statements:
            self.admin(*statements, database=name)


class PostgreSQL(_Server):
    name = "postgresql"
    scheme = "postgresql"

    def start(self) -> PostgreSQL:
        _missing(str(PG_BIN / "initdb"), str(PG_BIN / "postgres"), "runuser")
        data = self.dir / "data"
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o755)
        if not data.exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data),
                            "--auth-local=trust", "--auth-host=scram-sha-256", "-U", "postgres"],
                           check=True, capture_output=True, timeout=120)
        self._launch(["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data), "-p",
                      str(self.port), "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1"])
        return self

    def admin(self, *statements: str, database: str | None = None) -> list[tuple]:
        import psycopg

        with psycopg.connect(host=str(self.dir), port=self.port, user="postgres", dbname=database or "postgres",
                             autocommit=True) as connection:
            rows: list[tuple] = []
            for statement in statements:
                cursor = connection.execute(statement)
                rows = cursor.fetchall() if cursor.description else []
            return rows

    def create_database(self, name: str, user: str, password: str, ddl: str, charset: str | None = None) -> None:
        """A database (the server's default encoding unless ``charset``), its role, its tables."""
        exists = self.admin(f"SELECT 1 FROM pg_roles WHERE rolname = {_sql_string(user)}")
        if not exists:
            self.admin(f'CREATE ROLE "{user}" LOGIN PASSWORD {_sql_string(password)}')
        encoding = f" ENCODING '{charset}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" if charset else ""
        self.admin(f'CREATE DATABASE "{name}" OWNER "{user}"{encoding}')
        statements = [s for s in ddl.split(";") if s.strip()]
        self.admin(f'SET ROLE "{user}"', *statements, database=name)


def _sql_string(value: str) -> str:
    """A SQL string literal (test values carry no backslash, whose meaning differs between the two servers)."""
    return "'" + value.replace("'", "''") + "'"
