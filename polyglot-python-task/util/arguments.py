"""Where every property is read: Spring Boot's sources, precedence and relaxed names.

Precedence: command-line ``--key=value`` > ``SPRING_APPLICATION_JSON`` > environment
variables (``SPRING_CLOUD_STREAM_BINDINGS_INPUT_DESTINATION`` or dotted names) > config files
(``application.properties`` and YAML, see ``config_files``) > defaults. Names are compared relaxed:
case-insensitive, ``-`` and ``_`` ignored inside a segment. ``${name:default}`` placeholders nest;
``${random.*}`` ones are drawn once per start, as Boot's RandomValuePropertySource draws them.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config_files, config_imports, placeholders, profiles
from .random_values import RandomRangeError, random_value

_TRUE = frozenset({"true", "on", "yes", "1"})
_FALSE = frozenset({"false", "off", "no", "0"})
_DEPTH = 16  # placeholders nested (or referring to each other) deeper than this are circular


class ConfigError(Exception):
    """A missing or malformed property; the message names it and what to do."""


@dataclass(frozen=True)
class Property:
    """One property an app reads, declared once: the code, the README and the image metadata use it."""

    name: str
    type: type = str
    default: Any = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    required: bool = False
    choices: tuple[str, ...] = ()
    secret: bool = False
    binder: str = ""  # kafka or rabbit when only that binder reads it; empty: both (or neither's)


CONFIG_PROPERTIES = (
    Property(config_files.ADDITIONAL_LOCATION, str, None,
             "Config files or directories (ending with `/`) read above the default ones, comma separated; "
             "`optional:` when one may be missing."),
    Property(config_files.LOCATION, str, None,
             "Config files or directories read instead of `./`, `./config/`, `./config/*/` and `/config/`."),
)


def canonical(name: str) -> str:
    """Relaxed form of a dotted name: lower case, ``-`` and ``_`` dropped inside each segment."""
    return ".".join(s.replace("-", "").replace("_", "").lower() for s in name.strip().split("."))


def env_canonical(name: str) -> str:
    """Relaxed form of an environment variable name: ``_`` separates segments unless dots are used; a segment of
    digits is a list index, as Boot maps ``MY_LIST_0`` to ``my.list[0]``."""
    if "." in name:
        return canonical(name)
    return re.sub(r"\.([0-9]+)(?=\.|$)", r"[\1]", canonical(name.replace("_", ".")))


def parse_argv(argv: Iterable[str]) -> dict[str, str]:
    """``--key=value`` options, split at the first ``=``; anything else is not a property."""
    found: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            if key:
                found[key] = value
    return found


def flatten_json(text: str) -> dict[str, str]:
    """``SPRING_APPLICATION_JSON``: a flat (or nested) JSON object, values turned into strings."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"SPRING_APPLICATION_JSON is not valid JSON ({error}); pass a JSON object") from None
    if not isinstance(document, dict):
        raise ConfigError("SPRING_APPLICATION_JSON must be a JSON object of property names to values")
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(f"{prefix}[{index}]", item)
        elif isinstance(value, bool):
            flat[prefix] = "true" if value else "false"
        elif value is not None:
            flat[prefix] = str(value)

    walk("", document)
    return flat


class Properties:
    """The resolved property sources of one process, highest precedence first."""

    def __init__(self, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
        argv = sys.argv[1:] if argv is None else argv
        environ = os.environ if environ is None else environ
        app_json = environ.get("SPRING_APPLICATION_JSON", "")
        self._randoms: dict[tuple[str, int], str] = {}  # each ${random.*} of a value: drawn once per start
        self._secret: set[int] = set()
        self._layers: list[dict[str, tuple[str, str]]] = [
            {canonical(k): (k, v) for k, v in parse_argv(argv).items()},
            {canonical(k): (k, v) for k, v in flatten_json(app_json).items()} if app_json.strip() else {},
            {env_canonical(k): (k, v) for k, v in environ.items()},
        ]
        above = list(self._layers)
        imports = ",".join(self.values(config_imports.IMPORT))
        locations = self._locations()  # from the sources above the files only, as Boot binds them
        platform = config_files.cloud_platform(self.raw, environ)
        try:  # the plain files first: they may name the active profiles, which then choose what else is read
            self._add_files(above, config_files.load(locations, None, imports, self.resolve, platform))
            self.profiles, self.default_profiles = profiles.active(
                self.values, self.every, self.raw(profiles.VALIDATE) != "false")  # a later profile winning
            self._add_files(above, config_files.load(locations, self.profiles, imports, self.resolve, platform))
        except config_files.ConfigFileError as error:
            raise ConfigError(str(error)) from None
        except profiles.ProfileError as error:
            raise ConfigError(str(error)) from None

    def _add_files(self, above: list[dict[str, tuple[str, str]]], found: list[config_imports.Found]) -> None:
        """The sources above the config files, then ``found`` (lowest first) below them."""
        self.files: list[Path] = [path for path, _, _ in found]  # the sources read, lowest precedence first
        layers = [({canonical(k): (k, v) for k, v in values.items()}, secret) for _, values, secret in reversed(found)]
        self._layers = [*above, *(layer for layer, _ in layers)]
        self._secret = {id(layer) for layer, secret in layers if secret}  # config trees: values never shown

    def _locations(self) -> list[tuple[str, str | None]]:
        """Where config files are looked for, and the property naming each, from the sources above them."""
        replaced = self.values(config_files.LOCATION)  # lists, as Boot binds them
        extra = self.values(config_files.ADDITIONAL_LOCATION)
        locations: list[tuple[str, str | None]] = (
            [(location, None) for location in config_files.DEFAULT_LOCATIONS] if not replaced else
            [(location, config_files.LOCATION) for location in replaced])
        return locations + [(location, config_files.ADDITIONAL_LOCATION) for location in extra]

    def raw(self, name: str, *aliases: str) -> str | None:
        """The value of ``name`` (or an alias) from the highest source that sets it, or None."""
        found = self._provider([key for n in (name, *aliases) for key in _keys(n)], skip_empty=True)
        return None if found is None else found[2]

    def values(self, name: str) -> list[str]:
        """A list property from the highest source that sets it: a comma list, or ``name[0]``, ``name[1]``..."""
        for layer in self._layers:
            for key in _keys(name):
                found = self._list(layer, key)
                if found is not None:
                    return found
        return []

    def every(self, name: str) -> list[str]:
        """A list property's values from every source, highest first, added up (``spring.profiles.include``)."""
        items: list[str] = []
        for layer in self._layers:
            lists = (self._list(layer, key) for key in _keys(name))
            items += next((found for found in lists if found is not None), [])
        return items

    def _list(self, layer: dict[str, tuple[str, str]], key: str) -> list[str] | None:
        if key in layer:
            value = self._resolve(layer[key][1], 0, (id(layer), key))
            return None if value is None else _split_list(value)
        indexed = sorted((int(k[len(key) + 1:-1]), k) for k in layer if k.startswith(key + "[") and k.endswith("]")
                         and k[len(key) + 1:-1].isascii() and k[len(key) + 1:-1].isdigit())
        if not indexed:
            return None
        items = [self._resolve(layer[k][1], 0, (id(layer), k)) for _, k in indexed]
        return [item.strip() for item in items if item and item.strip()]

    def _provider(self, keys: list[str], skip_empty: bool) -> tuple[dict[str, tuple[str, str]], str, str] | None:
        """The layer and key whose value a lookup of ``keys`` takes, and that value resolved."""
        for layer in self._layers:
            for key in keys:
                if key in layer:
                    value = self._resolve(layer[key][1], 0, (id(layer), key))
                    if value is not None and not (skip_empty and value == ""):
                        return layer, key, value
        return None

    def get(self, prop: Property) -> Any:
        """The typed value of a declared property; ConfigError names it when missing or malformed."""
        value = self.raw(prop.name, *prop.aliases)
        if value is None:
            if prop.required:
                raise ConfigError(f"Missing required property '{prop.name}': {prop.description}")
            return prop.default
        return convert(prop, value, hidden=self.secret(prop))

    def secret(self, prop: Property) -> bool:
        """The property is a secret, or its value comes from a config tree (a mounted Secret), itself or through
        a placeholder."""
        if prop.secret:
            return True
        found = self._provider([key for n in (prop.name, *prop.aliases) for key in _keys(n)], skip_empty=True)
        return found is not None and self._from_secret(found[0], found[1], 0, set())

    def _from_secret(self, layer: dict[str, tuple[str, str]], key: str, depth: int,
                     seen: set[tuple[int, str]]) -> bool:
        """Whether the value at ``layer[key]`` is a config tree's, or takes one through its placeholders (each
        value looked at once)."""
        if id(layer) in self._secret:
            return True
        if depth > _DEPTH:
            return True  # circular: nothing resolves, but say nothing of it
        if (id(layer), key) in seen:
            return False
        seen.add((id(layer), key))
        value = layer[key][1]
        index = 0
        while (start := value.find("${", index)) >= 0:
            end = placeholders.closing(value, start + 2)
            if end < 0:
                break
            for name in placeholders.names(value[start + 2:end]):
                keys = _lookup_keys(name)
                holder = next(((layer, k) for layer in self._layers for k in keys if k in layer), None)
                if holder is not None and self._from_secret(holder[0], holder[1], depth + 1, seen):
                    return True
            index = end + 1
        return False

    def subtree(self, prefix: str, as_written: bool = False) -> dict[str, str]:
        """Every ``prefix.<key>=value`` as ``{<key>: value}``, in precedence.

        Keys are relaxed (Kafka keys are lower-case dotted), or ``as_written`` (logger names keep their
        underscores and case; an environment variable's underscores become dots, as in Spring Boot).
        """
        start = canonical(prefix) + "."
        segments = prefix.count(".") + 1
        merged: dict[str, str] = {}
        for layer in reversed(self._layers):
            for key, (original, value) in layer.items():
                if key.startswith(start):
                    merged[_suffix(original, segments) if as_written else key[len(start):]] = value
        resolved = {key: self._resolve(value, 0, (prefix, key)) for key, value in merged.items()}
        return {key: value for key, value in resolved.items() if value}

    def resolve(self, value: str) -> str | None:
        """``value`` with its ``${name:default}`` placeholders replaced; None when one cannot be."""
        return self._resolve(value, 0, None)

    def _resolve(self, value: str, depth: int, origin: Any) -> str | None:
        """Replace placeholders, nested as Spring's PropertyPlaceholderHelper nests them.

        ``${a:${b:c}}`` is ``a``, else ``b``, else ``c``; a found value's own placeholders are resolved
        too. One that resolves to nothing (no value, no default, or circular) makes the value absent.
        ``origin`` names the property whose value this is: each of its ``${random.*}`` is drawn once.
        """
        if "${" not in value:
            return value
        if depth > _DEPTH:
            return None
        out, index = [], 0
        while (start := value.find("${", index)) >= 0:
            end = placeholders.closing(value, start + 2)
            if end < 0:  # no closing brace: not a placeholder, as in Spring
                break
            out.append(value[index:start])
            name, default = placeholders.split_default(value[start + 2:end])
            key = self._resolve(name, depth + 1, origin)
            found = None if key is None else self._lookup(key, depth + 1)
            if found is None and key is not None and key.startswith("random."):
                found = self._random(key, (origin, value, start))
            if found is None and default is not None:
                found = self._resolve(default, depth + 1, origin)
            if found is None:
                return None
            out.append(found)
            index = end + 1
        out.append(value[index:])
        return "".join(out)

    def _random(self, name: str, where: tuple[Any, str, int]) -> str | None:
        """``${random.*}`` (``random_values.py``), the same each time this property's value is read."""
        drawn = self._randoms.get(where)
        if drawn is None:
            try:
                drawn = random_value(name)
            except RandomRangeError as error:
                raise ConfigError(f"Invalid placeholder {error}{self._named(where[0])}") from None
            if drawn is not None:
                self._randoms[where] = drawn
        return drawn

    def _named(self, origin: Any) -> str:
        """`` in property 'x'`` for the origin of a value, when it names one."""
        if isinstance(origin, tuple) and isinstance(origin[0], int):
            layer = next((layer for layer in self._layers if id(layer) == origin[0]), {})
            if origin[1] in layer:
                return f" in property '{layer[origin[1]][0]}'"
        return f" in property '{origin[0]}.{origin[1]}'" if isinstance(origin, tuple) else ""

    def _lookup(self, name: str, depth: int) -> str | None:
        for layer in self._layers:
            for key in _lookup_keys(name):
                if key in layer:
                    found = self._resolve(layer[key][1], depth, (id(layer), key))
                    if found is not None:
                        return found
        return None


def _keys(name: str) -> list[str]:
    """The relaxed forms of a name; with a dash, also the environment's legacy one (``ADDITIONAL_LOCATION``)."""
    key = canonical(name)
    return [key, canonical(name.replace("-", "."))] if "-" in name else [key]


def _lookup_keys(name: str) -> list[str]:
    """The keys a placeholder's name is looked up by: its relaxed forms, and an environment variable's as written
    (``${MY_VAR}``)."""
    keys = _keys(name)
    if "." not in name and "_" in name:
        keys.append(env_canonical(name))
    return keys


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _suffix(name: str, segments: int) -> str:
    """What follows the first ``segments`` segments of a property name as written (env style: dotted, lower)."""
    parts = name.split(".") if "." in name else name.lower().split("_")
    return ".".join(parts[segments:])


def convert(prop: Property, value: str, hidden: bool = False) -> Any:
    """Parse a raw string as the property's type; ConfigError names the property on a bad value (``hidden``, or a
    secret property: without it)."""
    shown = "<hidden>" if prop.secret or hidden else repr(value[:100])
    text = value.strip()
    if prop.type is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"Invalid value {shown} for property '{prop.name}': expected true or false")
    if prop.type in (int, float):
        try:
            return prop.type(text)
        except ValueError:
            kind = "a whole number" if prop.type is int else "a number"
            raise ConfigError(f"Invalid value {shown} for property '{prop.name}': expected {kind}") from None
    if prop.choices:
        for choice in prop.choices:
            if text.lower() == choice.lower():
                return choice
        expected = ", ".join(prop.choices)
        raise ConfigError(f"Invalid value {shown} for property '{prop.name}': expected one of {expected}")
    return value
