"""A processor for the tests that returns each kind of value a function may: the input text names which."""

from dataclasses import dataclass

from util import Message, run_processor


@dataclass
class Point:
    x: int
    y: int


def shape(text: str) -> object:
    return {"bytes": b"\x00raw", "text": "tëxt", "json": {"k": [1, "é"]}, "number": 2.5, "point": Point(1, 2),
            "none": None, "message": Message(b"<m/>", (), "application/xml"),
            "long-key": Message(b"k", (("k" * 300, b"v"),), "text/plain")}[text]


if __name__ == "__main__":
    run_processor(shape)
