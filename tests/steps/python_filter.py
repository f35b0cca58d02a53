"""A processor for the tests that filters: ``drop`` returns None (nothing sent, as a Spring function's null)."""

from util import Message, run_processor


def keep(message: Message) -> Message | None:
    return None if message.payload == b"drop" else message


if __name__ == "__main__":
    run_processor(keep)
