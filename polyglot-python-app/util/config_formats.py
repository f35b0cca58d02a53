"""How Spring Boot reads a config file's text into documents of flat properties: ``.properties`` as
``java.util.Properties`` reads it (``#---`` between documents) and YAML as its OriginTrackedYamlLoader does
(``a.b.c``, ``list[0]``, SnakeYAML's limits on aliases and nesting, no timestamps, Java's doubles)."""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Iterable
from typing import Any, ClassVar


class ConfigFileError(Exception):
    """A location that does not exist, or a file that cannot be read; the message names the file and line."""


MAX_ALIASES = 50  # SnakeYAML's default maxAliasesForCollections
MAX_DEPTH = 50  # SnakeYAML's default nestingDepthLimit
# Values (maps, lists and scalars) a YAML file may expand to: fewer aliases than the limit still double a
# list each, 2^48 values from 48 of them.
MAX_VALUES = 100_000
_UNICODE = re.compile(r"[0-9a-fA-F]{4}")


def properties_documents(text: str, name: str) -> list[dict[str, str]]:
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
    return documents


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


def yaml_documents(text: str, name: str) -> list[dict[str, str]]:
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
    return flat_documents


def _loader(yaml: Any, base: type) -> type:
    """``base`` reading YAML as Spring Boot's OriginTrackedYamlLoader does: no timestamp resolver (a date is the text
    written), keys as the text written, one pair per key of a merged map (``<<``), as SnakeYAML keeps (PyYAML
    keeps every merged pair, so maps merging the one before twice double at each step: 2^25 pairs from 50
    aliases); a value that cannot be constructed (``!!int x``, a 4,301-digit int) a YAML error at its line."""
    class Loader(base):  # type: ignore[misc,valid-type]
        yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {
            first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
            for first, resolvers in base.yaml_implicit_resolvers.items()}

        def flatten_mapping(self, node: Any) -> None:
            super().flatten_mapping(node)
            for key, _ in node.value:  # a key is its text, as Boot's KeyScalarNode: 'no', 'on', '1', '0x10'
                if isinstance(key, yaml.ScalarNode):
                    key.tag = "tag:yaml.org,2002:str"
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
