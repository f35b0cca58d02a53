"""The router app: even/odd routing as the seed did it, on a real broker, wired as an SCDF `app`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Kafka
from devkit.apps import App
from devkit.waiting import wait_for
from python_router_app import handle, route

RAW_JSON = [("contentType", b"application/json")]  # time source 2021.x and later
QUOTED_JSON = [("contentType", b'"application/json"'),  # app starters 2.1.x
               ("spring_json_header_types", b'{"contentType":"java.lang.String"}')]


@pytest.mark.parametrize(("value", "binding"), [("05/17/21 17:56:36", "even"), ("05/17/21 17:56:37", "odd"),
                                                ('"05/17/21 17:56:30"', "even"), (" 05/17/21 17:56:39\n", "odd")])
def test_routes_by_last_digit_of_raw_or_quoted_value(value: str, binding: str) -> None:
    name, out = handle(value)  # the payload's text: what the binder hands a str parameter (sent as text/plain)
    assert name == binding
    stripped = value.strip().strip('"')
    assert out == f"{binding.capitalize()} timestamp: {stripped}"


@pytest.mark.parametrize("value", ["", "05/17/21 17:56:3x", "٣", '""'])
def test_value_not_ending_in_a_decimal_digit_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="decimal digit"):
        handle(value)


def test_route_is_pure() -> None:
    assert [route(v) for v in ("0", "1", "8", "9")] == ["even", "odd", "even", "odd"]


def start_router(start_stream_app: Callable[..., App], source: str, even: str | None, odd: str | None,
                 *extra: str, **kwargs: object) -> App:
    return start_stream_app("router", source, {"even": even, "odd": odd}, *extra, **kwargs)


def test_routes_both_spring_generations_records_produced_before_start_once(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    source, even, odd, stream = kafka.create(names("time")), names("even"), names("odd"), names("stream")
    kafka.produce(source, [b"05/17/21 17:56:36", b"05/17/21 17:56:37"], headers=RAW_JSON)
    ends = kafka.produce(source, [b'"05/17/21 17:56:38"', b'"05/17/21 17:56:39"'], headers=QUOTED_JSON)
    # No group: the stream name is the group, so a restarted router resumes where it stopped.
    app = start_router(start_stream_app, source, even, odd, f"--spring.cloud.dataflow.stream.name={stream}",
                       group=None)
    app.wait_for_log(rf"as group '{stream}' \(from spring.cloud.dataflow.stream.name\) starting at earliest")
    evens, odds = kafka.read(even, 2, settle=0.5), kafka.read(odd, 2, settle=0.5)
    assert [r.value for r in evens] == [b"Even timestamp: 05/17/21 17:56:36", b"Even timestamp: 05/17/21 17:56:38"]
    assert [r.value for r in odds] == [b"Odd timestamp: 05/17/21 17:56:37", b"Odd timestamp: 05/17/21 17:56:39"]
    headers = dict(evens[0].headers)
    assert headers["contentType"] == b'"text/plain"'
    assert json.loads(headers["spring_json_header_types"])["contentType"] == "java.lang.String"
    wait_for(kafka.caught_up(stream, ends), 30, "offsets committed under the stream name")
    assert app.metric("polyglot_records_sent_total", binding="even") == 2
    assert app.metric("polyglot_records_sent_total", binding="odd") == 2
    info = app.json("/actuator/info")["bindings"]
    assert (info["input"]["destination"], info["even"]["destination"], info["odd"]["destination"]) == (
        source, even, odd)
    assert app.stop() == 0


def test_non_digit_record_does_not_stop_the_flow(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App]) -> None:
    source, even, odd, group = kafka.create(names("time")), names("even"), names("odd"), names("g")
    ends = kafka.produce(source, [b"not a timestamp", b"", b"\xff\xfe", b"05/17/21 17:56:31"], headers=RAW_JSON)
    app = start_router(start_stream_app, source, even, odd,
                       "--spring.cloud.stream.bindings.input.consumer.maxAttempts=1", group=group)
    assert [r.value for r in kafka.read(odd, 1)] == [b"Odd timestamp: 05/17/21 17:56:31"]
    wait_for(kafka.caught_up(group, ends), 30, "every offset committed")
    for offset in (0, 1, 2):
        app.wait_for_log(rf"Record {source}-0@{offset} skipped after 1 attempt")
    assert app.metric("polyglot_records_failed_total", binding="input") == 3
    assert app.stop() == 0


@pytest.mark.parametrize("missing", ["input", "even", "odd"])
def test_missing_destination_fails_fast_with_its_name(
        missing: str, start_stream_app: Callable[..., App]) -> None:
    sinks = {"even": "e", "odd": "o"}
    sinks[missing] = None  # type: ignore[assignment]
    app = start_stream_app("router", None if missing == "input" else "t", sinks,
                           "--spring.cloud.stream.kafka.binder.brokers=127.0.0.1:9")
    assert app.wait(timeout=20) == 1
    assert f"'spring.cloud.stream.bindings.{missing}.destination'" in app.log
    assert len(app.log.strip().splitlines()) == 1


@pytest.mark.one_client
def test_an_on_profile_document_and_a_config_tree_wire_the_router(
        kafka: Kafka, names: Callable[[str], str], start_stream_app: Callable[..., App], tmp_path: Path) -> None:
    """The router's outputs from config data only: ``even`` from a config tree (a mounted ConfigMap), ``odd``
    from a document of application.yml that the active profile switches on; the tree's value stays hidden."""
    source, even, odd = kafka.create(names("time")), names("even"), names("odd")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "spring.cloud.stream.bindings.even.destination").write_text(even + "\n")
    (tmp_path / "application.yml").write_text(
        f"spring.config.import: optional:configtree:tree/\n"
        f"---\nspring.config.activate.on-profile: k8s & !local\nspring.cloud.stream.bindings.odd.destination: {odd}\n")
    app = start_stream_app("router", source, {}, cwd=tmp_path, env={"SPRING_PROFILES_ACTIVE": "k8s"})
    app.wait_for_log("Consuming")
    kafka.produce(source, [b"05/17/21 17:56:36", b"05/17/21 17:56:37"])
    assert [r.value for r in kafka.read(even, 1)] == [b"Even timestamp: 05/17/21 17:56:36"]
    assert [r.value for r in kafka.read(odd, 1)] == [b"Odd timestamp: 05/17/21 17:56:37"]
    info = app.json("/actuator/info")["config"]
    assert info["profiles"] == ["k8s"]
    assert even not in json.dumps(info)
    assert app.stop() == 0
