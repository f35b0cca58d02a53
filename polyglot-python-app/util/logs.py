"""One Spring-like log line format; levels from ``logging.level.root`` and ``logging.level.<logger>``; the
properties every recipe reads first, logging configured from them; values shown without their passwords."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from .arguments import ConfigError, Properties, Property

log = logging.getLogger(__name__)

LEVEL_ROOT = Property("logging.level.root", str, "INFO", "Log level: TRACE, DEBUG, INFO, WARN, ERROR or OFF.")
PROPERTIES = (LEVEL_ROOT,)
_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL, "off": logging.CRITICAL + 10}
# The Kafka client is chatty at INFO; Spring apps show its warnings and errors only.
_QUIET = {"kafka": logging.WARNING, "pika": logging.WARNING}
# The clients' own loggers: a broker that keeps failing makes them repeat a line many times a second.
CLIENT_LOGGERS = ("kafka", "librdkafka", "pika")
REPEAT_SECONDS = 30.0  # a client's line that repeats (numbers aside) is written once in this long
FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)5s %(process)d --- [%(threadName)15.15s] %(name)-24.24s : %(message)s"


def start_logging() -> None:
    """Log at INFO in the Spring format until the properties say otherwise."""
    formatter = logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    handler.addFilter(Repeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.addLevelName(logging.WARNING, "WARN")
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)


def shown(value: str, secret: bool = False) -> str:
    """``value`` as an error or a log line may show it: quoted, the password of each ``[scheme://]user:password@``
    masked (``amqp://app:****@rabbit``); a ``secret`` one (``Properties.secret``: a config tree's) not at all."""
    if secret:
        return "<hidden>"
    masked = _USERINFO.sub(_mask, value)
    return repr(masked if len(masked) <= 200 else f"{masked[:200]}…")


def cut_secret(whole: str, item: str) -> bool:
    """Whether ``item``, one comma-separated entry of ``whole``, may be a password's first part (``whole`` holds a
    ``user:password@`` that ``item`` does not reach): then it is not shown."""
    return "@" in whole and "@" not in item


# From the user to the last '@' (a password may hold '@', ' ', ';'): what shown() masks.
_USERINFO = re.compile(r"^(\s*(?:[A-Za-z][\w+.-]*://)?)(.*)@")


def _mask(match: re.Match[str]) -> str:
    scheme, userinfo = match.groups()
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{user}:****@" if colon else f"{scheme}****@"


def configure_logging(properties: Properties) -> None:
    """Apply ``logging.level.*``; ConfigError names a level that is not one."""
    for name, value in properties.subtree("logging.level", as_written=True).items():
        level = _LEVELS.get(value.strip().lower())
        if level is None:
            secret = properties.secret(Property(f"logging.level.{name}"))
            raise ConfigError(f"Invalid value {shown(value, secret)} for property 'logging.level.{name}': "
                              "expected TRACE, DEBUG, INFO, WARN, ERROR or OFF")
        logging.getLogger(None if name.lower() == "root" else name).setLevel(level)


class Repeats(logging.Filter):
    """Writes a client's line once per ``REPEAT_SECONDS`` while it repeats (its numbers aside), then says how
    many like it were left out: a broker address that resets every connection must not flood the log."""

    def __init__(self, seconds: float = REPEAT_SECONDS) -> None:
        super().__init__()
        self.seconds = seconds
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # when last written, and how many left out since

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(CLIENT_LOGGERS):
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a client's malformed log call: its format is the key, logging reports it
            text = str(record.msg)
        key = (record.name, _DIGITS.sub("#", text))
        now = time.monotonic()
        written, left_out = self._seen.get(key, (-self.seconds, 0))
        if now - written < self.seconds:
            self._seen[key] = (written, left_out + 1)
            return False
        if len(self._seen) > 1000:  # bounded: lines of long ago are forgotten
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.seconds}
        self._seen[key] = (now, 0)
        if left_out:
            record.msg = f"{text} ({left_out} more like it in the last {self.seconds:.0f} s)"
            record.args = None
        return True


_DIGITS = re.compile(r"\d+")


def read_properties(options: Mapping[str, Property]) -> tuple[Properties, dict[str, Any]]:
    """What every recipe does first: its properties read (ConfigError names a bad one), logging configured from
    them, and the values of its own options."""
    properties = Properties()
    configure_logging(properties)
    names, count = ", ".join(f'"{p}"' for p in properties.profiles), len(properties.profiles)
    if properties.default_profiles:  # Boot's start-up lines; this one at DEBUG, as a failing start is one line
        log.debug("No active profile set, falling back to %d default profile%s: %s", count, "s"[:count - 1], names)
    else:
        log.info("The following %d profile%s active: %s", count, " is" if count == 1 else "s are", names)
    if properties.files:
        log.info("Properties read from %s", ", ".join(map(str, properties.files)))
    return properties, {name: properties.get(prop) for name, prop in options.items()}
