"""pika's AMQP field-value codec, mended so that every header value a Spring app sends comes out as it came in.

pika 1.4 reads a timestamp unsigned (a date before 1970, or Java's ``new Date(Long.MAX_VALUE)``, fails the whole
message), reads floats and doubles as whole numbers (2.75 became 2), writes a long string that is not UTF-8 as a
byte array, every small integer as a 32-bit one and a decimal normalized (1.50 as 1.5). Importing this module
patches pika's ``decode_value`` and ``encode_value``, which tables and arrays inside tables call by those names.
"""

from __future__ import annotations

import decimal
import json
import struct
from collections.abc import Callable
from typing import Any

import pika.data

# Types whose Python value pika writes back as another AMQP type, or not at all: kept exactly as they came.
_FLOATS = {b"f": ">f", b"d": ">d"}
_EXACT_INTS = frozenset({b"b", b"B", b"U", b"u", b"s", b"i", b"L"})


class LongString(bytes):
    """An AMQP long string (``S``) that is not UTF-8: written back as a long string, not as the byte array (``x``)
    pika writes bytes as, so a Spring consumer still reads a String."""


class ExactFloat(float):
    """A float or double, written back with its own type and bits."""

    field: bytes


class ExactInt(int):
    """A byte, short or unsigned integer, written back with its own type (pika writes any int as ``I`` or ``l``)."""

    field: bytes


class ExactDecimal(decimal.Decimal):
    """A decimal, written back with its own scale (pika normalizes it: 1.50 became 1.5, unequal in Java)."""

    field: bytes


def _exact(kind: type, value: Any, field: bytes) -> Any:
    made = kind(value)
    made.field = field
    return made


def _mended_decoder(strict: Callable[[bytes, int], tuple[Any, int]]) -> Callable[[bytes, int], tuple[Any, int]]:
    def decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
        kind = encoded[offset:offset + 1]
        if kind in _FLOATS:  # pika's int() of them also fails on NaN and infinities
            end = offset + 1 + struct.calcsize(_FLOATS[kind])
            value = struct.unpack_from(_FLOATS[kind], encoded, offset + 1)[0]
            return _exact(ExactFloat, value, bytes(encoded[offset:end])), end
        try:
            value, end = strict(encoded, offset)
        except (OverflowError, OSError, ValueError):
            if kind != b"T":
                raise
            return struct.unpack_from(">q", encoded, offset + 1)[0], offset + 9  # its signed seconds, as a long
        field = bytes(encoded[offset:end])
        if kind in _EXACT_INTS:
            return _exact(ExactInt, value, field), end
        if kind == b"D":
            return _exact(ExactDecimal, value, field), end
        if kind == b"S" and isinstance(value, bytes):
            return LongString(value), end
        return value, end

    return decode_value


def _mended_encoder(strict: Callable[[list[bytes], Any], int]) -> Callable[[list[bytes], Any], int]:
    def encode_value(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, ExactFloat | ExactInt | ExactDecimal):
            pieces.append(value.field)
            return len(value.field)
        if isinstance(value, LongString):
            pieces += [struct.pack(">cI", b"S", len(value)), bytes(value)]
            return 5 + len(value)
        if isinstance(value, float):  # pika has no case for floats: a double, as Java writes a Double
            pieces.append(struct.pack(">cd", b"d", value))
            return 9
        return strict(pieces, value)

    return encode_value


pika.data.decode_value = _mended_decoder(pika.data.decode_value)
pika.data.encode_value = _mended_encoder(pika.data.encode_value)


class Native(bytes):
    """A header value as the loop passes bytes on, carrying its AMQP value so it is written back as it came."""

    value: Any

    def __new__(cls, value: Any) -> Native:
        text = value if isinstance(value, bytes) else (value if isinstance(value, str) else
                                                          json.dumps(jsonable(value))).encode("utf-8")
        made = super().__new__(cls, text)
        made.value = value
        return made

    def __eq__(self, other: object) -> bool:
        return type(other) is Native and other.value == self.value and type(other.value) is type(self.value)

    def __hash__(self) -> int:
        return hash((bytes(self), type(self.value).__name__))


def jsonable(value: Any) -> Any:
    """An AMQP value (tables and arrays of any depth) as JSON takes it: keys pika could not decode as UTF-8 (left
    as bytes) read with replacement characters; dates, decimals and bytes as their text."""
    if isinstance(value, dict):
        return {text(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return text(value)


def text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Native):
        value = value.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
