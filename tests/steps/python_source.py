"""A source for the tests: sends "1", "2", ... up to ``count``; raises at ``fail-at`` (once)."""

import itertools

from util import Property, run_source

COUNT = Property("count", int, 10, "How many numbers to send.")
FAIL_AT = Property("fail-at", int, 0, "The number at which the function raises once (0: never).")
OPTIONS = {"count": COUNT, "fail_at": FAIL_AT}
numbers = itertools.count(1)
failed: list[int] = []


def next_number(count: int, fail_at: int) -> str | None:
    """The next number as text; None once ``count`` were sent."""
    number = next(numbers)
    if number == fail_at and not failed:
        failed.append(number)
        raise RuntimeError(f"failing once at {number}")
    return str(number) if number <= count else None


if __name__ == "__main__":
    run_source(next_number, OPTIONS)
