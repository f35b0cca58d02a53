"""``${random.*}`` placeholders as Spring Boot's RandomValuePropertySource reads them.

``random.int`` and ``random.long`` (a Java int or long), ``random.int(max)`` / ``random.int[min,max]`` (and
``long``; the upper bound excluded, as Boot's), ``random.uuid``, and any other ``random.<x>`` (``random.value``)
32 hexadecimal characters. As in Boot, ``random.int`` followed by two characters or more is a range: the
character after ``int`` (or ``long``) and the last one are dropped, the rest is one or two bounds Java's
``Integer.parseInt`` (``Long.parseLong``) reads (``+5``, no blanks); one it cannot read is an error.
"""

from __future__ import annotations

import secrets
import uuid

_BITS = {"int": 32, "long": 64}


class RandomRangeError(ValueError):
    """A ``random.int``/``random.long`` range Boot refuses: the message names it."""


def random_value(name: str) -> str | None:
    """The value of placeholder ``name`` when it is ``random.*``, else None; RandomRangeError for a bad range."""
    if not name.startswith("random."):
        return None
    kind = name[len("random."):]
    if kind in _BITS:
        bits = _BITS[kind]
        return str(secrets.randbits(bits) - (1 << (bits - 1)))
    for which in _BITS:  # Boot's getRange: "int" then any character, the range, any character
        if kind.startswith(which) and len(kind) > len(which) + 1:
            return _in_range(name, kind[len(which) + 1:-1], which)
    if kind == "uuid":
        return str(uuid.uuid4())
    return secrets.token_hex(16)


def _in_range(name: str, text: str, which: str) -> str:
    """A number drawn in the range ``text`` (``max`` or ``min,max``, as Boot's Range.of reads it)."""
    tokens = text.split(",") if text else []
    if not tokens:
        raise RandomRangeError(f"{_label(name)}: no bound")
    bounds = [_parse(name, token, which) for token in tokens[:2]]  # Boot ignores a third one
    low, high = (0, bounds[0]) if len(bounds) == 1 else (bounds[0], bounds[1])
    if len(bounds) == 1 and high <= 0:
        raise RandomRangeError(f"{_label(name)}: the bound must be positive")
    if high <= low:
        raise RandomRangeError(f"{_label(name)}: the upper bound must be greater than the lower one")
    return str(low + secrets.randbelow(high - low))


def _parse(name: str, token: str, which: str) -> int:
    """``token`` as Java's ``Integer.parseInt`` (``Long.parseLong``) reads it: a sign, then decimal digits."""
    digits = token[1:] if token[:1] in ("+", "-") else token
    shown = token if len(token) <= 40 else f"{token[:20]}…"
    if not digits or not digits.isdecimal():
        raise RandomRangeError(f"{_label(name)}: '{shown}' is not a Java {which}")
    limit = 1 << (_BITS[which] - 1)
    value = int(token) if len(digits) <= 20 else limit  # no int() of 5,000 digits
    if not -limit <= value < limit:
        raise RandomRangeError(f"{_label(name)}: '{shown}' is out of the range of a Java {which}")
    return value


def _label(name: str) -> str:
    return f"${{{name}}}" if len(name) <= 60 else f"${{{name[:40]}…}}"
