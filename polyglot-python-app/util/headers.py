"""Kafka record headers as Spring Cloud Stream 2.x, 3.x and later write and read them."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, TypeVar

Headers = Sequence[tuple[str, bytes | None]]
T = TypeVar("T")

TYPES_HEADER = "spring_json_header_types"
CONTENT_TYPE = "contentType"
ORIGINAL_CONTENT_TYPE = "originalContentType"
# Headers the binder never writes, and the two this codec rewrites for the new payload.
_NOT_FORWARDED = frozenset({"id", "timestamp", "deliveryAttempt", TYPES_HEADER, CONTENT_TYPE, ORIGINAL_CONTENT_TYPE})
_NOT_FORWARDED_PREFIXES = ("scst_", "kafka_")


class HeaderError(ValueError):
    """A header that cannot be read; the message names it."""


class UnreadableRecordError(HeaderError):
    """The client could not decode a record's headers (a key that is not UTF-8): its error path at once."""


class UnreadableHeaders(tuple):
    """The headers of a record the client could not decode: reading them raises UnreadableRecordError.

    An empty tuple to everything that does not read it, so the loop's fast path never checks for it.
    """

    reason: str
    kept: Sequence[tuple[str, bytes | None]]  # what a dead-letter copy carries: the record's headers as they came

    def __new__(cls, reason: str, kept: Sequence[tuple[str, bytes | None]] = ()) -> UnreadableHeaders:
        made = super().__new__(cls)
        made.reason, made.kept = reason, kept
        return made

    def __iter__(self) -> Iterator[tuple[str, bytes | None]]:
        raise UnreadableRecordError(self.reason)


def header_types(headers: Headers) -> dict[str, str]:
    """The ``spring_json_header_types`` map, or HeaderError when it is present but malformed."""
    for key, value in headers:
        if key == TYPES_HEADER and value is not None:
            try:
                types = json.loads(value)
            except (ValueError, UnicodeDecodeError):
                raise HeaderError(f"header '{TYPES_HEADER}' is not a JSON object") from None
            if not isinstance(types, dict):
                raise HeaderError(f"header '{TYPES_HEADER}' is not a JSON object")
            return {str(k): str(v) for k, v in types.items()}
    return {}


def decode_text(name: str, value: bytes | None) -> str | None:
    """A header value as text: raw UTF-8 (3.x+) or a JSON string (2.x, MIME types), quotes stripped."""
    if value is None:
        return None
    try:
        text = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise HeaderError(f"header '{name}' is not UTF-8 text") from None
    if text.startswith(("\"", "{")):
        try:
            decoded = json.loads(text)
        except ValueError:
            return text.strip("\"")
        if isinstance(decoded, str):
            return decoded
        if isinstance(decoded, dict) and "type" in decoded and "subtype" in decoded:
            return f"{decoded['type']}/{decoded['subtype']}"
    return text


def header_text(headers: Headers, name: str) -> str | None:
    """The last header called ``name``, as text, or None."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return decode_text(name, found)


def content_type(headers: Headers, default: str) -> str:
    """The payload's content type: ``originalContentType`` first (2.x), then ``contentType``, then ``default``."""
    return header_text(headers, ORIGINAL_CONTENT_TYPE) or header_text(headers, CONTENT_TYPE) or default


def inbound_content_type(headers: tuple[tuple[str, bytes | None], ...], default: str) -> str:
    """``content_type`` of a record's headers as a tuple, cached: records of one producer mostly share them."""
    if not headers:
        return default
    key = (headers, default)
    found = _CONTENT_TYPES.get(key)
    if found is None:
        found = _remember(_CONTENT_TYPES, key, content_type(headers, default), headers)
    return found


# Results by the headers they came from (records of one producer mostly share theirs): at most CACHED entries,
# the oldest dropped first, and none for headers over CACHED_BYTES, so large headers are never held on to.
CACHED, CACHED_BYTES = 512, 16 << 10
_CONTENT_TYPES: dict[tuple[Any, ...], str] = {}
_OUTBOUND: dict[tuple[Any, ...], tuple[tuple[str, bytes | None], ...]] = {}


def _remember(cache: dict[tuple[Any, ...], T], key: tuple[Any, ...], value: T, headers: Headers) -> T:
    if sum(len(k) + len(v or b"") for k, v in headers) <= CACHED_BYTES:
        if len(cache) >= CACHED:
            del cache[next(iter(cache))]
        cache[key] = value
    return value


@lru_cache(maxsize=64)
def is_text(media_type: str) -> bool:
    """``text/*`` and any JSON type are UTF-8 text, as the Spring log sink reads them."""
    kind = media_type.split(";", 1)[0].strip().lower()
    return kind.startswith("text/") or "json" in kind


def outbound_headers(headers: Headers, media_type: str, null: bytes | None = None) -> list[tuple[str, bytes | None]]:
    """Forward inbound headers byte for byte with their type entries, then set ``contentType``.

    ``contentType`` is JSON-quoted with a ``java.lang.String`` type entry: Spring Cloud Stream 2.x
    consumers need both, 3.x and later read it too. A null header value is forwarded as ``null``
    (None where the client writes null values). Records of one producer mostly share their headers,
    so the result is cached by them.
    """
    inbound = tuple(headers)
    key = (inbound, media_type, null)
    found = _OUTBOUND.get(key)
    if found is None:
        found = _remember(_OUTBOUND, key, _outbound_headers(inbound, media_type, null), inbound)
    return list(found)


def _outbound_headers(headers: tuple[tuple[str, bytes | None], ...], media_type: str,
                      null: bytes | None) -> tuple[tuple[str, bytes | None], ...]:
    try:
        inbound_types = header_types(headers)
    except HeaderError:
        inbound_types = {}
    out: list[tuple[str, bytes]] = []
    types: dict[str, str] = {}
    for key, value in headers:
        if key in _NOT_FORWARDED or key.startswith(_NOT_FORWARDED_PREFIXES):
            continue
        out.append((key, null if value is None else value))
        if key in inbound_types:
            types[key] = inbound_types[key]
    out.append((CONTENT_TYPE, json.dumps(media_type).encode()))
    types[CONTENT_TYPE] = "java.lang.String"
    out.append((TYPES_HEADER, json.dumps(types, separators=(",", ":")).encode()))
    return tuple(out)
