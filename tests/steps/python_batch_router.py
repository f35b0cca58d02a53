"""A batch-mode router for the tests: timestamps in as a list, each to ``even`` or ``odd``; one ending in 5 is
filtered (None); one with no final digit raises BatchError at itself."""

from util import BatchError, run_app


def route_all(stamps: list[str]) -> list[tuple[str, str] | None]:
    routed: list[tuple[str, str] | None] = []
    for index, stamp in enumerate(stamps):
        if not stamp or stamp[-1] not in "0123456789":
            raise BatchError(index, ValueError(f"cannot route {stamp!r}: it does not end with a decimal digit"))
        routed.append(None if stamp.endswith("5") else ("even" if int(stamp[-1]) % 2 == 0 else "odd", f"<{stamp}>"))
    return routed


if __name__ == "__main__":
    run_app(route_all, ("even", "odd"))
