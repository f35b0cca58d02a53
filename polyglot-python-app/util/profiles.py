"""Spring profiles: which are active, and whether a profile expression (``spring.config.activate.on-profile``)
matches them, as Spring Boot reads both.

Active: ``spring.profiles.active`` (a comma list, from the highest source that sets it) then
``spring.profiles.include``, each expanded by ``spring.profiles.group.<name>`` (a group's members follow it);
none set: ``spring.profiles.default`` (``default``). An expression is a profile name, ``!e``, ``e & e``,
``e | e`` or ``(e)``; ``&`` and ``|`` mixed without parentheses are refused, as Spring's ``Profiles.of``
refuses them; a comma list of expressions matches when any does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

ACTIVE = "spring.profiles.active"
INCLUDE = "spring.profiles.include"
DEFAULT = "spring.profiles.default"
GROUP = "spring.profiles.group"
_TOKENS = re.compile(r"\s*([()&|!]|[^()&|!\s]+)")


class ProfileError(ValueError):
    """A malformed profile expression: the message quotes it."""


def active(raw: Callable[[str], str | None]) -> list[str]:
    """The active profiles, in order (a later one wins), from ``raw(name)`` (a property's value or None)."""
    named = _names(raw(ACTIVE)) + _names(raw(INCLUDE))
    profiles: list[str] = []

    def add(name: str, seen: tuple[str, ...]) -> None:
        if name in profiles or name in seen:
            return
        profiles.append(name)
        for member in _names(raw(f"{GROUP}.{name}")):
            add(member, (*seen, name))

    for name in named or _names(raw(DEFAULT)) or ["default"]:
        add(name, ())
    return profiles


def matches(expression: str, profiles: Iterable[str]) -> bool:
    """Whether a comma list of profile expressions matches the active ``profiles``; ProfileError when malformed."""
    active_set = set(profiles)
    return any(_Parser(part.strip(), active_set).parse() for part in expression.split(",") if part.strip())


def _names(value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").split(",") if name.strip()]


class _Parser:
    """One expression, read by recursive descent."""

    def __init__(self, text: str, active: set[str]) -> None:
        self.text, self.active = text, active
        self.tokens = _TOKENS.findall(text)
        self.at = 0

    def parse(self) -> bool:
        value = self._expression()
        if self.at != len(self.tokens):
            raise ProfileError(f"Malformed profile expression '{self.text}'")
        return value

    def _expression(self) -> bool:
        value = self._unary()
        operator = None
        while self.at < len(self.tokens) and self.tokens[self.at] in "&|":
            token = self.tokens[self.at]
            if operator is not None and token != operator:
                raise ProfileError(f"Malformed profile expression '{self.text}': mix '&' and '|' only in parentheses")
            operator = token
            self.at += 1
            other = self._unary()
            value = (value and other) if token == "&" else (value or other)
        return value

    def _unary(self) -> bool:
        if self.at >= len(self.tokens):
            raise ProfileError(f"Malformed profile expression '{self.text}'")
        token = self.tokens[self.at]
        self.at += 1
        if token == "!":
            return not self._unary()
        if token == "(":
            value = self._expression()
            if self.at >= len(self.tokens) or self.tokens[self.at] != ")":
                raise ProfileError(f"Malformed profile expression '{self.text}': a '(' is not closed")
            self.at += 1
            return value
        if token in ")&|":
            raise ProfileError(f"Malformed profile expression '{self.text}'")
        return token in self.active
