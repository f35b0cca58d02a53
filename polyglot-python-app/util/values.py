"""Payloads as the step's function declares them: a Message, bytes, text, a JSON value or a dataclass, in and out.

The annotation of the function's first parameter says what it takes (none, or ``Message``: the Message as it
is). JSON is read when the record's content type is JSON (``application/json``, ``application/*+json``);
a record that does not convert is that record's failure (``ConversionError``: its error path at once, no
retry). What the function returns becomes the output Message, keeping the input's headers: a Message as it
is, bytes with the input's content type, text as ``text/plain``, a JSON value or a dataclass as
``application/json``; None sends nothing.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Callable
from typing import Any

from .message import Message, build

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # made once: json.dumps makes one a call
JSON_TYPES = (dict, list, int, float, bool)
Reader = Callable[[Message], Any]


class ConversionError(ValueError):
    """A record's payload does not convert to what the function takes, or its result to a message."""


def is_json(media_type: str) -> bool:
    """``application/json`` or ``application/<anything>+json`` (parameters ignored)."""
    kind = media_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def first_annotation(function: Callable[..., Any]) -> Any:
    """The annotation of the function's first parameter (``inspect.Parameter.empty`` when it has none)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a callable without a signature Python can read: a Message, as always
        return inspect.Parameter.empty
    if not parameters:
        return inspect.Parameter.empty
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - an annotation that names nothing importable: the text is read below
        hints = {}
    return hints.get(parameters[0].name, parameters[0].annotation)


def reader(annotation: Any) -> Reader | None:
    """What turns a Message into the function's argument; None: the Message itself. TypeError names an
    annotation this cannot give."""
    if annotation in (inspect.Parameter.empty, Message, "Message"):
        return None
    if annotation is bytes:
        return _payload
    if annotation is str:
        return _text
    if annotation is Any or annotation in JSON_TYPES:
        return lambda message: _json(message, annotation)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return lambda message: _dataclass(message, annotation)
    if typing.get_origin(annotation) is list:
        raise TypeError(f"the function takes {annotation}: a list of records is batch mode, "
                        "spring.cloud.stream.bindings.input.consumer.batch-mode=true")
    raise TypeError(f"a step's function takes a Message, bytes, str, dict, list, int, float, bool, typing.Any or a "
                    f"dataclass, not {getattr(annotation, '__name__', annotation)!r}")


def outgoing(result: Any, source: Message | None) -> Message | None:
    """What the function returned as the message to send (None: nothing), keeping ``source``'s headers."""
    if result is None or type(result) is Message:
        return result
    headers, media = (source.headers, source.content_type) if source is not None else ((), None)
    if isinstance(result, bytes | bytearray | memoryview):
        return build(Message, (bytes(result), headers, media or "application/octet-stream"))
    if isinstance(result, str):
        return build(Message, (result.encode("utf-8"), headers, "text/plain"))
    if not isinstance(result, JSON_TYPES):
        if not dataclasses.is_dataclass(result) or isinstance(result, type):
            raise ConversionError(f"the function returned {type(result).__name__}: it returns a Message, bytes, "
                                  "str, a JSON value (dict, list, int, float, bool), a dataclass or None")
        result = dataclasses.asdict(result)
    try:
        encoded = _ENCODER.encode(result).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise ConversionError(f"the function's result is not JSON: {error}") from None
    except RecursionError:
        raise ConversionError("the function's result is JSON nested too deep to write") from None
    return build(Message, (encoded, headers, "application/json"))


def _payload(message: Message) -> bytes:
    return message.payload


def _text(message: Message) -> str:
    try:
        return message.payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConversionError(f"payload ({message.content_type}) is not UTF-8 text: {error}") from None


def _decoded(message: Message) -> Any:
    if not is_json(message.content_type):
        raise ConversionError(f"content type '{message.content_type}' is not JSON: the function takes a JSON value")
    try:
        return json.loads(message.payload, parse_constant=_no_constant)
    except ValueError as error:  # UnicodeDecodeError too
        raise ConversionError(f"payload ({message.content_type}) is not JSON: {error}") from None
    except RecursionError:
        raise ConversionError(f"payload ({message.content_type}) is JSON nested too deep to read") from None


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Jackson refuses them too; they could not be sent back out)."""
    raise ValueError(f"{name} is not a JSON number")


def _json(message: Message, wanted: Any) -> Any:
    value = _decoded(message)
    if wanted is Any or (isinstance(value, wanted) and not (wanted is int and isinstance(value, bool))):
        return value
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConversionError(f"payload is a JSON {type(value).__name__}, the function takes {wanted.__name__}")


def _dataclass(message: Message, kind: type) -> Any:
    value = _decoded(message)
    if not isinstance(value, dict):
        raise ConversionError(f"payload is a JSON {type(value).__name__}, the function takes {kind.__name__} "
                              "(a JSON object)")
    fields = [f for f in dataclasses.fields(kind) if f.init]
    missing = [f.name for f in fields if f.name not in value and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConversionError(f"payload lacks field(s) {', '.join(missing)} of {kind.__name__}")
    try:
        return kind(**{f.name: value[f.name] for f in fields if f.name in value})
    except (TypeError, ValueError) as error:  # what the dataclass's own __post_init__ refuses
        raise ConversionError(f"payload does not make a {kind.__name__}: {error}") from None


def batch_reader(annotation: Any) -> Reader | None:
    """Batch mode: ``list[T]`` (or ``list``, or none) reads each record as ``T`` would; TypeError for the rest."""
    if annotation in (inspect.Parameter.empty, list):
        return None
    if typing.get_origin(annotation) is list:
        (inner,) = typing.get_args(annotation) or (inspect.Parameter.empty,)
        return reader(inner)
    raise TypeError("in batch mode (spring.cloud.stream.bindings.input.consumer.batch-mode=true) the function's "
                    f"first parameter is annotated list[...], not {getattr(annotation, '__name__', annotation)!r}")
