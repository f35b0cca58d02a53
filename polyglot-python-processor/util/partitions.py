"""Spring Cloud Stream's partition selection, with Java's hash codes."""

from __future__ import annotations

from array import array
from typing import Any

from .headers import HeaderError, header_text, is_text


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - 0x100000000 if value & 0x80000000 else value


def java_string_hash(text: str) -> int:
    """Java ``String.hashCode``: ``h = 31*h + c`` over UTF-16 code units, 32-bit."""
    units = array("H", text.encode("utf-16-le"))
    if array("H", b"\x01\x00")[0] != 1:
        units.byteswap()
    h = 0
    for unit in units:
        h = (31 * h + unit) & 0xFFFFFFFF
    return _int32(h)


def java_bytes_hash(data: bytes) -> int:
    """Java ``Arrays.hashCode(byte[])``: starts at 1, bytes are signed."""
    h = 1
    for byte in data:
        h = (31 * h + (byte - 256 if byte > 127 else byte)) & 0xFFFFFFFF
    return _int32(h)


def select_partition(key_hash: int, partition_count: int) -> int:
    """``DefaultPartitionSelector`` then ``PartitionHandler``: abs(hash) (MIN_VALUE as 0) modulo count."""
    if key_hash == -0x80000000:
        key_hash = 0
    return abs(key_hash) % partition_count


def output_partition(key: str, count: int, payload: bytes, headers: Any, media_type: str) -> int:
    """The partition of an output record, as Spring selects it by ``partitionKeyExpression``: ``payload`` (its text
    when the content type is text, else its bytes) or a header's value; HeaderError when that header is missing."""
    if key == "payload":
        if is_text(media_type):
            try:
                return select_partition(java_string_hash(payload.decode("utf-8")), count)
            except UnicodeDecodeError:
                pass
        return select_partition(java_bytes_hash(payload), count)
    value = header_text(headers, key)
    if value is None:
        raise HeaderError(f"partition key header '{key}' is missing")
    return select_partition(java_string_hash(value), count)
