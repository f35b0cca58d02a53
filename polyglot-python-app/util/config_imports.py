"""``spring.config.import``: more config files (``file:``) and config trees (``configtree:``), as Spring Boot reads
them.

A comma list of ``[optional:]file:<path>`` (a ``.properties``/``.yml``/``.yaml`` file, or a directory ending with
``/``) and ``[optional:]configtree:<dir>/`` (each file below the directory a property: its path under it, ``/`` as
``.``, the name; its content, one trailing newline trimmed, the value; ``<dir>/*/`` each subdirectory a tree). A
path is relative to the file that imports it (else to the working directory); imports inside imported files are
read too, each above the file that imports it. A missing import that is not ``optional:`` is an error naming it.
Config tree values are secrets (Kubernetes Secrets mounted as volumes): never shown.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

IMPORT = "spring.config.import"
MAX_TREE_FILES = 10_000


class ConfigImportError(Exception):
    """An import that cannot be read: the message names it."""


Found = tuple[Path, dict[str, str], bool]  # a source's path, its properties, whether they are secret


def imports(value: str | None, base: Path | None, read: Callable[[Path], dict[str, str]],
            files: Callable[[str], list[Path]]) -> list[Found]:
    """The sources ``value`` imports (lowest first), relative to ``base``; ``read`` reads a config file and
    ``files`` lists the files of a ``file:`` location."""
    found: list[Found] = []
    for item in [part.strip() for part in (value or "").split(",") if part.strip()]:
        text, optional = (item[len("optional:"):], True) if item.startswith("optional:") else (item, False)
        if text.startswith("configtree:"):
            found += _trees(text[len("configtree:"):], base, optional, item)
        elif text.startswith("file:") or "/" in text or text.startswith("."):
            found += [(path, read(path), False) for path in _config_files(text.removeprefix("file:"), base,
                                                                           optional, item, files)]
        else:
            raise ConfigImportError(f"spring.config.import '{item}': expected file: or configtree: (a Python app has "
                               "no classpath)")
    return found


def _config_files(path: str, base: Path | None, optional: bool, item: str,
                  files: Callable[[str], list[Path]]) -> list[Path]:
    where = _relative(path, base)
    located = files(f"optional:file:{where}{'/' if path.endswith('/') else ''}")
    if not located and not optional:
        raise ConfigImportError(f"spring.config.import '{item}': {where} does not exist (prefix it with 'optional:' if "
                           "it may be missing)")
    return located


def _trees(path: str, base: Path | None, optional: bool, item: str) -> list[Found]:
    if not path.endswith("/"):
        raise ConfigImportError(f"spring.config.import '{item}': a config tree is a directory ending with '/'")
    if path.endswith("/*/"):
        parent = _relative(path[:-3], base)
        roots = sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        if not parent.is_dir() and not optional:
            raise ConfigImportError(f"spring.config.import '{item}': {parent} does not exist")
    else:
        root = _relative(path, base)
        if not root.is_dir():
            if optional:
                return []
            raise ConfigImportError(f"spring.config.import '{item}': {root} does not exist (prefix it with 'optional:' "
                               "if it may be missing)")
        roots = [root]
    return [(root, _tree(root, item), True) for root in roots]


def _tree(root: Path, item: str) -> dict[str, str]:
    """Each regular file under ``root`` a property (hidden ones, and Kubernetes' ``..data`` links, left out)."""
    values: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if len(values) >= MAX_TREE_FILES:
            raise ConfigImportError(f"spring.config.import '{item}': more than {MAX_TREE_FILES} files")
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigImportError(f"spring.config.import '{item}': cannot read {relative} "
                               f"({type(error).__name__})") from None
        values[".".join(relative.parts)] = text[:-1] if text.endswith("\n") else text
    return values


def _relative(path: str, base: Path | None) -> Path:
    given = Path(path)
    return given if given.is_absolute() or base is None else base / given
