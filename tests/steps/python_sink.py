"""A sink for the tests: appends each payload to a file, a line each; ``poison`` always fails."""

from util import Message, Property, run_sink

FILE = Property("sink.file", str, None, "Where the payloads are written.", required=True)
OPTIONS = {"path": FILE}


def write(message: Message, path: str) -> None:
    text = message.text()
    if text == "poison":
        raise ValueError("poison cannot be written")
    with open(path, "a", encoding="utf-8") as out:
        out.write(text + "\n")


if __name__ == "__main__":
    run_sink(write, OPTIONS)
