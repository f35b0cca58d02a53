"""librdkafka at-least-once: the bare loop plus the Spring headers, a flush and a synchronous commit per 500.

    python librdkafka_at_least_once.py BOOTSTRAP INPUT OUTPUT COUNT

The reference for the processor on its default client: the same guarantees and headers, no binder.
"""

import sys

from confluent_kafka import Consumer, Producer, TopicPartition

HEADERS = [("contentType", b'"text/plain"'), ("spring_json_header_types", b'{"contentType":"java.lang.String"}')]


def main(bootstrap: str, source: str, sink: str, count: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-alo-{sink}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                         "heartbeat.interval.ms": 2000})
    consumer.subscribe([source])
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5,
                         "delivery.report.only.error": True})
    done = 0
    while done < count:
        ends: dict[tuple[str, int], int] = {}
        for message in consumer.consume(500, 0.5):
            if message.error() is None:
                message.headers()  # read the inbound headers, as a binder does
                producer.produce(sink, message.value()[::-1], headers=HEADERS)
                ends[(message.topic(), message.partition())] = message.offset() + 1
                done += 1
        if ends:
            producer.flush(30)
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
