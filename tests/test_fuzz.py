"""Property resolution and header decoding on arbitrary input: a value or the documented error, never a crash."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from util.arguments import ConfigError, Properties, Property
from util.bindings import resolve_input
from util.headers import HeaderError, content_type, header_text, outbound_headers
from util.kafka_config import bootstrap_servers
from util.kafka_python import client_settings

TYPED = [Property("server.port", int, 8080), Property("reversestring", bool, False),
         Property("x.multiplier", float, 2.0), Property("x.mode", str, "a", choices=("a", "b")),
         Property("spring.cloud.stream.bindings.input.destination", str, None, required=True)]
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
keys = st.one_of(text, st.sampled_from([p.name for p in TYPED] + ["SERVER_PORT", "spring.cloud.stream.kafka.binder."
                                                                 "configuration.max.poll.records"]))
argv = st.lists(st.one_of(text, st.builds(lambda k, v: f"--{k}={v}", keys, text)), max_size=8)
environ = st.dictionaries(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30),
                          text, max_size=6)
app_json = st.one_of(text, st.recursive(st.none() | st.booleans() | st.integers() | text,
                                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner,
                                                                                                  max_size=3)).map(json.dumps))
headers = st.lists(st.tuples(st.sampled_from(["contentType", "originalContentType", "spring_json_header_types", "x"]),
                             st.binary(max_size=40)), max_size=5)


@settings(max_examples=300, deadline=None)
@given(argv, environ, app_json)
def test_property_resolution_returns_a_value_or_a_config_error(args: list[str], env: dict[str, str],
                                                               spring_json: str) -> None:
    env = {**env, "SPRING_APPLICATION_JSON": spring_json}
    try:
        props = Properties(args, env)
    except ConfigError:
        return
    for prop in TYPED:
        try:
            value, error = props.get(prop), ""
        except ConfigError as raised:
            value, error = None, str(raised)
        assert not error or prop.name in error  # a config error names its property
        assert value is None or isinstance(value, prop.type)
    for call in (lambda: bootstrap_servers(props), lambda: client_settings(props, "input", "consumer"),
                 lambda: resolve_input(props)):
        with contextlib.suppress(ConfigError):
            call()


@settings(max_examples=300, deadline=None)
@given(headers)
def test_header_decoding_returns_text_or_a_header_error(record_headers: list[tuple[str, bytes]]) -> None:
    try:
        assert isinstance(content_type(record_headers, "application/json"), str)
        value = header_text(record_headers, "x")
        assert value is None or isinstance(value, str)
    except HeaderError:
        pass
    out = dict(outbound_headers(record_headers, "text/plain"))
    assert json.loads(out["contentType"]) == "text/plain"
    assert isinstance(json.loads(out["spring_json_header_types"]), dict)
