"""librdkafka's limit: the leanest confluent-kafka consume, reverse, produce loop (no headers, no commits).

    python librdkafka_bare.py BOOTSTRAP INPUT OUTPUT COUNT

It takes what is queued (up to 500) at once and waits only when nothing is, for the first record to arrive
(at most 100 ms) and what is queued behind it. librdkafka's defaults but for its 1 s fetch back-off (below).
Prints its stalls (see stalls.py) as a JSON line at the end.
"""

import sys

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from stalls import Stalls

BATCH = 500
# librdkafka stops fetching for fetch.queue.backoff.ms (1 s by default) once its queue holds queued.min.messages
# (100,000): a loop that drains the queue sooner then idles with records waiting at the broker. The processor
# sets 5 ms too.
FETCH_QUEUE_BACKOFF_MS = 5


def main(bootstrap: str, source: str, sink: str, count: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-bare-{sink}",
                         "enable.auto.commit": False, "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS})
    partitions = consumer.list_topics(source, timeout=10).topics[source].partitions
    consumer.assign([TopicPartition(source, p, OFFSET_BEGINNING) for p in partitions])
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5})
    stalls = Stalls()
    done = 0
    while done < count:
        messages = stalls.consume(consumer, BATCH, done)
        for message in messages:
            if message.error() is None:
                producer.produce(sink, message.value()[::-1])
                done += 1
        producer.poll(0)
    producer.flush(30)
    stalls.report()
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
