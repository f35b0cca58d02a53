"""Config data bound as Spring Boot 3 binds it: list properties, included profiles, profile properties where they are
invalid, locations, secrets reached through placeholders, random values per property (Properties over temp files)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from util.arguments import ConfigError, Properties, Property

PORT = Property("app.port", int, 1, "A port.")
LABEL = Property("app.label", str, None, "A label shown in /actuator/info.")


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return path


def at(directory: Path, *args: str, environ: dict[str, str] | None = None) -> Properties:
    """Properties reading config files from ``directory`` only."""
    return Properties([f"--spring.config.location=optional:file:{directory}/", *args], environ or {})


def tree(directory: Path, *args: str) -> Properties:
    """Properties importing ``directory`` as a config tree, no config file read."""
    return Properties([f"--spring.config.import=configtree:{directory}/",
                       f"--spring.config.location=optional:file:{directory.parent}/no-such-dir/", *args], {})


def test_yaml_lists_of_profiles_groups_and_imports_bind_as_in_boot(tmp_path: Path) -> None:
    """Boot binds spring.profiles.active/include/group.<g> and spring.config.import as lists, so the YAML list form
    (Boot's own documented group example) works."""
    write(tmp_path / "a" / "application.yml", "spring:\n  profiles:\n    active:\n      - prod\n")
    write(tmp_path / "a" / "application-prod.yml", "x: prod\n")
    assert at(tmp_path / "a").profiles == ["prod"]
    write(tmp_path / "b" / "application.yml",
          'spring:\n  profiles:\n    active: production\n    group:\n      production:\n      - "proddb"\n'
          '      - "prodmq"\n')  # features/profiles.adoc, "Profile Groups"
    assert at(tmp_path / "b").profiles == ["production", "proddb", "prodmq"]
    write(tmp_path / "c" / "application.yml", "spring:\n  config:\n    import:\n      - file:extra.yml\n")
    write(tmp_path / "c" / "extra.yml", "y: imported\n")
    assert at(tmp_path / "c").raw("y") == "imported"

def test_included_profiles_come_before_the_active_ones_as_in_boot(tmp_path: Path) -> None:
    """Boot's Profiles puts the included (additional) profiles first, then spring.profiles.active
    (ProfilesTests.getActiveWhenHasAdditionalIncludesAdditional): an active profile's file wins over an included
    one's."""
    write(tmp_path / "application-a.properties", "v=from-active\n")
    write(tmp_path / "application-i.properties", "v=from-include\n")
    props = at(tmp_path, "--spring.profiles.active=a", "--spring.profiles.include=i")
    assert props.profiles == ["i", "a"]
    assert props.raw("v") == "from-active"

def test_spring_profiles_include_from_every_source_and_document_adds_up(tmp_path: Path) -> None:
    """Boot reads spring.profiles.include from each property source and document and adds them all
    (ConfigDataEnvironmentPostProcessorIntegrationTests.runWhenHasIncludedProfilesWithPlaceholderActivatesProfiles)."""
    write(tmp_path / "application.properties",
          "spring.profiles.active=p1\nspring.profiles.include=p2\n#---\nspring.profiles.include=p3\n")
    props = at(tmp_path, environ={"SPRING_PROFILES_INCLUDE": "p4"})
    assert set(props.profiles) == {"p1", "p2", "p3", "p4"}

def test_profile_properties_in_a_profile_specific_file_or_document_are_refused(tmp_path: Path) -> None:
    """Boot refuses spring.profiles.active/include/default in a profile-specific file
    (InvalidConfigDataPropertyException) and in a document activated by on-profile
    (InactiveConfigDataAccessException)."""
    write(tmp_path / "p" / "application-prod.yml", "spring.profiles.active: other\n")
    with pytest.raises(ConfigError, match=r"spring\.profiles\.active"):
        at(tmp_path / "p", "--spring.profiles.active=prod")
    write(tmp_path / "d" / "application.yml",
          "a: 1\n---\nspring.config.activate.on-profile: prod\nspring.profiles.include: extra\n")
    with pytest.raises(ConfigError, match=r"spring\.profiles\.include"):
        at(tmp_path / "d", "--spring.profiles.active=prod")

def test_spring_config_location_set_in_a_config_file_is_ignored(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Boot reads spring.config.location and additional-location from the environment only (they are bound before
    any file is read); a file naming them changes nothing."""
    other = tmp_path / "other"
    write(other / "application.properties", "b=other\n")
    cwd = tmp_path / "cwd"
    write(cwd / "application.properties", f"a=from-cwd\nspring.config.location=optional:file:{other}/\n")
    monkeypatch.chdir(cwd)
    props = Properties([], {})
    assert (props.raw("a"), props.raw("b")) == ("from-cwd", None)
    write(cwd / "application.properties", f"a=from-cwd\nspring.config.additional-location=optional:file:{other}/\n")
    assert Properties([], {}).raw("b") is None

def test_a_config_tree_value_reached_through_a_placeholder_stays_secret(tmp_path: Path) -> None:
    """A config tree value is a secret: a property whose value is ${db.password} (or embeds it) holds it too: it
    is neither in /actuator/info's "properties" nor in a conversion error."""
    write(tmp_path / "tree" / "db" / "password", "hunter2-s3cret\n")
    props = tree(tmp_path / "tree", "--app.label=user:${db.password}", "--app.port=${db.password}")
    assert props.secret(LABEL)
    with pytest.raises(ConfigError) as raised:
        props.get(PORT)
    assert "s3cret" not in str(raised.value)

def test_an_empty_higher_value_does_not_unhide_a_config_tree_value(tmp_path: Path) -> None:
    """APP_PORT= (empty) is skipped by raw(), so the tree's value is used, and kept out of
    the error too."""
    write(tmp_path / "tree" / "app" / "port", "not-a-port-s3cret")
    props = Properties([f"--spring.config.import=configtree:{tmp_path}/tree/",
                        f"--spring.config.location=optional:file:{tmp_path}/none/"], {"APP_PORT": ""})
    with pytest.raises(ConfigError) as raised:
        props.get(PORT)
    assert "s3cret" not in str(raised.value)

def test_two_properties_with_the_same_random_placeholder_get_different_values() -> None:
    """Boot's RandomValuePropertySource draws a new value at each resolution: a=${random.uuid} and b=${random.uuid}
    differ (two binding groups, two instance ids); one property's value is drawn once per start."""
    props = Properties(["--a=${random.uuid}", "--b=${random.uuid}", "--c=${x:${random.int}}", "--d=${random.int}"],
                       {})
    assert props.raw("a") != props.raw("b")
    assert props.raw("a") == props.raw("a")  # still drawn once per start for one property
    draws = {props.raw("d") for _ in range(3)} | {props.raw("c")}
    assert len(draws) == 2

def test_a_refused_random_range_names_the_property_that_uses_it() -> None:
    """The error names the property holding the placeholder too."""
    with pytest.raises(ConfigError, match=r"app\.port"):
        Properties(["--app.port=${random.int(-5)}"], {}).raw("app.port")

def test_a_yaml_list_of_on_profile_expressions_does_not_make_the_document_unconditional(tmp_path: Path) -> None:
    """Boot binds spring.config.activate.on-profile as a String[]: a YAML list matches when one of its expressions
    does."""
    write(tmp_path / "application.yml", "url: dev-db\n---\nspring:\n  config:\n    activate:\n      on-profile:\n"
                                        "        - prod\n        - staging\nurl: prod-db\n")
    assert at(tmp_path).raw("url") == "dev-db"
    assert at(tmp_path, "--spring.profiles.active=staging").raw("url") == "prod-db"

def test_placeholders_in_an_import_written_in_a_config_file_resolve(tmp_path: Path) -> None:
    """Boot resolves placeholders in spring.config.import wherever it is written
    (ConfigDataEnvironmentContributorPlaceholdersResolver): the usual
    spring.config.import=optional:configtree:${secrets.dir:/etc/secrets}/."""
    write(tmp_path / "secrets" / "password", "pw")
    write(tmp_path / "conf" / "application.properties",
          "spring.config.import=optional:configtree:${secrets.dir:/etc/secrets}/\n")
    props = at(tmp_path / "conf", f"--secrets.dir={tmp_path}/secrets")
    assert props.raw("password") == "pw"

def test_a_placeholder_naming_an_environment_variable_resolves_from_it() -> None:
    """${MY_VAR} resolves from the environment variable MY_VAR in Boot (SystemEnvironmentPropertySource looks the name
    up as written)."""
    props = Properties(["--a=${MY_VAR}", "--spring.config.location=optional:file:/nonexistent/"],
                       {"MY_VAR": "x", "SECRETS_DIR": "/tmp"})
    assert props.raw("a") == "x"
    assert props.resolve("${SECRETS_DIR}") == "/tmp"


def test_an_on_cloud_platform_document_counts_only_on_that_platform(tmp_path: Path) -> None:
    """Boot's spring.config.activate.on-cloud-platform: the document counts only when that platform is detected
    (Kubernetes: KUBERNETES_SERVICE_HOST and _PORT set; or spring.main.cloud-platform)."""
    write(tmp_path / "application.yml", "k: base\n---\nspring.config.activate.on-cloud-platform: kubernetes\nk: k8s\n"
                                        "---\nspring.config.activate.on-cloud-platform: cloud_foundry\nc: cf\n")
    assert (at(tmp_path).raw("k"), at(tmp_path).raw("c")) == ("base", None)
    on_kubernetes = at(tmp_path, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert (on_kubernetes.raw("k"), on_kubernetes.raw("c")) == ("k8s", None)


@pytest.mark.parametrize("placeholder", ["random.int(abc)", "random.int[5,]", "random.int(1O)",
                                         "random.long(ten)"])
def test_a_malformed_random_range_is_one_line_naming_the_property(placeholder: str) -> None:
    """Boot fails to start on a random.int*/random.long* range it cannot parse (NumberFormatException from
    Range.of); the line names the property holding it."""
    with pytest.raises(ConfigError, match=r"app\.port"):
        Properties([f"--app.port=${{{placeholder}}}"], {}).raw("app.port")


@pytest.mark.parametrize("name", ["spring.profiles.active", "spring.profiles.include", "spring.config.import"])
def test_an_index_of_a_non_ascii_digit_is_not_a_traceback(name: str) -> None:
    """'²'.isdigit() is True but int('²') raises: such a key is no index (ignored, as Boot's binder finds no
    element) or one ConfigError line, never a traceback."""
    with contextlib.suppress(ConfigError):
        Properties([f"--{name}[\u00b2]=a"], {})


def test_an_indexed_list_from_environment_variables() -> None:
    """Boot's SystemEnvironmentPropertyMapper reads SPRING_PROFILES_ACTIVE_0 as spring.profiles.active[0]
    (MY_ACME_1_OTHER is my.acme[1].other)."""
    properties = Properties([], {"SPRING_PROFILES_ACTIVE_0": "prod", "SPRING_PROFILES_ACTIVE_1": "eu"})
    assert properties.profiles == ["prod", "eu"]


def test_a_rabbit_password_with_a_comma_is_not_in_the_error() -> None:
    """addresses split at commas before masking: 'amqp://app:s3cr3t' (the part before an unencoded comma in
    the password) has no '@', so logs.shown masks nothing and the error line shows the password."""
    from util.rabbit_config import addresses

    with pytest.raises(ConfigError) as error:
        addresses(Properties(["--spring.rabbitmq.addresses=amqp://app:s3cr3t,more@rabbit:5672"], {}))
    assert "s3cr3t" not in str(error.value)


def test_yaml_map_keys_are_the_text_written_as_boots_key_scalar_nodes() -> None:
    """Boot's OriginTrackedYamlLoader turns every map key into a KeyScalarNode (tag str): 'no', 'on', '1',
    'true', '0x10' stay as written."""
    from util.config_formats import yaml_documents

    text = "regions:\n  no: oslo\n  se: stockholm\n  on: x\n  1: one\n  true: t\n  0x10: hex\n"
    (document,) = yaml_documents(text, "application.yml")
    assert {key: value for key, value in document.items()} == {
        "regions.no": "oslo", "regions.se": "stockholm", "regions.on": "x", "regions.1": "one",
        "regions.true": "t", "regions.0x10": "hex"}


def test_config_locations_as_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """spring.config.location and additional-location are lists in Boot (ConfigDataLocation[]), as
    spring.config.import: name[0] on the command line or a JSON array in SPRING_APPLICATION_JSON."""
    import json

    (tmp_path / "loc").mkdir()
    (tmp_path / "loc" / "application.yml").write_text("fromloc: found\n")
    monkeypatch.chdir(tmp_path)
    where = f"file:{tmp_path / 'loc'}/"
    assert Properties([f"--spring.config.location[0]={where}"], {}).raw("fromloc") == "found"
    app_json = json.dumps({"spring": {"config": {"additional-location": [where]}}})
    assert Properties([], {"SPRING_APPLICATION_JSON": app_json}).raw("fromloc") == "found"


@pytest.mark.parametrize("after", ["#x", "/x", "?x"])
def test_a_pushgateway_base_url_error_never_shows_its_password(after: str) -> None:
    """A password holding '#', '/' or '?' (unencoded) ends the netloc there: urlsplit reads 'user:s3cr3t' as
    host:port, and parts.port's ValueError text ('Port could not be cast to integer value as 's3cr3t'') is put in
    the ConfigError, which task_metrics promises never shows the URL (it may hold a password)."""
    from util.task_metrics import TaskMetrics

    prefix = "--management.prometheus.metrics.export.pushgateway"
    with pytest.raises(ConfigError) as error:
        TaskMetrics.configure(Properties([f"{prefix}.enabled=true",
                                          f"{prefix}.base-url=http://user:s3cr3t{after}@gw:9091"], {}))
    assert "s3cr3t" not in str(error.value)


def test_a_port_of_non_ascii_digits_is_one_configuration_line() -> None:
    """str.isdigit() is True for '²' (and Arabic-Indic digits), which int() refuses (or reads as a port Java
    refuses): the rabbit addresses and Kafka brokers checks say so in one line."""
    from util.kafka_config import bootstrap_servers
    from util.rabbit_config import addresses

    for check, args in ((addresses, ["--spring.rabbitmq.addresses=rabbit:\u00b2"]),
                        (bootstrap_servers, ["--spring.cloud.stream.kafka.binder.brokers=kafka:\u00b2"])):
        with pytest.raises(ConfigError):
            check(Properties(args, {}))


def test_a_jdbc_connect_timeout_of_non_ascii_digits_is_not_a_traceback() -> None:
    """datasource: connectTimeout=² passes value.isdigit() and int() raises out of from_jdbc."""
    from util.datasource import from_jdbc

    for url in ("jdbc:postgresql://db/x?connectTimeout=\u00b2", "jdbc:mariadb://db/x?connectTimeout=\u00b2"):
        with contextlib.suppress(ConfigError):
            from_jdbc(url, None, None)


def test_a_documents_indexed_list_in_index_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """config_files._list takes name[i] in the order the file writes them, not by index (arguments._list sorts):
    spring.profiles.include[1]=b before [0]=a includes b then a; Boot binds the list [a, b] (a later one wins)."""
    (tmp_path / "application.properties").write_text(
        "spring.profiles.include[1]=b\nspring.profiles.include[0]=a\n")
    monkeypatch.chdir(tmp_path)
    assert Properties([], {}).profiles == ["a", "b"]
