"""Payloads by the function's annotation, in and out (``util/values.py``): its pure functions, then a JSON step on
Tansu."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from typing import Any

import pytest

from conftest import Kafka, Rabbit
from devkit.apps import App
from devkit.waiting import wait_for
from util.message import Message
from util.values import ConversionError, first_annotation, is_json, outgoing, reader

HEADERS = (("contentType", b'"application/json"'), ("trace", b"t-1"))


def message(payload: bytes, content_type: str = "application/json") -> Message:
    return Message(payload, HEADERS, content_type)


@dataclasses.dataclass
class Order:
    id: int
    item: str
    note: str = ""


def test_json_content_types() -> None:
    assert is_json("application/json")
    assert is_json("application/json; charset=UTF-8")
    assert is_json("application/vnd.order+json")
    assert not is_json("text/plain")
    assert not is_json("application/octet-stream")


def test_the_first_parameters_annotation_chooses_what_the_function_takes() -> None:
    def untyped(m, flag):
        return m

    def typed(order: Order, flag: bool) -> Order:
        return order

    assert first_annotation(untyped) is inspect.Parameter.empty
    assert first_annotation(typed) is Order  # resolved although annotations are strings here
    assert reader(inspect.Parameter.empty) is None
    assert reader(Message) is None
    with pytest.raises(TypeError, match="not 'set'"):
        reader(set)


@pytest.mark.parametrize(("annotation", "payload", "expected"), [
    (bytes, b'{"a": 1}', b'{"a": 1}'),
    (str, "héllo".encode(), "héllo"),
    (dict, b'{"a": 1}', {"a": 1}),
    (list, b"[1, 2]", [1, 2]),
    (int, b"7", 7),
    (float, b"7", 7.0),
    (bool, b"true", True),
    (Any, b'"text"', "text"),
    (Order, b'{"id": 1, "item": "pen", "unknown": 3}', Order(1, "pen")),
])
def test_each_annotation_reads_its_value(annotation: Any, payload: bytes, expected: Any) -> None:
    assert reader(annotation)(message(payload)) == expected


@pytest.mark.parametrize(("annotation", "payload", "content_type", "says"), [
    (dict, b"{not json", "application/json", "is not JSON"),
    (dict, b'{"a": 1}', "text/plain", "content type 'text/plain' is not JSON"),
    (dict, b"[1]", "application/json", "is a JSON list, the function takes dict"),
    (int, b"true", "application/json", "is a JSON bool, the function takes int"),
    (Order, b'{"item": "pen"}', "application/json", r"lacks field\(s\) id of Order"),
    (Order, b"[]", "application/json", "takes Order"),
    (str, b"\xff\xfe", "text/plain", "is not UTF-8"),
    (dict, b"\xff", "application/json", "is not JSON"),
])
def test_a_payload_that_does_not_convert_is_the_records_failure(annotation: Any, payload: bytes, content_type: str,
                                                               says: str) -> None:
    with pytest.raises(ConversionError, match=says):
        reader(annotation)(message(payload, content_type))


def test_what_the_function_returns_becomes_the_message_sent_with_the_inputs_headers() -> None:
    source = message(b"{}", "application/vnd.in+json")
    assert outgoing(None, source) is None
    assert outgoing(source, source) is source
    assert outgoing(b"raw", source) == Message(b"raw", HEADERS, "application/vnd.in+json")
    assert outgoing("tëxt", source) == Message("tëxt".encode(), HEADERS, "text/plain")
    sent = outgoing({"b": [1, "é"]}, source)
    assert (json.loads(sent.payload), sent.headers, sent.content_type) == ({"b": [1, "é"]}, HEADERS,
                                                                           "application/json")
    assert json.loads(outgoing(Order(2, "ink"), source).payload) == {"id": 2, "item": "ink", "note": ""}
    assert outgoing(3.5, source).payload == b"3.5"
    assert outgoing(b"x", None).content_type == "application/octet-stream"  # a source's bytes


@pytest.mark.parametrize("result", [{1, 2}, object(), {"nan": float("nan")}, {"set": {1}}])
def test_a_result_that_is_no_message_nor_json_is_the_records_failure(result: Any) -> None:
    with pytest.raises(ConversionError):
        outgoing(result, message(b"{}"))


JSON = b'"application/json"'


def test_a_json_step_takes_orders_and_sends_invoices_as_json_the_bad_ones_to_the_dlq(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    """On Tansu, each Kafka client: dataclass in, dict out with Spring's JSON content type; bad JSON, a text
    record and a record missing a field dead-lettered at once; a cancelled order sends nothing; all committed."""
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    dlq = kafka.create(names("dlq"))
    records = [(b'{"id": 1, "amount": 10}', JSON), (b"{oops", JSON), (b'{"id": 2, "amount": 5}', b'"text/plain"'),
               (b'{"amount": 1}', JSON), (b'{"id": 3, "amount": 1, "cancelled": true}', JSON),
               (b'{"id": 4, "amount": 2.5, "extra": "ignored"}', None)]
    for value, content_type in records:  # the last without a content type: the binding's default, JSON
        kafka.producer.send(source, value, headers=[("contentType", content_type)] if content_type else [])
    kafka.producer.flush(30)
    app = start_stream_app("invoice", source, {"output": sink}, "--tax.rate=0.5",
                           "--spring.cloud.stream.kafka.bindings.input.consumer.enableDlq=true",
                           f"--spring.cloud.stream.kafka.bindings.input.consumer.dlqName={dlq}", group=group)
    wait_for(kafka.caught_up(group, {0: 6}), 60, "every record committed")
    out = kafka.read(sink, 2, settle=1.0)
    assert [json.loads(r.value) for r in out] == [{"order": 1, "total": 15.0}, {"order": 4, "total": 3.75}]
    assert all(dict(r.headers)["contentType"] == JSON for r in out)
    dead = kafka.read(dlq, 3, settle=1.0)
    messages = [dict(r.headers)["x-exception-message"].decode() for r in dead]
    assert [r.value for r in dead] == [records[1][0], records[2][0], records[3][0]]
    assert "is not JSON" in messages[0]
    assert "content type 'text/plain' is not JSON" in messages[1]
    assert "lacks field(s) id of Order" in messages[2]
    assert {dict(r.headers)["x-exception-fqcn"] for r in dead} == {b"util.values.ConversionError"}
    assert app.process.poll() is None
    assert app.stop() == 0


SHAPES = ["bytes", "text", "json", "number", "point", "none", "message"]
# What each return is sent as: payload and content type (the input is text/plain, which bytes keep).
SENT = [(b"\x00raw", "text/plain"), ("tëxt".encode(), "text/plain"), ('{"k": [1, "é"]}'.encode(), "application/json"),
        (b"2.5", "application/json"), (b'{"x": 1, "y": 2}', "application/json"), (b"<m/>", "application/xml")]


def test_each_return_type_goes_out_with_its_content_type_on_kafka(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    source, sink, group = kafka.create(names("in")), kafka.create(names("out")), names("g")
    kafka.produce(source, [s.encode() for s in SHAPES], headers=[("contentType", b'"text/plain"')])
    app = start_stream_app("shapes", source, {"output": sink}, group=group)
    wait_for(kafka.caught_up(group, {0: len(SHAPES)}), 60, "every record committed")  # "none": done, nothing sent
    out = kafka.read(sink, len(SENT), settle=1.0)
    assert [(r.value, json.loads(dict(r.headers)["contentType"])) for r in out] == SENT
    assert app.stop() == 0


def test_each_return_type_goes_out_with_its_content_type_on_rabbitmq(
        rabbit: Rabbit, names: Callable[[str], str], start_rabbit_app: Callable[..., App]) -> None:
    source, sink, group = names("in"), names("out"), "shapes"
    app = start_rabbit_app("shapes", source, {"output": sink}, f"--spring.cloud.stream.bindings.output.producer."
                           f"requiredGroups={group}", group=group)
    app.wait_for_log("Consuming")
    rabbit.publish(source, [s.encode() for s in SHAPES])
    got = rabbit.read(f"{sink}.{group}", len(SENT), settle=1.0)
    assert [(body, properties.content_type) for _, properties, body in got] == SENT
    assert app.stop() == 0
