"""Spring Boot's config files: where they are looked for, and how ``.properties`` and YAML files read.

Locations, lowest precedence first (a later one overrides an earlier one, as in Spring Boot): the group
``./;./config/;./config/*/;/config/`` (the last is where Data Flow's Kubernetes deployer writes a
StatefulSet pod's instance index, whatever the working directory), then the locations of
``spring.config.additional-location``. ``spring.config.location`` replaces the default ones. Within a
location ``application.properties`` overrides ``application.yml``, which overrides ``application.yaml``.
Locations are read a group at a time (a comma separates groups, ``;`` the locations of one group): the
group's plain files, then each active profile's ``application-<profile>`` files (``name-<profile>.ext``
beside a file location), a later profile above an earlier one. A document with
``spring.config.activate.on-profile`` counts when its expression matches.
"""

from __future__ import annotations

import decimal
import errno
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from . import config_imports
from . import profiles as profiles_
from .config_imports import Found

DEFAULT_LOCATIONS = ("optional:file:./;optional:file:./config/;optional:file:./config/*/;optional:file:/config/",)
LOCATION = "spring.config.location"
ADDITIONAL_LOCATION = "spring.config.additional-location"
EXTENSIONS = (".yaml", ".yml", ".properties")  # lowest precedence first
MAX_ALIASES = 50  # SnakeYAML's default maxAliasesForCollections
MAX_DEPTH = 50  # SnakeYAML's default nestingDepthLimit
# Values (maps, lists and scalars) a YAML file may expand to: fewer aliases than the limit still double a
# list each, 2^48 values from 48 of them.
MAX_VALUES = 100_000
ON_PROFILE = "spring.config.activate.on-profile"  # a document only a profile activates
_CONDITIONS = ("spring.config.activate.onprofile", "spring.profiles")  # relaxed; the second is Boot 2's
_PROFILE_CHOICES = ("spring.profiles.active", "spring.profiles.include", "spring.profiles.default")
_UNICODE = re.compile(r"[0-9a-fA-F]{4}")


class ConfigFileError(Exception):
    """A location that does not exist, or a file that cannot be read; the message names the file and line."""


def load(locations: list[tuple[str, str | None]], profiles: list[str] | None = None,
         initial_imports: str | None = None, resolve: Callable[[str], str | None] = lambda text: text) -> list[Found]:
    """Every config file found at ``locations``, lowest first, with its properties: a group of locations at a
    time, its plain files, then for each active profile (a later one higher) its profile files (None: profiles
    not known yet, no profile file nor profile document read).

    A group is ``;``-separated ``[optional:][file:]path`` locations, with the property that named it (None: the
    default one). Each file's ``spring.config.import`` comes right above it, ``initial_imports`` (set above the
    files) above them all; ``resolve`` replaces the placeholders of what a file imports.
    """
    found: list[Found] = []
    seen: set[Path] = set()
    for group, origin in locations:
        for profile in [None, *(profiles or [])]:
            for location in (item for item in group.split(";") if item.strip()):
                try:
                    paths = _files(location, profile)
                except ConfigFileError as error:
                    raise ConfigFileError(f"{error} (property '{origin}')" if origin else str(error)) from None
                for path in paths:
                    values = read(path, profiles)
                    if profile is not None:
                        _refuse_profile_properties(values, f"{path}")
                    _add((path, values, False), found, seen, profiles, 0, resolve)
    for source in _imported(initial_imports, None, profiles):
        _add(source, found, seen, profiles, 0, resolve)
    return found


def _refuse_profile_properties(values: dict[str, str], where: str) -> None:
    """Boot's InvalidConfigDataPropertyException: a profile-specific file or document cannot choose profiles."""
    for key in values:
        name = _relaxed(key).split("[")[0]
        if name in _PROFILE_CHOICES:
            raise ConfigFileError(f"{where}: property '{key}' is invalid in a profile specific resource (the active "
                                  "profiles are chosen outside it)")


def _add(source: Found, found: list[Found], seen: set[Path], profiles: list[str] | None, depth: int,
         resolve: Callable[[str], str | None]) -> None:
    """A source, once, then what it imports above it (a comma list or a YAML list, placeholders resolved)."""
    resolved = source[0].resolve()
    if resolved in seen:
        return
    seen.add(resolved)
    found.append(source)
    if depth > 10:
        raise ConfigFileError(f"{source[0]}: spring.config.import nests more than 10 deep")
    if not source[2]:  # a config tree imports nothing
        value = ",".join(filter(None, map(resolve, _list(source[1], config_imports.IMPORT))))
        for imported in _imported(value, source[0].parent, profiles):
            _add(imported, found, seen, profiles, depth + 1, resolve)


def _imported(value: str | None, base: Path | None, profiles: list[str] | None) -> list[Found]:
    try:
        return config_imports.imports(value, base, lambda path: read(path, profiles), _files, profiles)
    except config_imports.ConfigImportError as error:
        raise ConfigFileError(str(error)) from None


def _files(location: str, profile: str | None = None) -> list[Path]:
    """The config files of one location (``application-<profile>`` ones for a profile, ``name-<profile>.ext``
    beside a file location, optional), lowest first. Where the system refuses to look (a directory the user
    cannot search) an optional location has none, as in Boot; any other is an error naming it."""
    text, optional = location.strip(), False
    if text.startswith("optional:"):
        text, optional = text[len("optional:"):], True
    if text.startswith("classpath:"):
        raise ConfigFileError(f"config location '{location}': a Python app has no classpath; use a file path")
    text = text.removeprefix("file:")
    if not text:
        return []
    try:
        return _located(text, location, optional, profile)
    except config_imports.ConfigImportError as error:
        raise ConfigFileError(str(error)) from None


def _located(text: str, location: str, optional: bool, profile: str | None) -> list[Path]:
    what = f"config location '{config_imports.shortened(location)}'"

    def present(path: Path, test: Callable[[Path], bool], skip: bool = optional) -> bool:
        return config_imports.present(path, test, skip, what)

    if text.endswith("/"):
        if text.endswith("*/"):
            parent = Path(text[:-2])
            try:
                directories = sorted(p for p in parent.iterdir() if present(p, Path.is_dir, True)) if present(
                    parent, Path.is_dir) else []
            except OSError as error:
                if optional and error.errno != errno.ENAMETOOLONG:
                    return []
                raise ConfigFileError(f"cannot list {what}: {error.strerror or error}") from None
        else:
            directories = [Path(text)]
            if not present(directories[0], Path.is_dir) and not optional:
                raise ConfigFileError(f"{what} does not exist (prefix it with 'optional:' if it may be missing)")
        stem = "application" if profile is None else f"application-{profile}"
        return [d / f"{stem}{ext}" for d in directories for ext in EXTENSIONS
                if present(d / f"{stem}{ext}", Path.is_file, True)]
    path = Path(text)
    if path.suffix not in EXTENSIONS:
        raise ConfigFileError(f"{what}: expected a directory ending with '/' or a {', '.join(EXTENSIONS)} file")
    if profile is not None:
        variant = path.with_name(f"{path.stem}-{profile}{path.suffix}")
        return [variant] if present(variant, Path.is_file, True) else []
    if not present(path, Path.is_file):
        if optional:
            return []
        raise ConfigFileError(f"config file '{location}' does not exist (prefix it with 'optional:' if it may "
                              "be missing)")
    return [path]


def read(path: Path, profiles: list[str] | None = None) -> dict[str, str]:
    """One file's properties (a document a profile activates only when it matches ``profiles``)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigFileError(f"cannot read config file {path}: {error.strerror or error}") from None
    if path.suffix == ".properties":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("iso-8859-1")  # what java.util.Properties reads
        return read_properties(text, str(path), profiles)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigFileError(f"{path}:{line}: not UTF-8 text (YAML files are UTF-8)") from None
    return read_yaml(text, str(path), profiles)


def read_properties(text: str, name: str, profiles: list[str] | None = None) -> dict[str, str]:
    """A ``.properties`` file as ``java.util.Properties`` reads it; ``#---`` separates documents, as in Boot."""
    documents: list[dict[str, str]] = [{}]
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        start = number + 1
        line = lines[number].lstrip(" \t\f")
        number += 1
        if line in ("#---", "!---"):
            documents.append({})
            continue
        if not line or line[0] in "#!":
            continue
        while _continues(line) and number < len(lines):  # a trailing odd backslash joins the next line
            line = line[:-1] + lines[number].lstrip(" \t\f")
            number += 1
        if _continues(line):
            line = line[:-1]
        key, value = _split(line)
        if not key:
            raise ConfigFileError(f"{name}:{start}: a value with no property name ('{line[:60]}')")
        documents[-1][_unescape(key, name, start)] = _unescape(value, name, start)
    return _merge(documents, profiles, name)


def _continues(line: str) -> bool:
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _split(line: str) -> tuple[str, str]:
    """Key and value: the key ends at the first unescaped ``=``, ``:`` or blank."""
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\":
            index += 2
            continue
        if char in "=: \t\f":
            break
        index += 1
    key, rest = line[:index], line[index:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


def _unescape(text: str, name: str, line: int) -> str:
    if "\\" not in text:
        return text
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char != "\\" or index + 1 == len(text):
            out.append(char)
            index += 1
            continue
        code = text[index + 1]
        if code == "u":
            digits = text[index + 2:index + 6]
            if not _UNICODE.fullmatch(digits):
                raise ConfigFileError(f"{name}:{line}: malformed \\uxxxx escape '\\u{digits}'")
            out.append(chr(int(digits, 16)))
            index += 6
            continue
        out.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(code, code))
        index += 2
    return "".join(out)


def read_yaml(text: str, name: str, profiles: list[str] | None = None) -> dict[str, str]:
    """A YAML file's documents, flattened as Spring Boot does: ``a.b.c``, ``list[0]``, ``true``, null as empty."""
    import yaml  # only when there is a YAML file: its C extension costs a megabyte or two of memory

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's; PyYAML's scanner is quadratic in nesting
    try:
        _check_events(yaml, yaml.parse(text, Loader=loader), name)
        documents = list(yaml.load_all(text, Loader=_loader(yaml, loader)))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigFileError(f"{where}: malformed YAML ({problem})") from None
    flat_documents = []
    for number, document in enumerate(documents, 1):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ConfigFileError(f"{name}: document {number} is a {type(document).__name__}, not a map of "
                                  "property names to values")
        flat: dict[str, str] = {}
        try:
            _flatten("", document, flat, (), [MAX_VALUES])
        except RecursionError:
            raise ConfigFileError(f"{name}: document {number} nests too deeply (or an alias refers to a map that "
                                  "holds it)") from None
        except ValueError:  # str() of an int of more than 4,300 digits (0x...)
            raise ConfigFileError(f"{name}: document {number} holds a number too long to write") from None
        except OverflowError:
            raise ConfigFileError(f"{name}: document {number} expands to more than {MAX_VALUES:,} values (its "
                                  "aliases refer to each other): expand them or use fewer") from None
        flat_documents.append(flat)
    return _merge(flat_documents, profiles, name)


def _loader(yaml: Any, base: type) -> type:
    """``base`` reading YAML as Spring Boot's OriginTrackedYamlLoader does: no timestamp resolver (a date is the text
    written), one pair per key of a merged map (``<<``), as SnakeYAML keeps (PyYAML keeps every merged pair, so
    maps merging the one before twice double at each step: 2^25 pairs from 50 aliases); a value that cannot be
    constructed (``!!int x``, an int of more than 4,300 digits) a YAML error at its line."""
    class Loader(base):  # type: ignore[misc,valid-type]
        yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {
            first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
            for first, resolvers in base.yaml_implicit_resolvers.items()}

        def flatten_mapping(self, node: Any) -> None:
            super().flatten_mapping(node)
            last = {(key.tag, key.value): at for at, (key, _) in enumerate(node.value)
                    if isinstance(key, yaml.ScalarNode)}
            node.value = [(key, value) for at, (key, value) in enumerate(node.value)
                          if not isinstance(key, yaml.ScalarNode) or last[(key.tag, key.value)] == at]

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep)
            except (ValueError, OverflowError, TypeError) as error:
                text = repr(node.value[:40]) if isinstance(node.value, str) else "a value"
                problem = f"cannot read {text} as {node.tag.rpartition(':')[2]}"
                raise yaml.constructor.ConstructorError(None, None, f"{problem}: {str(error).split(':')[0]}",
                                                        node.start_mark) from None

    return Loader


def _check_events(yaml: Any, events: Iterable[Any], name: str) -> None:
    """Refuse, before anything expands, what SnakeYAML refuses in Spring Boot: more than MAX_ALIASES aliases (a few
    anchors referring to each other expand exponentially: "billion laughs"), collections nested deeper than
    MAX_DEPTH."""
    aliases = depth = 0
    collections: set[str] = set()  # anchors of maps and lists: SnakeYAML counts only aliases to those
    for event in events:
        if isinstance(event, yaml.AliasEvent):
            aliases += event.anchor in collections
        elif isinstance(event, yaml.CollectionStartEvent):
            if event.anchor is not None:
                collections.add(event.anchor)
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigFileError(f"{name}: collections nested deeper than {MAX_DEPTH} (as SnakeYAML's "
                                      "nestingDepthLimit in Spring Boot)")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    if aliases > MAX_ALIASES:
        raise ConfigFileError(f"{name}: {aliases} YAML aliases of maps or lists, over the {MAX_ALIASES} allowed (as "
                              "SnakeYAML's maxAliasesForCollections in Spring Boot): expand them or use fewer")


def _flatten(prefix: str, value: Any, flat: dict[str, str], holders: tuple[int, ...], budget: list[int]) -> None:
    """``value`` into ``flat`` under ``prefix``; each value visited spends one of ``budget`` (OverflowError: spent)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise OverflowError
    if isinstance(value, dict | list):
        if id(value) in holders:
            raise RecursionError  # an alias to a map or list that holds it
        holders = (*holders, id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, flat, holders, budget)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, flat, holders, budget)
    elif isinstance(value, bool):
        flat[prefix] = "true" if value else "false"
    elif isinstance(value, float):
        flat[prefix] = _java_double(value)
    else:
        flat[prefix] = "" if value is None else str(value)


def _java_double(value: float) -> str:
    """``value`` as Java's ``Double.toString`` writes it (Boot binds a YAML float as that text): ``Infinity``,
    ``NaN``, ``100.0``, ``1.0E-4``, ``1.0E7``."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    sign, digits, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    text, point = "".join(map(str, digits)), len(digits) + int(exponent)  # value = 0.<text> * 10^point
    if 1e-3 <= abs(value) < 1e7:
        written = ("0." + "0" * -point + text if point <= 0 else
                   text + "0" * (point - len(text)) + ".0" if point >= len(text) else f"{text[:point]}.{text[point:]}")
    else:
        written = f"{text[0]}.{text[1:] or '0'}E{point - 1}"
    return "-" + written if sign else written


def _merge(documents: list[dict[str, str]], profiles: list[str] | None, name: str) -> dict[str, str]:
    """Later documents override earlier ones; one a profile activates (``spring.config.activate.on-profile``, or
    Boot 2's ``spring.profiles``) only when its expression matches the active ``profiles`` (None: not known yet,
    left out)."""
    merged: dict[str, str] = {}
    includes: list[str] = []
    for number, document in enumerate(documents, 1):
        condition = ",".join(value for key in _CONDITIONS for value in _list(document, key)) or None
        if condition is not None:
            try:
                if profiles is None or not profiles_.matches(condition, profiles):
                    continue
            except profiles_.ProfileError as error:
                raise ConfigFileError(f"{name}: {error}") from None
            _refuse_profile_properties(document, f"{name}: document {number}")
        includes += _list(document, profiles_.INCLUDE)  # every document's includes add up, as in Boot
        merged.update(document)
    if includes:
        for key in [key for key in merged if _relaxed(key).split("[")[0] == _relaxed(profiles_.INCLUDE)]:
            del merged[key]
        merged[profiles_.INCLUDE] = ",".join(includes)
    return merged


def _list(values: dict[str, str], name: str) -> list[str]:
    """A list property of one file or document: a comma list, or YAML's ``name[0]``, ``name[1]``..."""
    relaxed, items = _relaxed(name), []
    for key, value in values.items():
        key = _relaxed(key)
        index = key[len(relaxed) + 1:-1]
        if key == relaxed or (key.startswith(relaxed + "[") and key.endswith("]") and index.isdigit()):
            items += [item.strip() for item in value.split(",") if item.strip()]
    return items


def _relaxed(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()
