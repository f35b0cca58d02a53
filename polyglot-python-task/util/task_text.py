"""The text the task writes to its tables: cleaned, cut to the column, reduced when the database refuses it.

Also ERROR_MESSAGE's shape: the exception first, as a Spring stack trace starts, then the frames that fit.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable

log = logging.getLogger(__name__)

MESSAGE_SIZE = 2500  # EXIT_MESSAGE, ERROR_MESSAGE and TASK_PARAM are VARCHAR(2500)
SIZES = {"TASK_PARAM": MESSAGE_SIZE, "EXIT_MESSAGE": MESSAGE_SIZE, "ERROR_MESSAGE": MESSAGE_SIZE, "TASK_NAME": 100,
         "EXTERNAL_EXECUTION_ID": 255}
# How the text is written, one step down each time the database refuses a value.
FORMS = ("cleaned", "with non-ASCII characters as '?'", "as NULL")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates (undecodable bytes): no database stores them
_TRACEBACK = "Traceback (most recent call last):\n"

# A column's value as one form writes it: (column, value) -> the value written.
Fit = Callable[[str, str | None], str | None]


def fitter(form: int, execution: str, warned: set[str]) -> Fit:
    """Values as FORMS[form] writes them; the first cleaning of each column (``warned`` keeps them) logs a warning."""

    def fit(column: str, value: str | None) -> str | None:
        if value is None or form == len(FORMS) - 1:
            return None
        cut = value[:SIZES[column]]
        text = _UNSTORABLE.sub("\ufffd", cut)
        if text != cut and column not in warned:
            warned.add(column)
            log.warning("%s of %s holds NUL or undecodable characters, which no database stores: written as U+FFFD",
                        column, execution)
        return text.encode("ascii", "replace").decode("ascii") if form else text

    return fit


def stack_trace(error: BaseException, size: int = MESSAGE_SIZE) -> str:
    """ERROR_MESSAGE for ``error``: its type and message, then its trace, at most ``size`` characters.

    When the trace does not fit, the innermost frames (nearest the error) are kept after a line saying how
    many outer frames were cut; a message too long on its own is cut.
    """
    head = "".join(traceback.format_exception_only(error))
    whole = traceback.format_exception(error)  # any chained exceptions, this one's frames, then the head again
    trace = whole[:len(whole) - len(traceback.format_exception_only(error))]
    if len(head) + sum(map(len, trace)) <= size:
        return head + "".join(trace)
    frames = traceback.format_tb(error.__traceback__)
    chains = error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__)
    chained = " and the exceptions it chains" if chains else ""

    def marker(cut: int) -> str:
        return f"  ... {cut} outer frames{chained} cut ...\n"

    room = size - len(head) - len(_TRACEBACK) - len(marker(len(frames)))
    kept = 0
    while kept < len(frames) and len(frames[-1 - kept]) <= room:
        room -= len(frames[-1 - kept])
        kept += 1
    innermost = frames[len(frames) - kept:]
    return (head + _TRACEBACK + marker(len(frames) - kept) + "".join(innermost))[:size]
