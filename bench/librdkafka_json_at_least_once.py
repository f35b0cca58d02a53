"""librdkafka at-least-once with JSON: the at-least-once loop plus ``json.loads`` and ``json.dumps`` a record.

    python librdkafka_json_at_least_once.py BOOTSTRAP INPUT OUTPUT COUNT

The reference for the JSON step (``steps/json_enrich.py``): the same work written by hand, an order decoded, its
total added, encoded again and sent with ``contentType: application/json`` (as Spring writes it), with the
guarantees of ``librdkafka_at_least_once.py``: what is queued (up to 500) taken at once, a flush and a
synchronous commit after each batch. Prints its stalls (see stalls.py) as a JSON line at the end.
"""

import json
import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from librdkafka_at_least_once import BATCH, FETCH_QUEUE_BACKOFF_MS
from stalls import Stalls

HEADERS = [("contentType", b'"application/json"'),
           ("spring_json_header_types", b'{"contentType":"java.lang.String"}')]


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
                order = json.loads(message.value())
                order["total"] = round(order["quantity"] * order["price"], 2)
                producer.produce(sink, json.dumps(order).encode(), headers=HEADERS)
                ends[(message.topic(), message.partition())] = message.offset() + 1
                done += 1
        if ends:
            producer.flush(30)
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)
    stalls.report()
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
