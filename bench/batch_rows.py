"""The batch-mode and JSON rows of ``make bench``: the steps under ``bench/steps``, their inputs and their targets.

A batch-mode processor (``steps/batch_reverse.py``: ``list[str]`` in, each text reversed) against the
librdkafka at-least-once loop, and on RabbitMQ against the single-record processor; a JSON step
(``steps/json_enrich.py``: ``dict`` in and out) against a loop that does the same ``json.loads`` and
``json.dumps`` by hand (``librdkafka_json_at_least_once.py``), over an input of JSON orders of about 100 bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

BATCH_MODE = "--spring.cloud.stream.bindings.input.consumer.batch-mode=true"
# Consumer-side batching on RabbitMQ: up to 1,000 deliveries a batch (what one poll of the single-record processor
# takes, and the prefetch), collected for at most a second (Spring's receiveTimeout). Each batch ends with a wait
# for its confirms: at 100 a batch that wait came ten times as often and the row ran at 0.3x the processor.
RABBIT_BATCHING = (BATCH_MODE, "--spring.cloud.stream.rabbit.bindings.input.consumer.enableBatching=true",
                   "--spring.cloud.stream.rabbit.bindings.input.consumer.batchSize=1000")
STEPS = {"batch": "bench/steps/batch_reverse.py", "json": "bench/steps/json_enrich.py"}
UTIL = "polyglot-python-processor"  # the steps run on the processor's util, as a user's step does

BATCH_ROW, BATCH_RABBIT_ROW = "batch-mode processor (librdkafka)", "batch-mode processor (RabbitMQ)"
JSON_ROW, JSON_LOOP_ROW = "JSON step (librdkafka)", "librdkafka JSON at-least-once loop"
# name, top row, bottom row, goal (None: reported only), for ``report.targets``: all ">=".
RATIOS: list[tuple[str, str, str, float | None]] = [
    (f"{BATCH_ROW} / librdkafka at-least-once loop", BATCH_ROW, "librdkafka at-least-once loop", 1.5),
    (f"{BATCH_ROW} / processor (librdkafka)", BATCH_ROW, "processor (librdkafka)", None),
    (f"{JSON_ROW} / {JSON_LOOP_ROW}", JSON_ROW, JSON_LOOP_ROW, 0.9),
    (f"{BATCH_RABBIT_ROW} / processor (RabbitMQ)", BATCH_RABBIT_ROW, "processor (RabbitMQ)", None),
]


def order(i: int) -> str:
    """About 100 bytes of a JSON order."""
    return json.dumps({"id": i, "customer": f"customer-{i % 1000:04d}", "sku": f"sku-{i % 97:05d}",
                       "quantity": 1 + i % 5, "price": round(1 + (i % 1000) / 100, 2), "currency": "EUR"},
                      separators=(",", ":"))


class JsonInput:
    """The input topic of JSON orders, produced on first use (so a run without the JSON rows skips it)."""

    def __init__(self, bench: Any) -> None:
        self.bench, self.topic = bench, ""

    def __call__(self) -> str:
        if not self.topic:
            self.topic = self.bench.create(self.bench.name("json"))
            self.bench.produce(self.topic, render=order, content_type="application/json")
        return self.topic


def kafka_rows(bench: Any, source: str, repeat: Callable[[str, Callable[[], float]], None],
               loop: Callable[..., None]) -> None:
    """The Kafka rows, through run.py's ``repeat`` and ``loop``: the batch-mode processor over the text input,
    the JSON loop and the JSON step over the JSON one."""
    repeat(BATCH_ROW, lambda: bench.run_app("batch", source, extra=(BATCH_MODE,))[0])
    topic = JsonInput(bench)
    loop(JSON_LOOP_ROW, "librdkafka_json_at_least_once.py", topic=topic)
    repeat(JSON_ROW, lambda: bench.run_app("json", topic())[0])
