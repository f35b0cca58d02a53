"""The seed processor's loop, ported to Python 3 and nothing more: no group, default settings, a send per record.

    python naive.py BOOTSTRAP INPUT OUTPUT COUNT

Two changes make it measurable: it starts at the earliest offset (the seed, with no group, started at the
latest and would miss the prepared records) and it stops after COUNT records.
"""

import sys

from kafka import KafkaConsumer, KafkaProducer


def main(bootstrap: str, source: str, sink: str, count: int) -> None:
    consumer = KafkaConsumer(source, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for done, message in enumerate(consumer, start=1):
        if message.value is not None:
            producer.send(sink, message.value[::-1])
        if done == count:
            break
    producer.flush()
    producer.close()
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
