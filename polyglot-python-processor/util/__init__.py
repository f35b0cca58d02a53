"""What a step imports: ``from util import Message, Property, run_processor`` (each loaded on first use)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and editors see
    from .arguments import Property as Property
    from .batches import BatchError as BatchError
    from .bindings import STREAM_NAME as STREAM_NAME
    from .headers import is_text as is_text
    from .message import Message as Message
    from .steps import run_app as run_app
    from .steps import run_processor as run_processor
    from .steps import run_sink as run_sink
    from .steps import run_source as run_source

# Where each name lives. Loaded on first use, so a module that imports only util.arguments loads nothing else.
# This file is shared by every recipe: a name is offered where its module is (the task's util has no stream loop,
# the stream recipes' no task).
_HOMES = {"BatchError": "batches", "Message": "message", "Property": "arguments", "STREAM_NAME": "bindings",
          "is_text": "headers", "run_app": "steps", "run_processor": "steps", "run_sink": "steps",
          "run_source": "steps", "run_task": "task_status", "TaskExecution": "task_status"}
_OFFERED = {name: home for name, home in _HOMES.items() if (Path(__file__).parent / f"{home}.py").is_file()}
__all__ = sorted(_OFFERED)


def __getattr__(name: str) -> Any:
    if name not in _OFFERED:
        raise AttributeError(f"module 'util' has no attribute '{name}' (it offers {', '.join(__all__)})")
    return getattr(importlib.import_module(f".{_OFFERED[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
