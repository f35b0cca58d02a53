"""The batch-mode step of ``make bench``: a poll's texts in, each reversed, out (run on the processor's util).

    --spring.cloud.stream.bindings.input.consumer.batch-mode=true
"""

from util import run_processor


def reverse_all(texts: list[str]) -> list[str]:
    return [text[::-1] for text in texts]


if __name__ == "__main__":
    run_processor(reverse_all)
