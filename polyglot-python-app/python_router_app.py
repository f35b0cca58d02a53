"""Spring Cloud Data Flow ``app``: routes each timestamp to binding ``even`` or ``odd`` by its last digit.

    stream create --name timestamps --definition "time || python-router || evenLogger: log || oddLogger: log"
"""

import json

from util import STREAM_NAME, run_app

OUTPUTS = ("even", "odd")
OPTIONS: dict = {}  # the router has no properties of its own
GROUP_FALLBACK = STREAM_NAME  # without a group, a restarted router resumes where the stream left off


def timestamp(text: str) -> str:
    """The value's text, trimmed, without surrounding JSON quotes."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            text = json.loads(text)
        except ValueError:
            text = text[1:-1]
    return text


def route(value: str) -> str:
    """``even`` or ``odd`` by the last decimal digit; ValueError when the value does not end with one."""
    if not value or value[-1] not in "0123456789":
        raise ValueError(f"cannot route {value!r}: it does not end with a decimal digit")
    return "even" if int(value[-1]) % 2 == 0 else "odd"


def handle(text: str) -> tuple[str, str]:
    """The payload as UTF-8 text in (one that is not UTF-8 goes to the error path); text out, ``text/plain``, with
    the input's headers."""
    value = timestamp(text)
    binding = route(value)
    return binding, f"{binding.capitalize()} timestamp: {value}"


if __name__ == "__main__":
    run_app(handle, OUTPUTS, OPTIONS, GROUP_FALLBACK)
