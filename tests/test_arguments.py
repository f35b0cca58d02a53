"""Property resolution as Spring Boot does it, for every entry point style SCDF uses."""

import json

import pytest

from util.arguments import ConfigError, Properties, Property

DEST = Property("spring.cloud.stream.bindings.input.destination", str, None, "input topic", required=True)
REVERSE = Property("reversestring", bool, False, aliases=("reverestring",))
PORT = Property("server.port", int, 8080)
PARENT = Property("spring.cloud.task.parent-execution-id", int, None)
KEY = Property("spring.cloud.stream.bindings.output.producer.partitionKeyExpression", str, None)


def test_exec_style_args_split_at_first_equals() -> None:
    props = Properties(["--spring.datasource.url=jdbc:mysql://h:3306/db?a=b&c=d", "plain", "--flag"], {})
    assert props.raw("spring.datasource.url") == "jdbc:mysql://h:3306/db?a=b&c=d"
    assert props.raw("flag") is None


def test_shell_style_env_vars_keep_hyphens_and_lose_camel_case() -> None:
    env = {"SPRING_CLOUD_STREAM_BINDINGS_INPUT_DESTINATION": "s.http",
           "SPRING_CLOUD_TASK_PARENT-EXECUTION-ID": "7",
           "SPRING_CLOUD_STREAM_BINDINGS_OUTPUT_PRODUCER_PARTITIONKEYEXPRESSION": "payload"}
    props = Properties([], env)
    assert props.get(DEST) == "s.http"
    assert props.get(PARENT) == 7
    assert props.get(KEY) == "payload"


def test_boot_style_spring_application_json() -> None:
    env = {"SPRING_APPLICATION_JSON": json.dumps({"spring.cloud.stream.bindings.input.destination": "s.http",
                                                  "server": {"port": 9000}, "reversestring": True})}
    props = Properties([], env)
    assert props.get(DEST) == "s.http"
    assert props.get(PORT) == 9000
    assert props.get(REVERSE) is True


def test_local_docker_dotted_env_names() -> None:
    assert Properties([], {"spring.cloud.stream.bindings.input.destination": "d"}).get(DEST) == "d"


def test_precedence_args_over_json_over_env_over_default() -> None:
    env = {"SERVER_PORT": "1", "SPRING_APPLICATION_JSON": '{"server.port": "2"}'}
    assert Properties(["--server.port=3"], env).get(PORT) == 3
    assert Properties([], env).get(PORT) == 2
    assert Properties([], {"SERVER_PORT": "1"}).get(PORT) == 1
    assert Properties([], {}).get(PORT) == 8080


@pytest.mark.parametrize("spelling", ["reverseString", "reverse-string", "REVERSE_STRING", "ReverseString"])
def test_relaxed_names(spelling: str) -> None:
    assert Properties([f"--{spelling}=true"], {}).get(REVERSE) is True


def test_seed_misspelling_is_an_alias_and_the_right_name_wins() -> None:
    assert Properties(["--reverestring=true"], {}).get(REVERSE) is True
    assert Properties(["--reverestring=true", "--reversestring=false"], {}).get(REVERSE) is False


def test_unresolved_placeholder_is_absent_and_resolvable_one_is_used() -> None:
    props = Properties(["--server.port=${no.such.value}", "--spring.cloud.dataflow.stream.name=s",
                        "--management.metrics.tags.stream=${spring.cloud.dataflow.stream.name}",
                        "--x=${missing:fallback}"], {})
    assert props.get(PORT) == 8080
    assert props.raw("management.metrics.tags.stream") == "s"
    assert props.raw("x") == "fallback"


def test_unknown_keys_are_ignored_and_empty_values_absent() -> None:
    props = Properties(["--wavefront.application.name=x", "--server.port="], {})
    assert props.get(PORT) == 8080


def test_subtree_merges_sources_in_precedence() -> None:
    env = {"SPRING_CLOUD_STREAM_KAFKA_BINDER_CONFIGURATION_SECURITY_PROTOCOL": "SSL",
           "SPRING_CLOUD_STREAM_KAFKA_BINDER_CONFIGURATION_MAX_POLL_RECORDS": "10"}
    props = Properties(["--spring.cloud.stream.kafka.binder.configuration.max.poll.records=20"], env)
    assert props.subtree("spring.cloud.stream.kafka.binder.configuration") == {
        "security.protocol": "SSL", "max.poll.records": "20"}


@pytest.mark.parametrize(("args", "named"), [
    ([], "spring.cloud.stream.bindings.input.destination"),
    (["--reversestring=maybe"], "reversestring"),
    (["--server.port=80a"], "server.port"),
])
def test_missing_or_malformed_property_names_it(args: list[str], named: str) -> None:
    props = Properties(args, {})

    def resolve_all() -> None:
        for prop in (REVERSE, PORT, DEST):
            props.get(prop)

    with pytest.raises(ConfigError, match=rf"'{named}'"):
        resolve_all()


def test_malformed_spring_application_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SPRING_APPLICATION_JSON"):
        Properties([], {"SPRING_APPLICATION_JSON": "{not json"})


def test_secret_values_are_not_echoed_in_errors() -> None:
    secret = Property("spring.datasource.password", int, None, secret=True)
    with pytest.raises(ConfigError) as error:
        Properties(["--spring.datasource.password=hunter2"], {}).get(secret)
    assert "hunter2" not in str(error.value)


def test_random_placeholders_as_boots_random_value_property_source() -> None:
    import re
    import uuid

    name = Property("app.id", str, None, "An id.")
    number = Property("app.n", int, None, "A number.")
    args = ["--app.id=worker-${random.uuid}", "--app.n=${random.int[5,8]}", "--app.big=${random.long}",
            "--app.small=${random.int(3)}", "--app.hex=${random.value}", "--app.int=${random.int}"]
    props = Properties(args, {})
    first = props.get(name)
    assert first == props.get(name)  # drawn once per start, the same each time it is read
    uuid.UUID(first.removeprefix("worker-"))
    assert first != Properties(args, {}).get(name)  # another start, another value
    assert all(5 <= Properties(args, {}).get(number) < 8 for _ in range(50))
    assert -(1 << 63) <= int(props.resolve("${random.long}")) < 1 << 63
    assert -(1 << 31) <= int(props.resolve("${random.int}")) < 1 << 31
    assert {Properties(args, {}).resolve("${random.int(3)}") for _ in range(60)} == {"0", "1", "2"}
    assert re.fullmatch("[0-9a-f]{32}", props.resolve("${random.value}"))
    assert re.fullmatch("[0-9a-f]{32}", props.resolve("${random.other}"))  # any other random.<x>: random bytes
    with pytest.raises(ConfigError, match=r"random.int\[9,2\]"):
        props.resolve("${random.int[9,2]}")
    with pytest.raises(ConfigError, match="Java int"):
        props.resolve("${random.int(99999999999)}")
    assert Properties(["--random.uuid=fixed", "--app.id=${random.uuid}"], {}).get(name) == "fixed"


@pytest.mark.parametrize(("placeholder", "message"), [
    ("random.int(abc)", "'abc' is not a Java int"),
    ("random.int[5,]", "'' is not a Java int"),
    ("random.int(1O)", "'1O' is not a Java int"),
    ("random.long(ten)", "'ten' is not a Java long"),
    ("random.int[5, 10]", "' 10' is not a Java int"),  # Integer.parseInt takes no blank
    ("random.integer", "'ge' is not a Java int"),  # Boot: "int", one character, the range, one character
    ("random.int(" + "9" * 5000 + ")", "out of the range of a Java int"),
    ("random.long(-5)", "the bound must be positive"),
])
def test_a_random_range_boot_cannot_parse_is_one_line(placeholder: str, message: str) -> None:
    """Boot's Range.of fails the start on a bound Integer.parseInt (Long.parseLong) refuses."""
    with pytest.raises(ConfigError, match=message) as raised:
        Properties([f"--app.port=${{{placeholder}}}"], {}).raw("app.port")
    assert len(str(raised.value)) < 200


def test_a_random_bound_reads_as_java_parses_it() -> None:
    """Integer.parseInt takes '+5'; 'random.intx' (no range after 'int' and one character) is random bytes in Boot."""
    props = Properties([], {})
    assert {Properties([], {}).resolve("${random.int(+5)}") for _ in range(80)} == {"0", "1", "2", "3", "4"}
    assert props.resolve("${random.int-3-}") in {"0", "1", "2"}
    assert props.resolve("${random.long[-2,0,9]}") in {"-2", "-1"}  # Boot reads the first two bounds
    assert len(props.resolve("${random.intx}") or "") == 32
