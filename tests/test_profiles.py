"""Spring profiles as pure functions: the active ones, and profile expressions as Spring's Profiles.of reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from util.arguments import ConfigError, Properties
from util.profiles import ProfileError, active, matches


def _active(values: dict[str, str]) -> tuple[list[str], bool]:
    def listed(name: str) -> list[str]:
        return [item.strip() for item in values.get(name, "").split(",") if item.strip()]

    return active(listed, listed)


def test_active_profiles_in_order_with_includes_groups_and_the_default() -> None:
    assert _active({}) == (["default"], True)
    assert _active({"spring.profiles.default": "local"}) == (["local"], True)
    assert _active({"spring.profiles.active": "prod, eu"}) == (["prod", "eu"], False)
    # included profiles first, as Boot's Profiles orders them: an active profile's file wins over an included one's
    assert _active({"spring.profiles.active": "prod", "spring.profiles.include": "metrics"}) == (
        ["metrics", "prod"], False)
    assert _active({"spring.profiles.active": "default"}) == (["default"], False)
    groups = {"spring.profiles.active": "prod", "spring.profiles.group.prod": "db,mq",
              "spring.profiles.group.db": "prod,pool"}  # a cycle back to prod is ignored
    assert _active(groups) == (["prod", "db", "pool", "mq"], False)


@pytest.mark.parametrize("name", ["a&b", "../x", "-x", "a b", "prod!"])
def test_a_profile_name_boot_refuses_is_one_configuration_line(name: str) -> None:
    with pytest.raises(ConfigError, match=r"Invalid profile .*spring\.profiles\.validate=false"):
        Properties([f"--spring.profiles.active={name}", "--spring.config.location=optional:file:/nonexistent/"], {})
    assert Properties([f"--spring.profiles.active={name}", "--spring.profiles.validate=false",
                       "--spring.config.location=optional:file:/nonexistent/"], {}).profiles == [name]


@pytest.mark.parametrize(("expression", "profiles", "expected"), [
    ("prod", ["prod"], True), ("prod", ["dev"], False), ("!prod", ["dev"], True),
    ("prod & eu", ["prod", "eu"], True), ("prod & eu", ["prod"], False), ("prod | eu", ["eu"], True),
    ("prod & (eu | us)", ["prod", "us"], True), ("!(prod | dev)", ["test"], True), ("dev, prod", ["prod"], True),
    ("!!prod", ["prod"], True),
])
def test_profile_expressions_as_springs_profiles_of(expression: str, profiles: list[str], expected: bool) -> None:
    assert matches(expression, profiles) is expected


@pytest.mark.parametrize("expression", ["prod & eu | us", "(prod", "prod)", "&", "prod &", "!"])
def test_a_malformed_profile_expression_is_refused(expression: str) -> None:
    with pytest.raises(ProfileError, match="Malformed profile expression"):
        matches(expression, ["prod"])


def test_profile_files_and_documents_as_boot_reads_them(tmp_path: Path) -> None:
    (tmp_path / "application.yml").write_text(
        "a: base\nb: base\nc: base\n---\nspring.config.activate.on-profile: prod & !eu\nb: prod-only\n"
        "---\nspring:\n  profiles: eu\nc: eu-doc\n")
    (tmp_path / "application-prod.yml").write_text("a: prod\nd: prod\n")
    (tmp_path / "application-eu.properties").write_text("d=eu\n")
    where = f"--spring.config.location=optional:file:{tmp_path}/"

    def value(props: Properties, name: str) -> str | None:
        return props.raw(name)

    plain = Properties([where], {})
    assert plain.profiles == ["default"]
    assert [value(plain, k) for k in "abcd"] == ["base", "base", "base", None]
    prod = Properties([where], {"SPRING_PROFILES_ACTIVE": "prod"})
    assert prod.profiles == ["prod"]
    assert [value(prod, k) for k in "abcd"] == ["prod", "prod-only", "base", "prod"]
    both = Properties([where, "--spring.profiles.active=prod,eu"], {})
    assert [value(both, k) for k in "abcd"] == ["prod", "base", "eu-doc", "eu"]  # eu, later, wins over prod
    assert [p.name for p in both.files] == ["application.yml", "application-prod.yml", "application-eu.properties"]
    (tmp_path / "application.yml").write_text("spring.profiles.active: prod\n")  # a plain file may name them
    assert Properties([where], {}).profiles == ["prod"]
    (tmp_path / "application.yml").write_text("---\nspring.config.activate.on-profile: a & b | c\nx: 1\n")
    with pytest.raises(ConfigError, match=r"Malformed profile expression 'a & b \| c'"):
        Properties([where], {})


def test_location_groups_order_profile_files_as_boots_documented_example(tmp_path: Path) -> None:
    """Boot's reference: with prod,live active, ``cfg/,ext/`` reads all of cfg before ext; ``cfg/;ext/`` (one
    group) reads each profile across both locations before the next profile."""
    cfg, ext = tmp_path / "cfg", tmp_path / "ext"
    cfg.mkdir()
    ext.mkdir()
    (cfg / "application-live.properties").write_text("x=cfg-live\n")
    (ext / "application-prod.properties").write_text("x=ext-prod\n")
    (ext / "application-live.properties").write_text("y=ext-live\n")
    active = "--spring.profiles.active=prod,live"
    apart = Properties([f"--spring.config.location=file:{cfg}/,file:{ext}/", active], {})
    assert [str(p.relative_to(tmp_path)) for p in apart.files] == [
        "cfg/application-live.properties", "ext/application-prod.properties", "ext/application-live.properties"]
    assert apart.raw("x") == "ext-prod"
    grouped = Properties([f"--spring.config.location=file:{cfg}/;file:{ext}/", active], {})
    assert [str(p.relative_to(tmp_path)) for p in grouped.files] == [
        "ext/application-prod.properties", "cfg/application-live.properties", "ext/application-live.properties"]
    assert grouped.raw("x") == "cfg-live"


def test_a_file_location_reads_its_profile_variant_beside_it(tmp_path: Path) -> None:
    (tmp_path / "step.yml").write_text("a: plain\nb: plain\n")
    (tmp_path / "step-prod.yml").write_text("a: prod\n")
    props = Properties([f"--spring.config.location=file:{tmp_path}/step.yml", "--spring.profiles.active=prod,eu"],
                       {})
    assert [p.name for p in props.files] == ["step.yml", "step-prod.yml"]  # no step-eu.yml: nothing required
    assert (props.raw("a"), props.raw("b")) == ("prod", "plain")
    extra = Properties([f"--spring.config.additional-location=optional:file:{tmp_path}/step.yml"],
                       {"SPRING_PROFILES_ACTIVE": "prod"})
    assert extra.raw("a") == "prod"
