"""A batch-mode processor for the tests: texts in, reversed out, each tagged with its batch's size; ``poison``
raises BatchError at itself, ``boom`` fails the whole batch."""

from util import BatchError, run_processor


def reverse_all(texts: list[str]) -> list[str]:
    for index, text in enumerate(texts):
        if text == "poison":
            raise BatchError(index, ValueError("poison"))
        if text == "boom":
            raise RuntimeError("boom")
    return [f"{text[::-1]}|{len(texts)}" for text in texts]


if __name__ == "__main__":
    run_processor(reverse_all)
