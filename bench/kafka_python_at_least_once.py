"""kafka-python at-least-once: the bare loop plus the Spring headers, a flush and a synchronous commit per batch.

    python kafka_python_at_least_once.py BOOTSTRAP INPUT OUTPUT COUNT

The reference for the processor on kafka-python: the same guarantees and headers, no binder. It takes what is
fetched (up to 500) at once and waits only when nothing is: then for the first records to arrive (at most
100 ms). Prints its stalls (see stalls.py) as a JSON line at the end.
"""

import sys

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata
from stalls import Stalls

HEADERS = [("contentType", b'"text/plain"'), ("spring_json_header_types", b'{"contentType":"java.lang.String"}')]
BATCH = 500


def main(bootstrap: str, source: str, sink: str, count: int) -> None:
    consumer = KafkaConsumer(source, bootstrap_servers=bootstrap, group_id=f"bench-alo-{sink}",
                             enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=6000,
                             heartbeat_interval_ms=2000)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False, linger_ms=5,
                             batch_size=128 << 10)
    stalls = Stalls()
    done = 0
    while done < count:
        batch = stalls.poll(consumer, BATCH, done)
        for records in batch.values():
            for record in records:
                dict(record.headers)  # read the inbound headers, as a binder does
                producer.send(sink, record.value[::-1], headers=HEADERS)
            done += len(records)
        if batch:
            producer.flush()
            consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records in batch.items()})
    stalls.report()
    producer.close()
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
