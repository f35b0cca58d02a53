"""A batch-mode sink for the tests: writes each batch's texts to a file, a line each, up to ``poison``, which it
reports with BatchError (what it wrote before it is done)."""

from util import BatchError, Property, run_sink

FILE = Property("sink.file", str, None, "Where the payloads are written.", required=True)


def write_all(texts: list[str], path: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        for index, text in enumerate(texts):
            if text == "poison":
                raise BatchError(index, ValueError("poison cannot be written"))
            out.write(text + "\n")


if __name__ == "__main__":
    run_sink(write_all, {"path": FILE})
