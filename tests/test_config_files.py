"""Spring Boot's config files and nested placeholders, as a Spring app reads them (pure: no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from util.arguments import ConfigError, Properties, Property
from util.bindings import INSTANCE_INDEX
from util.metrics import common_tags

PORT = Property("server.port", int, 8080)


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory for the test."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_config_files_sit_below_the_environment_and_above_the_defaults(cwd: Path) -> None:
    write(cwd / "application.yml", "server:\n  port: 1\n")
    assert Properties([], {}).get(PORT) == 1
    write(cwd / "application.properties", "server.port=2\n")  # in one location .properties beats .yml
    assert Properties([], {}).get(PORT) == 2
    write(cwd / "config" / "application.yaml", "server.port: 3\n")  # ./config/ beats ./
    assert Properties([], {}).get(PORT) == 3
    write(cwd / "config" / "pod" / "application.properties", "server.port=4\n")  # ./config/*/ beats ./config/
    assert Properties([], {}).get(PORT) == 4
    assert Properties([], {"SERVER_PORT": "5"}).get(PORT) == 5
    assert Properties([], {"SPRING_APPLICATION_JSON": '{"server.port": 6}', "SERVER_PORT": "5"}).get(PORT) == 6
    assert Properties(["--server.port=7"], {"SERVER_PORT": "5"}).get(PORT) == 7
    assert [p.as_posix() for p in Properties([], {}).files] == [
        "application.yml", "application.properties", "config/application.yaml", "config/pod/application.properties"]


def test_the_statefulset_init_containers_lines_set_the_instance_index(cwd: Path) -> None:
    """What Data Flow's Kubernetes deployer appends for pod ``<app>-2`` (the /config mount is tested in the image)."""
    write(cwd / "config" / "application.properties", "INSTANCE_INDEX=2\nspring.cloud.stream.instanceIndex=2\n")
    properties = Properties([], {})
    assert properties.get(INSTANCE_INDEX) == 2
    assert properties.raw("INSTANCE_INDEX") == "2"
    assert Properties(["--spring.cloud.stream.instanceIndex=0"], {}).get(INSTANCE_INDEX) == 0


def test_additional_locations_override_the_default_ones_in_order(cwd: Path) -> None:
    write(cwd / "application.properties", "server.port=1\na=from-default\n")
    first = write(cwd / "extra" / "one.properties", "server.port=2\nb=from-one\n")
    write(cwd / "dir" / "application.yml", "server:\n  port: 3\n")
    env = {"SPRING_CONFIG_ADDITIONAL_LOCATION": f"{first}, optional:file:{cwd}/missing.yml, file:{cwd}/dir/"}
    properties = Properties([], env)
    assert (properties.get(PORT), properties.raw("a"), properties.raw("b")) == (3, "from-default", "from-one")
    replaced = Properties([f"--spring.config.location={first}"], {})
    assert (replaced.get(PORT), replaced.raw("a")) == (2, None)


@pytest.mark.parametrize(("location", "message"), [
    ("/no/such/file.properties", "config file '/no/such/file.properties' does not exist"),
    ("/no/such/dir/", "config location '/no/such/dir/' does not exist"),
    ("classpath:/application.yml", "a Python app has no classpath"),
    ("/etc/hostname", "expected a directory ending with '/'"),
])
def test_a_bad_additional_location_names_it_and_the_property(cwd: Path, location: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        Properties([f"--spring.config.additional-location={location}"], {})
    assert "(property 'spring.config.additional-location')" in str(raised.value)


@pytest.mark.parametrize(("name", "text", "where", "message"), [
    ("application.properties", "a=1\nb=\\u12G4\n", "application.properties:2", "malformed \\\\uxxxx escape"),
    ("application.properties", "a=1\n=value\n", "application.properties:2", "no property name"),
    ("application.yml", "server:\n  port: 1\n bad: [\n", "application.yml:3", "malformed YAML"),
    ("application.yml", "a: 1\n---\n- a list\n", "application.yml", "document 2 is a list"),
    ("application.yaml", "a: 'unterminated\n", "application.yaml:", "malformed YAML"),
])
def test_a_malformed_file_is_a_configuration_error_naming_file_and_line(
        cwd: Path, name: str, text: str, where: str, message: str) -> None:
    write(cwd / name, text)
    with pytest.raises(ConfigError, match=message) as raised:
        Properties([], {})
    assert where in str(raised.value)


def test_properties_files_read_as_java_util_properties(cwd: Path) -> None:
    write(cwd / "application.properties", "\n".join([
        "# a comment", "! another", "  spaced.key   =   value with spaces  ", "colon:separated", "blank separated",
        "multi=one, \\", "    two", "escaped\\=key=x", "unicode=caf\\u00e9", "tab=a\\tb", "empty=", "key.only",
        "#---", "spring.config.activate.on-profile=dev", "colon=from-a-profile", "#---", "later=wins",
        "url=jdbc:mysql://db:3306/x?a=b"]) + "\n")
    p = Properties([], {})
    assert p.raw("spaced.key") == "value with spaces  "
    assert (p.raw("colon"), p.raw("blank"), p.raw("multi")) == ("separated", "separated", "one, two")
    assert (p.raw("escaped=key"), p.raw("unicode"), p.raw("tab")) == ("x", "café", "a\tb")
    assert (p.raw("empty"), p.raw("key.only"), p.raw("later")) == (None, None, "wins")
    assert p.raw("url") == "jdbc:mysql://db:3306/x?a=b"


def test_yaml_files_flatten_as_spring_boot_does(cwd: Path) -> None:
    write(cwd / "application.yml", "\n".join([
        "spring:", "  cloud:", "    stream:", "      bindings:", "        input:", "          destination: s.http",
        "reversestring: true", "list:", "  - a", "  - b", "nothing:", "---",
        "spring.config.activate.on-profile: prod", "reversestring: false"]) + "\n")
    p = Properties([], {})
    assert p.raw("spring.cloud.stream.bindings.input.destination") == "s.http"
    assert (p.raw("reversestring"), p.raw("list[0]"), p.raw("list[1]"), p.raw("nothing")) == ("true", "a", "b", None)


def test_nested_placeholders_resolve_as_spring_does() -> None:
    tag = "${vcap.application.instance_index:${spring.cloud.stream.instanceIndex:0}}"
    assert Properties([f"--t={tag}"], {}).raw("t") == "0"
    assert Properties([f"--t={tag}", "--spring.cloud.stream.instanceIndex=3"], {}).raw("t") == "3"
    assert Properties([f"--t={tag}", "--spring.cloud.stream.instanceIndex=3", "--vcap.application.instance_index=5"],
                      {}).raw("t") == "5"
    both = "${a:x}-${b:${c:y}}-${d:http://h:1/p}"
    assert Properties([f"--t={both}", "--c=z"], {}).raw("t") == "x-z-http://h:1/p"
    assert Properties(["--t=${${name}.port}", "--name=server", "--server.port=9"], {}).raw("t") == "9"
    assert Properties(["--t=${a}", "--a=${b}", "--b=${a}"], {}).raw("t") is None  # circular: absent
    assert Properties(["--t=${missing}"], {}).raw("t") is None
    assert Properties(["--t=literal ${ no end"], {}).raw("t") == "literal ${ no end"


def test_placeholders_resolve_across_config_files_and_the_environment(cwd: Path) -> None:
    write(cwd / "application.properties", "greeting=hello ${user.name:nobody}\nuser.name=file\n")
    assert Properties([], {}).raw("greeting") == "hello file"
    assert Properties([], {"USER_NAME": "env"}).raw("greeting") == "hello env"


def test_data_flows_metric_tags_resolve_to_labels() -> None:
    scdf = {"stream.name": "${spring.cloud.dataflow.stream.name:unknown}",
            "application.type": "${spring.cloud.dataflow.stream.app.type:unknown}",
            "instance.index": "${vcap.application.instance_index:${spring.cloud.stream.instanceIndex:0}}",
            "application": "${spring.cloud.dataflow.stream.name:unknown}-${spring.cloud.dataflow.stream.app.label:"
                           "unknown}-${spring.cloud.dataflow.stream.app.type:unknown}"}
    args = [f"--management.metrics.tags.{key}={value}" for key, value in scdf.items()]
    args += ["--spring.cloud.dataflow.stream.name=s", "--spring.cloud.dataflow.stream.app.label=rev",
             "--spring.cloud.dataflow.stream.app.type=processor", "--spring.cloud.stream.instanceIndex=1",
             "--management.metrics.tags.team=blue", "--management.metrics.tags.9lives=x"]
    tags = common_tags(Properties(args, {"SPRING_CLOUD_APPLICATION_GUID": "pod-uid"}), "app")
    assert tags == {"stream_name": "s", "application_name": "rev", "application_type": "processor",
                    "instance_index": "1", "application_guid": "pod-uid", "application": "s-rev-processor",
                    "team": "blue", "m_9lives": "x"}
    alone = common_tags(Properties([], {}), "sink")  # outside Data Flow: its defaults, the app's own type
    assert alone == {"stream_name": "unknown", "application_name": "unknown", "application_type": "sink",
                     "instance_index": "0", "application_guid": "unknown", "application": "unknown-unknown-sink"}


BILLION_LAUGHS = "".join(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else 'lol'}]\n"
                         for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True))


# Under the alias limit, each alias still doubles a list: 48 of them expand to 2^24 values and more.
DOUBLING = "l0: &l0 [x]\n" + "".join(f"l{n}: &l{n} [*l{n - 1}, *l{n - 1}]\n" for n in range(1, 25))


@pytest.mark.parametrize(("text", "message"), [
    (BILLION_LAUGHS, "72 YAML aliases of maps or lists, over the 50 allowed"),
    ("a: &a\n  b: *a\n", "an alias refers to a map that holds it"),
    (DOUBLING, "expands to more than 100,000 values"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "collections nested deeper than 50"),
    ("a:\n" + "".join(f"{'  ' * n}k{n}:\n" for n in range(1, 60)), "collections nested deeper than 50"),
])
def test_a_yaml_alias_bomb_is_refused_with_one_line_before_it_expands(cwd: Path, text: str, message: str) -> None:
    write(cwd / "application.yml", text)
    with pytest.raises(ConfigError, match=message) as refused:
        Properties([], {})
    assert "application.yml" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_yaml_aliases_within_the_limit_are_read() -> None:
    from util.config_files import read_yaml

    assert read_yaml("x: &x 1\ny: *x\nm: &m {p: 1}\nn: *m\n", "application.yml") == {
        "x": "1", "y": "1", "m.p": "1", "n.p": "1"}


def test_yaml_aliases_of_scalars_are_not_counted_as_snakeyaml_counts_none() -> None:
    from util.config_files import read_yaml

    text = "a: &a x\n" + "".join(f"k{n}: *a\n" for n in range(60))
    assert read_yaml(text, "application.yml")["k59"] == "x"


def test_yaml_merge_keys_keep_one_pair_per_key_and_the_nearest_wins() -> None:
    """PyYAML kept every merged pair: 25 maps each merging the one before twice took 36 s and 800 MB; 16 merging
    it three times (48 aliases) would hold 3^16 pairs."""
    from util.config_files import read_yaml

    tripling = "l0: &l0 {k: v}\n" + "".join(f"l{n}: &l{n} {{<<: [{', '.join([f'*l{n - 1}'] * 3)}]}}\n"
                                             for n in range(1, 17))
    assert read_yaml(tripling, "application.yml")["l16.k"] == "v"
    merged = "a: &a {p: 1, q: 1}\nb: &b {q: 2, r: 2}\nc:\n  <<: [*a, *b]\n  r: 3\n"
    assert read_yaml(merged, "application.yml") == {  # the first map listed wins, the map's own keys over both
        "a.p": "1", "a.q": "1", "b.q": "2", "b.r": "2", "c.p": "1", "c.q": "1", "c.r": "3"}


def test_yaml_scalars_read_as_boots_loader_reads_them() -> None:
    """Boot's loader has no timestamp resolver (a date is the text written, 2026-02-30 too) and binds a float as Java
    writes it."""
    from util.config_files import read_yaml

    text = ("deadline: 2026-12-04T10:00:00Z\nbuild.date: 2026-02-30\nhex: 0x1F\n"
            "f: [.inf, -.inf, .nan, 1.5, 100.0, 0.0001, 1.0e+20, 12345678.9, 0.001]\n")
    assert read_yaml(text, "application.yml") == {
        "deadline": "2026-12-04T10:00:00Z", "build.date": "2026-02-30", "hex": "31", "f[0]": "Infinity",
        "f[1]": "-Infinity", "f[2]": "NaN", "f[3]": "1.5", "f[4]": "100.0", "f[5]": "1.0E-4", "f[6]": "1.0E20",
        "f[7]": "1.23456789E7", "f[8]": "0.001"}


@pytest.mark.parametrize(("text", "message"), [
    ("a: 1\nb: !!int x\n", r"application\.yml:2: .*cannot read 'x' as int"),
    ("a: " + "9" * 5000 + "\n", r"application\.yml:1: .*as int: Exceeds the limit \(4300 digits\)"),
    ("a: 0x" + "f" * 5000 + "\n", r"application\.yml: document 1 holds a number too long to write"),
    ("a: !!timestamp 2026-02-30\n", r"application\.yml:1: .*day is out of range for month"),
])
def test_a_yaml_value_pyyaml_cannot_construct_is_one_line_naming_the_file(cwd: Path, text: str, message: str) -> None:
    write(cwd / "application.yml", text)
    with pytest.raises(ConfigError, match=message) as refused:
        Properties([], {})
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("args", [
    ["--spring.profiles.active=" + "p" * 300],
    ["--spring.config.location=optional:file:/tmp/" + "d" * 300 + "/"],
    ["--spring.config.location=optional:file:/tmp/" + "f" * 300 + ".yml"],
    ["--spring.config.additional-location=optional:file:/tmp/" + "w" * 300 + "/*/"],
    ["--spring.config.import=optional:configtree:/tmp/" + "t" * 300 + "/"],
    ["--spring.config.import=optional:file:/tmp/" + "i" * 300 + ".yml"],
])
def test_a_name_too_long_to_be_a_path_is_one_line_even_when_optional(cwd: Path, args: list[str]) -> None:
    """Path.is_dir()/is_file() raise ENAMETOOLONG (not False): such a location can never exist, so it is a mistake."""
    with pytest.raises(ConfigError, match="File name too long") as refused:
        Properties(args, {})
    assert "\n" not in str(refused.value)
    assert len(str(refused.value)) < 400  # the location shortened


def test_a_config_directory_the_user_cannot_search_is_skipped_as_boot_skips_it(
        cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The images run as USER 10001: a ./config/ it cannot search makes stat() refuse (PermissionError) where Boot's
    FileSystemResource.exists() is false. A default or optional location is skipped; a location that is not
    optional is one line naming it. Simulated (tests run as root) by making stat() under the directory refuse."""
    import os
    import pathlib

    locked = cwd / "config"
    write(locked / "application.yml", "a: 1\n")
    write(locked / "pod" / "application.yml", "a: 2\n")
    real_stat = pathlib.Path.stat

    def stat(self: pathlib.Path, *args: object, **kwargs: object) -> os.stat_result:
        if os.path.abspath(self).startswith(f"{locked}/"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    assert Properties([], {}).raw("a") is None  # ./config/ and ./config/*/ skipped
    assert Properties([f"--spring.config.additional-location=optional:file:{locked}/pod/"], {}).raw("a") is None
    with pytest.raises(ConfigError, match=r"config location '.*/config/pod/': cannot look at .*Permission denied"):
        Properties([f"--spring.config.additional-location=file:{locked}/pod/"], {})
