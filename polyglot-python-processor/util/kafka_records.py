"""kafka-python's reading of record batches, mended: importing this module patches its batch classes.

A header key that is not UTF-8 is read with replacement characters, as Java reads it (kafka-python raised, and
the record could never be read); a batch its codec library cannot decompress raises kafka-python's
CorruptRecordError (its library's own error ended the app), which stalls the partition as a CRC mismatch does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kafka.errors import CorruptRecordError, KafkaError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.legacy_records import LegacyRecordBatch


class _Tolerant:
    """A record batch's buffer whose slices decode as UTF-8 with replacement characters, as Java reads a
    header key that is not UTF-8 (kafka-python would raise, and its record could never be read)."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data

    def __getitem__(self, index: Any) -> Any:
        found = self.data[index]
        return _Replacing(found) if isinstance(index, slice) else found

    def __len__(self) -> int:
        return len(self.data)


class _Replacing(bytes):
    def decode(self, encoding: str = "utf-8", errors: str = "replace") -> str:  # always replaces
        return bytes.decode(self, encoding, "replace")


def _read_tolerantly(strict: Callable[..., Any]) -> Callable[..., Any]:
    """kafka-python's record reader, read again over a tolerant buffer when a header key is not UTF-8."""
    def read(batch: Any, *args: Any, **kwargs: Any) -> Any:
        start = batch._pos
        try:
            return strict(batch, *args, **kwargs)
        except UnicodeDecodeError:
            buffer, batch._pos, batch._buffer = batch._buffer, start, _Tolerant(batch._buffer)
            try:
                return strict(batch, *args, **kwargs)
            finally:
                batch._buffer = buffer

    return read


def _decompressing(strict: Callable[..., Any]) -> Callable[..., Any]:
    """kafka-python's decompression of a batch, its codec library's own error (a damaged gzip, zstd, snappy or lz4
    payload whose CRC still matches: what a faulty producer writes) raised as the CorruptRecordError of a batch that
    cannot be read, which stalls its partition; kafka-python let it through and the app ended."""
    def decompress(batch: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return strict(batch, *args, **kwargs)
        except KafkaError:
            raise
        except Exception as error:  # each codec library raises its own kinds
            raise CorruptRecordError(f"a compressed batch that cannot be decompressed ({type(error).__name__}: "
                                     f"{error})") from error

    return decompress


DefaultRecordBatch._read_msg = _read_tolerantly(DefaultRecordBatch._read_msg)
DefaultRecordBatch._maybe_uncompress = _decompressing(DefaultRecordBatch._maybe_uncompress)
LegacyRecordBatch._decompress = _decompressing(LegacyRecordBatch._decompress)
