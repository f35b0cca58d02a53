"""``${random.*}`` placeholders as Spring Boot's RandomValuePropertySource reads them.

``random.int`` and ``random.long`` (a Java int or long), ``random.int(max)`` / ``random.int[min,max]`` (and
``long``; the upper bound excluded, as Boot's), ``random.uuid``, and any other ``random.<x>`` (``random.value``)
32 hexadecimal characters.
"""

from __future__ import annotations

import re
import secrets
import uuid

_RANGE = re.compile(r"^(int|long)[(\[]\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?[)\]]$")
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
    if kind == "uuid":
        return str(uuid.uuid4())
    ranged = _RANGE.match(kind)
    if ranged is None:
        return secrets.token_hex(16)
    which, first, second = ranged.groups()
    low, high = (0, int(first)) if second is None else (int(first), int(second))
    if high <= low:
        raise RandomRangeError(f"${{{name}}}: the upper bound must be greater than the lower one")
    limit = 1 << (_BITS[which] - 1)
    if not -limit <= low < high <= limit:
        raise RandomRangeError(f"${{{name}}}: out of the range of a Java {which}")
    return str(low + secrets.randbelow(high - low))
