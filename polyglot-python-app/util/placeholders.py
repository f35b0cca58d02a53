"""Spring's ``${name:default}`` placeholders as text: where one closes, its name and default, the names it may
look up (nested ones too). Resolving them against the property sources is ``arguments.Properties``'."""

from __future__ import annotations


def names(text: str) -> list[str]:
    """The names a placeholder's text may look up: its name and those in its default, nested ones too."""
    name, default = split_default(text)
    found = [name]
    for part in (name, default or ""):
        index = 0
        while (start := part.find("${", index)) >= 0:
            end = closing(part, start + 2)
            if end < 0:
                break
            found += names(part[start + 2:end])
            index = end + 1
    return [n for n in found if "${" not in n]


def closing(text: str, start: int) -> int:
    """The index of the ``}`` that closes a placeholder whose name starts at ``start``, or -1."""
    nested = 0
    for index in range(start, len(text)):
        char = text[index]
        if char == "{":
            nested += 1
        elif char == "}":
            if nested == 0:
                return index
            nested -= 1
    return -1


def split_default(text: str) -> tuple[str, str | None]:
    """``name:default`` at the first ``:`` outside nested placeholders; no ``:``, no default."""
    nested = 0
    for index, char in enumerate(text):
        if char == "{":
            nested += 1
        elif char == "}":
            nested -= 1
        elif char == ":" and nested == 0:
            return text[:index], text[index + 1:]
    return text, None
