"""What a step's function sees and returns: the Message, and the shapes of the functions the loop calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple


class Message(NamedTuple):
    """What the app's function sees and returns: payload bytes, inbound headers, content type."""

    payload: bytes
    headers: Sequence[tuple[str, bytes | None]]
    content_type: str

    def text(self) -> str:
        """The payload as UTF-8 text; UnicodeDecodeError sends the record down the error path."""
        return self.payload.decode("utf-8")

    def with_payload(self, payload: bytes, content_type: str | None = None) -> Message:
        return build(Message, (payload, self.headers, content_type or self.content_type))


build = tuple.__new__  # builds a Message in C, without its Python __new__: twice a record, on the hot path

# An app's function, its options bound: a message in, the output binding's name and the message to send out
# (None: nothing). A processor's (``single`` output) returns the message alone.
Handler = Callable[[Message], tuple[str, Message | None] | Message | None]
