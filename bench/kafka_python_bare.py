"""kafka-python's limit: the leanest consume, reverse, produce loop (no headers, no commits, big batches).

    python kafka_python_bare.py BOOTSTRAP INPUT OUTPUT COUNT

It takes what is fetched (up to 5,000) at once and waits only when nothing is, for the first records to arrive
(at most 100 ms); prints its stalls (see stalls.py) as a JSON line at the end.
"""

import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from stalls import Stalls

BATCH = 5000


def main(bootstrap: str, source: str, sink: str, count: int) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)
    consumer.assign([TopicPartition(source, p) for p in consumer.partitions_for_topic(source)])
    consumer.seek_to_beginning()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False, linger_ms=5,
                             batch_size=256 << 10)
    stalls = Stalls()
    done = 0
    while done < count:
        batch = stalls.poll(consumer, BATCH, done)
        for records in batch.values():
            for record in records:
                producer.send(sink, record.value[::-1])
            done += len(records)
    producer.flush()
    stalls.report()
    producer.close()
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
