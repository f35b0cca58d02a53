"""``spring.datasource.*`` as a JDBC driver reads it, turned into a SQLAlchemy URL for a Python driver."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from sqlalchemy import URL

from .arguments import ConfigError, Properties, Property

log = logging.getLogger(__name__)

DATASOURCE_URL = Property("spring.datasource.url", str, None,
                          "JDBC URL of the task database: jdbc:mysql:, jdbc:mariadb:, jdbc:postgresql: or "
                          "jdbc:sqlite:; absent: an embedded SQLite file, task-executions.db.")
USERNAME = Property("spring.datasource.username", str, None, "Database user.")
PASSWORD = Property("spring.datasource.password", str, None, "Database password.", secret=True)
PROPERTIES = (DATASOURCE_URL, USERNAME, PASSWORD)
EMBEDDED = "jdbc:sqlite:task-executions.db"
SUPPORTED = "jdbc:mysql:, jdbc:mariadb:, jdbc:postgresql: or jdbc:sqlite:"

_DRIVERS = {"mysql": ("mysql+mysqldb", 3306), "mariadb": ("mysql+mysqldb", 3306),
            "postgresql": ("postgresql+psycopg", 5432)}
_MYSQL_SSL_MODES = {"disable": "DISABLED", "disabled": "DISABLED", "preferred": "PREFERRED", "trust": "REQUIRED",
                    "required": "REQUIRED", "verify-ca": "VERIFY_CA", "verify_ca": "VERIFY_CA",
                    "verify-full": "VERIFY_IDENTITY", "verify_identity": "VERIFY_IDENTITY"}


@dataclass(frozen=True)
class Datasource:
    """Where the task records its executions; ``where`` names it in messages, never with credentials."""

    dialect: str  # mysql, postgresql or sqlite
    url: URL
    where: str


def datasource(properties: Properties) -> Datasource:
    """The datasource from ``spring.datasource.*`` (or the env vars Kubernetes secrets become)."""
    jdbc = properties.get(DATASOURCE_URL) or EMBEDDED
    return from_jdbc(jdbc.strip(), properties.get(USERNAME), properties.get(PASSWORD))


def from_jdbc(jdbc: str, username: str | None, password: str | None) -> Datasource:
    """Convert a JDBC URL; ConfigError lists the supported schemes for any other."""
    scheme, _, rest = jdbc.removeprefix("jdbc:").partition(":")
    if not jdbc.startswith("jdbc:") or scheme not in (*_DRIVERS, "sqlite"):
        shown = jdbc.split("//", 1)[0].split("?", 1)[0][:40]
        raise ConfigError(f"Unsupported '{DATASOURCE_URL.name}' ({shown}...): use {SUPPORTED}")
    if scheme == "sqlite":
        path = Path(rest.removeprefix("//")) if rest not in ("", ":memory:") else None
        if path is None:
            raise ConfigError(f"Property '{DATASOURCE_URL.name}' needs a file: jdbc:sqlite:/path/x.db")
        return Datasource("sqlite", URL.create("sqlite", database=str(path)), f"SQLite file {path}")
    parts = urlsplit(rest)
    if not rest.startswith("//") or not parts.hostname or "," in parts.netloc:
        raise ConfigError(f"Property '{DATASOURCE_URL.name}' must look like jdbc:{scheme}://host[:port]/database "
                          "(one host)")
    try:
        port = parts.port or _DRIVERS[scheme][1]
    except ValueError:
        raise ConfigError(f"Property '{DATASOURCE_URL.name}': the port is not a number") from None
    database = unquote(parts.path.lstrip("/"))
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    username = username or params.pop("user", None) or unquote(parts.username or "") or None
    password = password or params.pop("password", None) or unquote(parts.password or "") or None
    params.pop("user", None)
    params.pop("password", None)
    dialect = "postgresql" if scheme == "postgresql" else "mysql"
    query = _postgresql_query(params) if dialect == "postgresql" else _mysql_query(params)
    url = URL.create(_DRIVERS[scheme][0], username=username, password=password, host=parts.hostname, port=port,
                     database=database or None, query=query)
    return Datasource(dialect, url, f"{scheme} database '{database}' at {parts.hostname}:{port}")


def _mysql_query(params: dict[str, str]) -> dict[str, str]:
    """Connector/J and MariaDB Connector/J parameters that mysqlclient understands; the rest are Java-only."""
    query = {"charset": "utf8mb4", "connect_timeout": "10"}
    for key, value in params.items():
        name = key.lower()
        if name in ("sslmode", "ssl-mode") and value.lower() in _MYSQL_SSL_MODES:
            query["ssl_mode"] = _MYSQL_SSL_MODES[value.lower()]
        elif name in ("usessl", "ssl"):
            query["ssl_mode"] = "REQUIRED" if value.lower() == "true" else "DISABLED"
        elif name in ("serversslcert", "sslca", "sslrootcert"):
            query["ssl_ca"] = value.removeprefix("file:")
        elif name == "connecttimeout" and value.isascii() and value.isdigit():
            query["connect_timeout"] = str(max(1, int(value) // 1000))  # milliseconds in JDBC
        elif name == "characterencoding":
            query["charset"] = "utf8mb4" if value.lower().replace("-", "") in ("utf8", "utf8mb4") else value
        else:
            log.debug("JDBC parameter '%s' has no mysqlclient equivalent: ignored", key)
    return query


def _postgresql_query(params: dict[str, str]) -> dict[str, str]:
    """pgJDBC parameters that libpq (psycopg) understands; the rest are Java-only."""
    query = {"connect_timeout": "10"}
    for key, value in params.items():
        name = key.lower()
        if name in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
            query[name] = value
        elif name == "connecttimeout" and value.isascii() and value.isdigit():
            query["connect_timeout"] = value  # seconds in pgJDBC
        elif name == "applicationname":
            query["application_name"] = value
        elif name == "currentschema":
            query["options"] = f"-csearch_path={value}"
        elif name not in ("ssl", "sslfactory"):
            log.debug("JDBC parameter '%s' has no libpq equivalent: ignored", key)
    query.update(_postgresql_ssl({key.lower(): value for key, value in params.items()}, "sslrootcert" in query))
    return query


def _postgresql_ssl(params: dict[str, str], own_root: bool) -> dict[str, str]:
    """pgJDBC's ``ssl`` as libpq's ``sslmode``: ``sslmode`` wins; ``ssl=true`` (or bare ``ssl``) is verify-full.

    pgJDBC verifies against Java's trust store: libpq's ``sslrootcert=system`` is the same idea (the
    system's CAs) unless a root certificate is named; the NonValidatingFactory checks nothing: ``require``.
    """
    if "sslmode" in params or "ssl" not in params or params["ssl"].lower() not in ("", "true"):
        return {}
    if params.get("sslfactory", "").rsplit(".", 1)[-1] == "NonValidatingFactory":
        return {"sslmode": "require"}
    return {"sslmode": "verify-full", **({} if own_root else {"sslrootcert": "system"})}
