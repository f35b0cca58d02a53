"""spring.config.import as Spring Boot reads it: file: and configtree: imports, optional:, nested and relative
ones, and config tree values kept secret (pure: Properties over files in a temporary directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from util.arguments import ConfigError, Properties, Property

PORT = Property("app.port", int, 1, "A port.")


def test_file_and_configtree_imports_come_above_the_file_that_imports_them(tmp_path: Path) -> None:
    (tmp_path / "extra").mkdir()
    (tmp_path / "secrets" / "db").mkdir(parents=True)
    (tmp_path / "application.yml").write_text(
        "a: base\nb: base\nspring.config.import: optional:file:extra/more.properties,"
        f"optional:configtree:{tmp_path}/secrets/,optional:file:missing.yml\n")
    (tmp_path / "extra" / "more.properties").write_text("a=more\nspring.config.import=file:nested.yml\n")
    (tmp_path / "extra" / "nested.yml").write_text("c: nested\n")  # relative to more.properties
    (tmp_path / "secrets" / "db" / "password").write_text("s3cret\n")  # one trailing newline trimmed
    (tmp_path / "secrets" / "..hidden").write_text("no")  # Boot leaves out a name starting with "..", not "."
    (tmp_path / "secrets" / ".dockerconfigjson").write_text("{}")
    props = Properties([f"--spring.config.location=optional:file:{tmp_path}/"], {})
    assert [props.raw(k) for k in ("a", "b", "c", "db.password", "..hidden", ".dockerconfigjson")] == [
        "more", "base", "nested", "s3cret", None, "{}"]
    assert props.secret(Property("db.password", str, None, "from the tree"))
    assert not props.secret(Property("a", str, None, "from a file"))


def test_a_config_tree_value_is_never_shown_in_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "tree" / "app").mkdir(parents=True)
    (tmp_path / "tree" / "app" / "port").write_text("not-a-port-s3cret")
    props = Properties([], {"SPRING_CONFIG_IMPORT": f"configtree:{tmp_path}/tree/"})
    with pytest.raises(ConfigError) as raised:
        props.get(PORT)
    assert "s3cret" not in str(raised.value)
    assert "app.port" in str(raised.value)


def test_a_missing_import_is_an_error_naming_it_unless_optional(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spring\.config\.import 'file:nowhere\.yml'"):
        Properties(["--spring.config.import=file:nowhere.yml"], {})
    with pytest.raises(ConfigError, match="does not exist"):
        Properties([f"--spring.config.import=configtree:{tmp_path}/none/"], {})
    with pytest.raises(ConfigError, match="no classpath"):
        Properties(["--spring.config.import=classpath:x.yml"], {})
    assert Properties([f"--spring.config.import=optional:configtree:{tmp_path}/none/"], {}).raw("x") is None


def test_a_wildcard_config_tree_reads_each_directory(tmp_path: Path) -> None:
    for name, value in (("one", "1"), ("two", "2")):
        (tmp_path / "etc" / name).mkdir(parents=True)
        (tmp_path / "etc" / name / f"k{name}").write_text(value)
    props = Properties([f"--spring.config.import=configtree:{tmp_path}/etc/*/"], {})
    assert (props.raw("kone"), props.raw("ktwo")) == ("1", "2")


def tree(directory: Path, *args: str) -> Properties:
    """Properties importing ``directory`` as a config tree, no config file read."""
    return Properties([f"--spring.config.import=configtree:{directory}/",
                       f"--spring.config.location=optional:file:{directory.parent}/no-such-dir/", *args], {})


def test_a_kubernetes_secret_with_nested_keys_is_read_through_its_directory_links(tmp_path: Path) -> None:
    """A Secret mounted with items: [{key: password, path: db/password}] is laid out by the kubelet as
    ..<timestamp>/db/password, ..data -> ..<timestamp>, db -> ..data/db: Boot follows the links (Files.find with
    FOLLOW_LINKS); a link back to a directory above is a loop, left out; a broken link too."""
    secret = tmp_path / "secret"
    (secret / "..2026_12_04_19_00_00.1" / "db").mkdir(parents=True)
    (secret / "..2026_12_04_19_00_00.1" / "db" / "password").write_text("pw")
    (secret / "..2026_12_04_19_00_00.1" / "user").write_text("u")
    os.symlink("..2026_12_04_19_00_00.1", secret / "..data")
    os.symlink("..data/db", secret / "db")
    os.symlink("..data/user", secret / "user")
    os.symlink(".", secret / "..2026_12_04_19_00_00.1" / "db" / "loop")
    os.symlink("nowhere", secret / "broken")
    props = tree(secret)
    assert (props.raw("user"), props.raw("db.password"), props.raw("db.loop.password")) == ("u", "pw", None)


def test_config_tree_newlines_are_trimmed_as_boot_trims_them(tmp_path: Path) -> None:
    """Boot's AUTO_TRIM_TRAILING_NEW_LINE trims "\\r\\n" or "\\n" from a one-line value only: a PEM certificate keeps
    its final newline."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "password").write_bytes(b"s3cret\r\n")
    (tmp_path / "tree" / "user").write_bytes(b"app\n")
    (tmp_path / "tree" / "blank").write_bytes(b"x\n\n")
    pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    (tmp_path / "tree" / "tls.crt").write_text(pem)
    props = tree(tmp_path / "tree")
    assert (props.raw("password"), props.raw("user"), props.raw("blank")) == ("s3cret", "app", "x\n\n")
    assert props.raw("tls.crt") == pem


def test_a_binary_file_in_a_config_tree_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Secret often holds a keystore beside its password: the keystore, not UTF-8 text, is no property (a DEBUG
    line says so); the password is read."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "password").write_text("pw")
    (tmp_path / "tree" / "keystore.p12").write_bytes(bytes(range(256)))
    with caplog.at_level("DEBUG", logger="util.config_imports"):
        props = tree(tmp_path / "tree")
    assert (props.raw("password"), props.raw("keystore.p12")) == ("pw", None)
    assert "keystore.p12 is not UTF-8 text: left out" in caplog.text


def test_imported_files_and_directories_read_their_profile_variants(tmp_path: Path) -> None:
    """As Boot's resolveProfileSpecific: file:extra/ reads extra/application-prod.properties above
    extra/application.properties, file:db.yml reads db-prod.yml above db.yml; an existing empty directory is no
    missing import."""
    (tmp_path / "extra").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "application.properties").write_text("spring.config.import=file:extra/,file:db.yml,file:empty/\n")
    (tmp_path / "extra" / "application.properties").write_text("q=plain\nr=plain\n")
    (tmp_path / "extra" / "application-prod.properties").write_text("q=prod\n")
    (tmp_path / "db.yml").write_text("w: db\nv: db\n")
    (tmp_path / "db-prod.yml").write_text("w: db-prod\n")
    args = [f"--spring.config.location=optional:file:{tmp_path}/"]
    plain = Properties(args, {})
    assert (plain.raw("q"), plain.raw("w")) == ("plain", "db")
    prod = Properties([*args, "--spring.profiles.active=prod"], {})
    assert (prod.raw("q"), prod.raw("r"), prod.raw("w"), prod.raw("v")) == ("prod", "plain", "db-prod", "db")


def test_an_optional_config_tree_the_user_cannot_search_is_skipped(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Boot's exists() is false where stat() is refused: an optional: tree there is skipped; one that is not
    optional is one line naming it."""
    import pathlib

    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "password").write_text("pw")
    real_stat = pathlib.Path.stat

    def stat(self: pathlib.Path, *args: object, **kwargs: object) -> os.stat_result:
        if os.path.abspath(self).startswith(str(tmp_path / "secrets")):
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    location = f"--spring.config.location=optional:file:{tmp_path}/none/"
    optional = Properties([f"--spring.config.import=optional:configtree:{tmp_path}/secrets/", location], {})
    assert optional.raw("password") is None
    with pytest.raises(ConfigError, match=r"spring\.config\.import 'configtree:.*/secrets/': cannot look at"):
        Properties([f"--spring.config.import=configtree:{tmp_path}/secrets/", location], {})


def test_passwords_in_addresses_are_never_printed_in_a_configuration_error(tmp_path: Path) -> None:
    """A rabbit address or Kafka broker with user:password@ prints masked (amqp://app:****@rabbit:56x72); one from a
    config tree (a mounted Secret) not at all; a logging level too."""
    from util import kafka_config, logs, rabbit_config

    address = "amqp://app:hunter2-s3cret@rabbit:56x72"
    with pytest.raises(ConfigError, match=r"'amqp://app:\*\*\*\*@rabbit:56x72'") as raised:
        rabbit_config.addresses(Properties([f"--spring.rabbitmq.addresses=rabbit:5672,{address}"], {}))
    assert "s3cret" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"'SASL_SSL://user:\*\*\*\*@kafka:x'"):
        kafka_config.bootstrap_servers(Properties(
            ["--spring.cloud.stream.kafka.binder.brokers=SASL_SSL://user:s3cret@kafka:x"], {}))
    binder = "spring/cloud/stream/kafka/binder"
    for name, value in (("spring/rabbitmq/addresses", address), (f"{binder}/brokers", "s3cret:x"),
                        (f"{binder}/requiredAcks", "s3cret"), ("logging/level/root", "s3cret")):
        (tmp_path / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / name).write_text(value)
    props = tree(tmp_path / "tree")
    for check in (rabbit_config.addresses, kafka_config.bootstrap_servers, logs.configure_logging,
                  lambda p: kafka_config.required_acks(p, {})):
        with pytest.raises(ConfigError) as raised:
            check(props)
        assert "s3cret" not in str(raised.value)
        assert "<hidden>" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        kafka_config.required_acks(props, {"acks": "s3cret"})  # a pass-through value: its source is not known
    assert "s3cret" not in str(raised.value)
