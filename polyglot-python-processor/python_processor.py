"""Spring Cloud Data Flow processor: reverses the text of each message when ``reversestring`` is true.

    stream create --name text-reversal --definition "http | python-processor --reversestring=true | log"
"""

import regex

from util import Message, Property, is_text, run_processor

GRAPHEME = regex.compile(r"\X")
REVERSE_STRING = Property("reversestring", bool, False, "Reverse the text of each message.",
                          aliases=("reverestring",))  # the seed's spelling still works
OPTIONS = {"reverse_string": REVERSE_STRING}


def reverse(text: str) -> str:
    """Reverse by grapheme clusters: accents stay on their letters, skin tones on their hands."""
    if text.isascii() and "\r\n" not in text:
        return text[::-1]  # in ASCII only CR LF is a cluster of two characters
    # Keep the GIL: released per match, the Kafka I/O thread takes it each time and the loop crawls.
    return "".join(reversed(GRAPHEME.findall(text, concurrent=False)))


def transform(message: Message, reverse_string: bool) -> Message:
    """Reverse text payloads; anything else, or reversal off, passes through byte for byte."""
    if not reverse_string or not is_text(message.content_type):
        return message
    return message.with_payload(reverse(message.text()).encode("utf-8"))


if __name__ == "__main__":
    run_processor(transform, OPTIONS)
