"""librdkafka's limit: the leanest confluent-kafka consume, reverse, produce loop (no headers, no commits).

    python librdkafka_bare.py BOOTSTRAP INPUT OUTPUT COUNT
"""

import sys

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition


def main(bootstrap: str, source: str, sink: str, count: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-bare-{sink}",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(source, timeout=10).topics[source].partitions
    consumer.assign([TopicPartition(source, p, OFFSET_BEGINNING) for p in partitions])
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5})
    done = 0
    while done < count:
        for message in consumer.consume(500, 0.5):
            if message.error() is None:
                producer.produce(sink, message.value()[::-1])
                done += 1
        producer.poll(0)
    producer.flush(30)
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
