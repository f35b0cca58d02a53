"""librdkafka at-least-once: the bare loop plus the Spring headers, a flush and a synchronous commit per batch.

    python librdkafka_at_least_once.py BOOTSTRAP INPUT OUTPUT COUNT

The reference for the processor on its default client: the same guarantees and headers, no binder. Like the
processor it takes what is queued (up to 500) at once and waits only when nothing is: then for the first
record to arrive (at most 100 ms), with what is queued behind it. librdkafka's ``consume(500, timeout)``
alone waits for a full 500 or the timeout, which idles the loop with records queued. librdkafka's defaults
otherwise, but for its 1 s fetch back-off (below). Prints its stalls (see stalls.py) as a JSON line at the end.
"""

import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from stalls import Stalls

HEADERS = [("contentType", b'"text/plain"'), ("spring_json_header_types", b'{"contentType":"java.lang.String"}')]
BATCH = 500
# librdkafka stops fetching for fetch.queue.backoff.ms (1 s by default) once its queue holds queued.min.messages
# (100,000): a loop that drains the queue sooner then idles with records waiting at the broker. The processor
# sets 5 ms too.
FETCH_QUEUE_BACKOFF_MS = 5


def main(bootstrap: str, source: str, sink: str, count: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-alo-{sink}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                         "heartbeat.interval.ms": 2000, "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS})
    consumer.subscribe([source])
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5,
                         "delivery.report.only.error": True})
    stalls = Stalls()
    done = 0
    while done < count:
        messages = stalls.consume(consumer, BATCH, done)
        ends: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is None:
                message.headers()  # read the inbound headers, as a binder does
                producer.produce(sink, message.value()[::-1], headers=HEADERS)
                ends[(message.topic(), message.partition())] = message.offset() + 1
                done += 1
        if ends:
            producer.flush(30)
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)
    stalls.report()
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
