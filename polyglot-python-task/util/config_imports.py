"""``spring.config.import``: more config files (``file:``) and config trees (``configtree:``), as Spring Boot reads
them.

A comma list of ``[optional:]file:<path>`` (a ``.properties``/``.yml``/``.yaml`` file, or a directory ending with
``/``; each active profile's variants above it: ``<dir>/application-<profile>.*``, ``name-<profile>.ext``) and
``[optional:]configtree:<dir>/`` (each file below the directory a property: its path under it, ``/`` as ``.``, the
name; its content the value, the trailing newline of a one-line value trimmed; ``<dir>/*/`` each subdirectory a
tree). A tree is walked following links, as the kubelet lays out a Secret (``db -> ..data/db``), a link back to a
directory above left out; a name starting with ``..`` is left out, and so is a file that is not UTF-8 text (a
keystore beside a password). A path is relative to the file that imports it (else to the working directory);
imports inside imported files are read too, each above the file that imports it. A missing import that is not
``optional:`` is an error naming it. Config tree values are secrets (Kubernetes Secrets mounted as volumes): never
shown.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

IMPORT = "spring.config.import"
MAX_TREE_FILES = 10_000
MAX_TREE_DEPTH = 100  # Boot's ConfigTreePropertySource.MAX_DEPTH


class ConfigImportError(Exception):
    """An import that cannot be read: the message names it."""


Found = tuple[Path, dict[str, str], bool]  # a source's path, its properties, whether they are secret
Files = Callable[[str, str | None], list[Path]]  # a file: location's config files (a profile's variants)


def present(path: Path, test: Callable[[Path], bool], optional: bool, what: str) -> bool:
    """``test(path)`` (``Path.is_dir``, ``Path.is_file``) as Boot's ``FileSystemResource.exists()`` answers it: where
    the system refuses to look (a directory the user cannot search), False for an ``optional`` location, else
    ConfigImportError naming ``what``; a name too long to be a path is always an error."""
    try:
        return test(path)
    except OSError as error:
        if optional and error.errno != errno.ENAMETOOLONG:
            log.debug("%s: %s cannot be looked at (%s): skipped", what, path, error.strerror or error)
            return False
        raise ConfigImportError(f"{what}: cannot look at {shortened(path)} ({error.strerror or error})") from None


def shortened(text: object) -> str:
    """A path or location as an error line names it: its start and end when long."""
    text = str(text)
    return text if len(text) <= 120 else f"{text[:60]}…{text[-40:]}"


def imports(value: str | None, base: Path | None, read: Callable[[Path], dict[str, str]], files: Files,
            profiles: list[str] | None = None) -> list[Found]:
    """The sources ``value`` imports (lowest first), relative to ``base``; ``read`` reads a config file and
    ``files`` lists the files of a ``file:`` location (for each of the active ``profiles`` too)."""
    found: list[Found] = []
    for item in [part.strip() for part in (value or "").split(",") if part.strip()]:
        text, optional = (item[len("optional:"):], True) if item.startswith("optional:") else (item, False)
        if text.startswith("configtree:"):
            found += _trees(text[len("configtree:"):], base, optional, item)
        elif text.startswith("file:") or "/" in text or text.startswith("."):
            found += [(path, read(path), False) for path in _config_files(text.removeprefix("file:"), base,
                                                                           optional, item, files, profiles)]
        else:
            raise ConfigImportError(f"spring.config.import '{item}': expected file: or configtree: (a Python app has "
                                    "no classpath)")
    return found


def _config_files(path: str, base: Path | None, optional: bool, item: str, files: Files,
                  profiles: list[str] | None) -> list[Path]:
    """The plain files of a ``file:`` import, then each profile's, as Boot's resolveProfileSpecific adds them."""
    where = _relative(path, base)
    directory = path.endswith("/")
    what = f"spring.config.import '{shortened(item)}'"
    if not optional:
        looked_at = where.parent if directory and where.name == "*" else where
        if not present(looked_at, Path.is_dir if directory else Path.is_file, False, what):
            raise ConfigImportError(f"{what}: {where} does not exist (prefix it with 'optional:' if it may be "
                                    "missing)")
    location = f"optional:file:{where}{'/' if directory else ''}"
    return [found for profile in [None, *(profiles or [])] for found in files(location, profile)]


def _trees(path: str, base: Path | None, optional: bool, item: str) -> list[Found]:
    what = f"spring.config.import '{shortened(item)}'"
    if not path.endswith("/"):
        raise ConfigImportError(f"{what}: a config tree is a directory ending with '/'")
    if path.endswith("/*/"):
        parent = _relative(path[:-3], base)
        if not present(parent, Path.is_dir, optional, what):
            if optional:
                return []
            raise ConfigImportError(f"{what}: {parent} does not exist")
        try:
            roots = sorted(p for p in parent.iterdir() if present(p, Path.is_dir, True, what))
        except OSError as error:
            if optional and error.errno != errno.ENAMETOOLONG:
                return []
            raise ConfigImportError(f"{what}: cannot list {parent} ({error.strerror or error})") from None
    else:
        root = _relative(path, base)
        if not present(root, Path.is_dir, optional, what):
            if optional:
                return []
            raise ConfigImportError(f"{what}: {root} does not exist (prefix it with 'optional:' if it may be "
                                    "missing)")
        roots = [root]
    return [(root, _tree(root, what), True) for root in roots]


def _tree(root: Path, what: str) -> dict[str, str]:
    """Each file under ``root`` a property, read as Boot's ConfigTreePropertySource reads it."""
    values: dict[str, str] = {}
    for relative in _walk(root, what):
        if len(values) >= MAX_TREE_FILES:
            raise ConfigImportError(f"{what}: more than {MAX_TREE_FILES} files")
        try:
            data = (root / relative).read_bytes()
        except OSError as error:
            raise ConfigImportError(f"{what}: cannot read {relative} ({error.strerror or error})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            log.debug("%s: %s is not UTF-8 text: left out", what, relative)
            continue
        values[".".join(relative.parts)] = _trimmed(text)
    return values


def _trimmed(text: str) -> str:
    """A one-line value without its ``\\n`` or ``\\r\\n`` (Boot's AUTO_TRIM_TRAILING_NEW_LINE); a longer one (a
    PEM certificate) as it is."""
    if not text.endswith("\n") or text.count("\n") > 1:
        return text
    return text[:-2] if text.endswith("\r\n") else text[:-1]


def _walk(root: Path, what: str) -> Iterator[Path]:
    """The files under ``root`` (relative to it), links followed as Files.find(FOLLOW_LINKS) follows them: a name
    starting with ``..`` (Kubernetes' ``..data``) left out, a link to a directory above it (a loop) and what lies
    deeper than MAX_TREE_DEPTH skipped, a broken link too."""
    pending: list[tuple[Path, tuple[tuple[int, int], ...]]] = [(Path(), (_key(root, what),))]
    while pending:
        relative, above = pending.pop()
        try:
            with os.scandir(root / relative) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            raise ConfigImportError(f"{what}: cannot list {relative} ({error.strerror or error})") from None
        for entry in entries:
            if entry.name.startswith(".."):
                continue
            path = relative / entry.name
            try:
                if entry.is_dir():
                    key = _key(root / path, what)
                    if key in above or len(above) > MAX_TREE_DEPTH:
                        log.debug("%s: %s leads back to a directory above it (or too deep): skipped", what, path)
                    else:
                        pending.append((path, (*above, key)))
                elif entry.is_file():
                    yield path
                else:
                    log.debug("%s: %s is not a file (a broken link?): skipped", what, path)
            except OSError as error:
                raise ConfigImportError(f"{what}: cannot look at {path} ({error.strerror or error})") from None


def _key(path: Path, what: str) -> tuple[int, int]:
    try:
        status = path.stat()
    except OSError as error:
        raise ConfigImportError(f"{what}: cannot look at {path} ({error.strerror or error})") from None
    return status.st_dev, status.st_ino


def _relative(path: str, base: Path | None) -> Path:
    given = Path(path)
    return given if given.is_absolute() or base is None else base / given
