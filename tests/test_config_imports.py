"""spring.config.import as Spring Boot reads it: file: and configtree: imports, optional:, nested and relative
ones, and config tree values kept secret (pure: Properties over files in a temporary directory)."""

from __future__ import annotations

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
    (tmp_path / "secrets" / ".hidden").write_text("no")
    props = Properties([f"--spring.config.location=optional:file:{tmp_path}/"], {})
    assert [props.raw(k) for k in ("a", "b", "c", "db.password", ".hidden")] == ["more", "base", "nested", "s3cret",
                                                                                 None]
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
