"""One Spring-like log line format; levels from ``logging.level.root`` and ``logging.level.<logger>``."""

from __future__ import annotations

import logging
import time

from .arguments import ConfigError, Properties, Property

LEVEL_ROOT = Property("logging.level.root", str, "INFO", "Log level: TRACE, DEBUG, INFO, WARN, ERROR or OFF.")
PROPERTIES = (LEVEL_ROOT,)
_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL, "off": logging.CRITICAL + 10}
# The Kafka client is chatty at INFO; Spring apps show its warnings and errors only.
_QUIET = {"kafka": logging.WARNING, "pika": logging.WARNING}
FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)5s %(process)d --- [%(threadName)15.15s] %(name)-24.24s : %(message)s"


def start_logging() -> None:
    """Log at INFO in the Spring format until the properties say otherwise."""
    formatter = logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.addLevelName(logging.WARNING, "WARN")
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(level)


def configure_logging(properties: Properties) -> None:
    """Apply ``logging.level.*``; ConfigError names a level that is not one."""
    for name, value in properties.subtree("logging.level", as_written=True).items():
        level = _LEVELS.get(value.strip().lower())
        if level is None:
            raise ConfigError(f"Invalid value '{value}' for property 'logging.level.{name}': "
                              "expected TRACE, DEBUG, INFO, WARN, ERROR or OFF")
        logging.getLogger(None if name.lower() == "root" else name).setLevel(level)
