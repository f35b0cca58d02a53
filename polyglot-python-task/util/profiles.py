"""Spring profiles: which are active, and whether a profile expression (``spring.config.activate.on-profile``)
matches them, as Spring Boot reads both.

Active: ``spring.profiles.include`` (from every source, added up) then ``spring.profiles.active`` (a list,
from the highest source that sets it), as Boot's ``Profiles`` orders them, each expanded by
``spring.profiles.group.<name>`` (a group's members follow it); none set: ``spring.profiles.default``
(``default``). A name is letters, digits, ``-_.+@``, a letter or digit first and last (Boot 3.5's
validation; ``spring.profiles.validate=false`` turns it off). An expression is a profile name, ``!e``,
``e & e``, ``e | e`` or ``(e)``; ``&`` and ``|`` mixed without parentheses are refused, as Spring's
``Profiles.of`` refuses them; a comma list of expressions matches when any does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

ACTIVE = "spring.profiles.active"
INCLUDE = "spring.profiles.include"
DEFAULT = "spring.profiles.default"
GROUP = "spring.profiles.group"
VALIDATE = "spring.profiles.validate"
_TOKENS = re.compile(r"\s*([()&|!]|[^()&|!\s]+)")
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.+@-]*[A-Za-z0-9])?")


class ProfileError(ValueError):
    """A malformed profile expression or name: the message quotes it."""


def active(values: Callable[[str], list[str]], every: Callable[[str], list[str]],
           validate: bool = True) -> tuple[list[str], bool]:
    """The active profiles, in order (a later one wins), and whether they are the default ones (none set).

    ``values(name)`` is a list property's value from the highest source that sets it, ``every(name)`` its
    values from every source added up, highest first.
    """
    named = list(dict.fromkeys(every(INCLUDE) + values(ACTIVE)))
    fallback = not named
    profiles: list[str] = []

    def add(name: str, seen: tuple[str, ...]) -> None:
        if name in profiles or name in seen:
            return
        profiles.append(name)
        for member in values(f"{GROUP}.{name}"):
            add(member, (*seen, name))

    for name in named or values(DEFAULT) or ["default"]:
        if validate and not _NAME.fullmatch(name):
            raise ProfileError(f"Invalid profile '{name[:100]}': a profile name is letters, digits, '-', '_', '.', "
                               f"'+' or '@', starting and ending with a letter or digit ({VALIDATE}=false "
                               "allows others)")
        add(name, ())
    return profiles, fallback


def matches(expression: str, profiles: Iterable[str]) -> bool:
    """Whether a comma list of profile expressions matches the active ``profiles``; ProfileError when malformed."""
    active_set = set(profiles)
    return any(_Parser(part.strip(), active_set).parse() for part in expression.split(",") if part.strip())


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
