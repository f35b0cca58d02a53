"""The exactly-once rows of ``make bench``: the processor with ``transactionIdPrefix`` on each Kafka client.

Each run gets a transaction id prefix of its own (a fresh transactional.id: no fencing of, nor waiting on, an
earlier run's producer). The processor then sends each polled batch (up to 500 records) in one transaction with
its input offsets: AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit and EndTxn a batch where the at-least-once
loop flushes and commits synchronously; that difference is what the ratio judges. Throughput is read off the output
records' timestamps as for every row (kcat reads committed records only). After each run the output is read again,
markers applied (``devkit/committed_reader.py``: Tansu does not filter aborted records), and must hold every input
record's output exactly once, none aborted, none left open; and the group's committed offsets must be the input's
ends (the offsets went with the transactions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient

from bench.lag_rows import backlog
from devkit.committed_reader import read_logs

PREFIX = "--spring.cloud.stream.kafka.binder.transaction.transactionIdPrefix="
ROWS = {client: f"transactional processor ({client})" for client in ("librdkafka", "kafka-python")}
# name, top row, bottom row, goal (None: reported only), for ``report.targets``: all ">=".
RATIOS: list[tuple[str, str, str, float | None]] = [
    (f"{ROWS['librdkafka']} / librdkafka at-least-once loop", ROWS["librdkafka"], "librdkafka at-least-once loop",
     0.7),
    (f"{ROWS['librdkafka']} / processor (librdkafka)", ROWS["librdkafka"], "processor (librdkafka)", None),
    (f"{ROWS['kafka-python']} / kafka-python at-least-once loop", ROWS["kafka-python"],
     "kafka-python at-least-once loop", 0.7),
    (f"{ROWS['kafka-python']} / processor (kafka-python)", ROWS["kafka-python"], "processor (kafka-python)", None),
]
READ_SECONDS = 300  # reading the output back (pure Python, about 100,000 records a second) and the group's offsets


def rows(bench: Any, source: str, client: str, records: int, partitions: int,
         repeat: Callable[[str, Callable[[], float]], None]) -> None:
    """The client's row through run.py's ``repeat``: records/s, each run checked (``check``)."""
    def run() -> float:
        prefix = bench.name("tx") + "-"  # unique to the run
        def checked(code: int, outputs: dict[str, int], group: str) -> None:
            if code != 0:
                raise RuntimeError(f"the transactional processor on {client} stopped with {code}")
            check(bench, source, outputs, group, records, partitions)
        return bench.run_app("processor", source, client, extra=(PREFIX + prefix,), label="tx-processor",
                             check=checked)[0]
    repeat(ROWS[client], run)


def check(bench: Any, source: str, outputs: dict[str, int], group: str, records: int, partitions: int) -> None:
    """The stopped processor's outputs and offsets: each output committed once, none aborted or open, and the
    group's offsets at the input's ends. RuntimeError otherwise."""
    for topic, count in outputs.items():
        logs = read_logs(bench.broker.bootstrap, topic, READ_SECONDS)
        visible = [record.value for log in logs.values() for record in log.visible()]
        aborted = sum(len(log.aborted) for log in logs.values())
        still_open = sum(log.open_count for log in logs.values())
        if len(visible) != count or len(set(visible)) != count or aborted or still_open:
            raise RuntimeError(f"{topic}: {len(visible)} committed outputs ({len(set(visible))} distinct) of "
                               f"{count}, {aborted} aborted, {still_open} in open transactions")
    admin = KafkaAdminClient(bootstrap_servers=bench.broker.bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    committed = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == source}
    if committed != backlog(records, partitions):
        raise RuntimeError(f"group {group} committed {committed}, not the input's ends "
                           f"{backlog(records, partitions)}")
