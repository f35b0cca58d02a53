"""The entry points a step's script calls: ``run_processor``, ``run_app``, ``run_sink`` and ``run_source``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from .app import serve
from .arguments import ConfigError, Properties, Property
from .batches import BatchMode
from .binder import Binder
from .bindings import resolve_input, resolve_output
from .message import Message
from .metrics import Metrics
from .source import Source, poller
from .values import Reader, batch_reader, first_annotation, reader


def run_app(handler: Callable[..., tuple[str, Message | None] | None], outputs: Sequence[str],
            options: Mapping[str, Property] | None = None, group_fallback: Property | None = None,
            tombstones: str | None = None) -> None:
    """Run an app with one input and the named output bindings until SIGTERM; exit non-zero on failure.

    ``handler(message, **options)`` returns ``(output binding, message)``, or None to send nothing.
    ``options`` maps the function's keyword arguments to the app's own properties; without an input
    group, ``group_fallback``'s value (say the stream name) is the group, else the consumer is anonymous.
    A tombstone (a record with a null value) passes unchanged to the ``tombstones`` output, without
    calling the function; with none, it takes the record's error path at once.
    """
    _run(handler, outputs, options, group_fallback, tombstones, None, "app")


def run_processor(transform: Callable[..., Message | None], options: Mapping[str, Property] | None = None) -> None:
    """A processor: ``transform(message, **options) -> message`` (None: nothing) from ``input`` to ``output``.

    As Spring's processors, a tombstone passes through to ``output``.
    """
    _run(transform, ("output",), options, None, "output", "output", "processor")


def run_sink(consume: Callable[..., object], options: Mapping[str, Property] | None = None,
             group_fallback: Property | None = None) -> None:
    """A sink: ``consume(message, **options)`` for each record of ``input``; its offset is committed after it
    returned. What it raises is retried, then dead-lettered or skipped, as in a processor."""
    _run(consume, (), options, group_fallback, None, None, "sink")


def run_source(supply: Callable[..., Message | str | bytes | None],
               options: Mapping[str, Property] | None = None) -> None:
    """A source: ``supply(**options)`` is polled (``spring.integration.poller.*``); what it returns goes to
    ``output`` (None: nothing this time; text is sent as ``text/plain``, bytes as they are)."""
    def create(properties: Properties, values: dict[str, Any], metrics: Metrics) -> Binder:
        return Source(properties, partial(supply, **values), getattr(supply, "__name__", "source"),
                      {"output": resolve_output(properties, "output")}, metrics, poller(properties))

    serve(create, options or {}, "source")


def _run(function: Callable[..., Any], outputs: Sequence[str], options: Mapping[str, Property] | None,
         group_fallback: Property | None, tombstones: str | None, single: str | None, app_type: str) -> None:
    def create(properties: Properties, values: dict[str, Any], metrics: Metrics) -> Binder:
        source = resolve_input(properties, group_fallback)
        sinks = {name: resolve_output(properties, name) for name in outputs}
        read = _reader(function, batch_reader if source.batch_mode else reader)
        if not source.batch_mode:
            return Binder(properties, _bound(function, values, read), source, sinks, metrics, tombstones, single)
        binder = Binder(properties, _bound(function, values), source, sinks, metrics, tombstones, single)
        binder.batches = BatchMode(binder, read)
        return binder

    serve(create, options or {}, app_type)


def _reader(function: Callable[..., Any], choose: Callable[[Any], Reader | None]) -> Reader | None:
    """What the function's first parameter takes (``values.py``); ConfigError when nothing can give it."""
    try:
        return choose(first_annotation(function))
    except TypeError as error:
        raise ConfigError(f"function '{getattr(function, '__name__', function)}': {error}") from None


def _bound(function: Callable[..., Any], values: dict[str, Any], read: Reader | None = None) -> Callable[..., Any]:
    """The function with its options bound once: passed by position after the message where its signature
    allows (a keyword call costs a dictionary a record), by keyword otherwise; ``read`` turns the Message into
    what the function takes. No options and no reading: the function itself."""
    if not values:
        return function if read is None else lambda message: function(read(message))
    try:
        parameters = list(inspect.signature(function).parameters.values())[1:len(values) + 1]
    except (TypeError, ValueError):  # a callable without a signature Python can read
        parameters = []
    if {p.name for p in parameters if p.kind in _POSITIONAL} != set(values):
        call = partial(function, **values)
        return call if read is None else lambda message: call(read(message))
    options = tuple(values[p.name] for p in parameters)
    if read is None:
        return lambda message: function(message, *options)
    return lambda message: function(read(message), *options)


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
