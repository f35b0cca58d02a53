"""Spring profiles as pure functions: the active ones, and profile expressions as Spring's Profiles.of reads them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from util.profiles import ProfileError, active, matches


def _raw(values: dict[str, str]) -> Callable[[str], str | None]:
    return values.get


def test_active_profiles_in_order_with_includes_groups_and_the_default() -> None:
    assert active(_raw({})) == ["default"]
    assert active(_raw({"spring.profiles.default": "local"})) == ["local"]
    assert active(_raw({"spring.profiles.active": "prod, eu"})) == ["prod", "eu"]
    assert active(_raw({"spring.profiles.active": "prod", "spring.profiles.include": "metrics"})) == ["prod",
                                                                                                     "metrics"]
    groups = {"spring.profiles.active": "prod", "spring.profiles.group.prod": "db,mq",
              "spring.profiles.group.db": "prod,pool"}  # a cycle back to prod is ignored
    assert active(_raw(groups)) == ["prod", "db", "pool", "mq"]


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
