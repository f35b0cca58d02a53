"""A batch-mode processor for the tests that returns and raises what a user's function may: ``EDGE`` (env)
picks which. Each call is logged (``CALL <size>``) so tests count attempts."""

import logging
import os

from util import BatchError, run_processor

EDGE = os.environ.get("EDGE", "")
log = logging.getLogger("edges")
failing: list[bool] = []


def reverse_all(texts: list[str]) -> object:
    log.warning("CALL %d", len(texts))
    log.warning("TEXTS [%s]", ",".join(texts))
    if EDGE == "fail_then_blame":  # a flaky whole-batch failure once, then BatchError at "poison" every time
        if not failing:
            failing.append(True)
            raise RuntimeError("flaky")
        if "poison" in texts:
            raise BatchError(texts.index("poison"), ValueError("poison"))
    if EDGE == "huge":  # the batch's one output, too large for the output topic
        return "x" * 3_000_000
    if EDGE == "blame_poison" and "poison" in texts:
        raise BatchError(texts.index("poison"), ValueError("poison"))
    if EDGE in ("float_index", "negative_index") and "poison" in texts:
        index = texts.index("poison")
        raise BatchError(float(index) if EDGE == "float_index" else index - len(texts), ValueError("poison"))
    if EDGE == "tuple":
        return tuple(text[::-1] for text in texts)
    if EDGE == "generator":
        return (text[::-1] for text in texts)
    if EDGE == "filter":  # a shorter list: the batch's outputs
        return [text[::-1] for text in texts if text != "drop"]
    if EDGE == "other_partition":  # BatchError at the first record of another partition, then a service down
        if failing:
            raise RuntimeError("downstream service is down")
        other = next((i for i, text in enumerate(texts) if text[0] != texts[0][0]), None)
        if other is not None:
            failing.append(True)
            raise BatchError(other, ValueError("the other partition"))
    if EDGE == "always_fail":
        raise RuntimeError("downstream service is down")
    if EDGE == "blame_last":
        raise BatchError(len(texts) - 1, ValueError("bad"))
    return [text[::-1] for text in texts]


if __name__ == "__main__":
    run_processor(reverse_all)
