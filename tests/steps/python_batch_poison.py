"""A batch-mode processor for the transaction attack tests: a text starting with ``poison`` raises BatchError
at itself (whatever its size); the others are reversed."""

from util import BatchError, run_processor


def reverse_all(texts: list[str]) -> list[str]:
    for index, text in enumerate(texts):
        if text.startswith("poison"):
            raise BatchError(index, ValueError("poison"))
    return [text[::-1] for text in texts]


if __name__ == "__main__":
    run_processor(reverse_all)
