"""The READMEs say what the code does, and the recipes' shared modules are one code."""

from __future__ import annotations

import filecmp
import re
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_FIXTURES
from devkit.docs import DOCS, render, render_bench, render_keys, render_source
from devkit.metadata import LABEL, render_dockerfile
from devkit.properties import RECIPES, recipe_properties
from util.arguments import canonical

RECIPE_FOLDERS = sorted(p.parent for p in ROOT.glob("polyglot-python-*/Dockerfile"))
APP_NAMES = {"processor": "python-processor", "router": "python-router",  # as the READMEs register them
             "task": "python-task-with-status"}


@pytest.mark.parametrize("recipe", sorted(DOCS))
def test_readme_property_tables_are_generated_from_the_code(recipe: str) -> None:
    for name in DOCS[recipe]:
        text = (ROOT / name).read_text()
        assert f"<!-- properties:{recipe} -->" in text, name
        assert render(text, recipe) == text, f"{name} is stale: run `make docs`"


def test_readme_kafka_key_table_is_generated_from_the_transport() -> None:
    text = (ROOT / "README.md").read_text()
    assert "<!-- kafka-keys -->" in text
    assert render_keys(text) == text, "README.md is stale: run `make docs`"


def test_readme_source_property_table_is_generated_from_the_code() -> None:
    text = (ROOT / "README.md").read_text()
    assert "<!-- properties:source -->" in text
    assert render_source(text) == text, "README.md is stale: run `make docs`"


def test_readme_performance_figures_are_the_latest_bench_run() -> None:
    text = (ROOT / "README.md").read_text()
    assert "<!-- bench -->" in text
    assert render_bench(text) == text, "README.md is stale: run `make docs` after `make bench`"


@pytest.mark.parametrize("recipe", sorted(DOCS))
def test_readme_scdf_commands_pass_only_properties_the_app_reads(recipe: str) -> None:
    declared = {canonical(n) for p in recipe_properties(recipe)[0] for n in (p.name, *p.aliases)}
    for name in DOCS[recipe]:
        text = (ROOT / name).read_text()
        assert f"--name {APP_NAMES[recipe]} " in text, name
        for definition in re.findall(r'definition "([^"]+)"', text):
            for part in definition.split("|"):
                words = part.split()
                if words and words[0] == APP_NAMES[recipe]:
                    for key in re.findall(r"--([\w.\-]+)=", part):
                        assert canonical(key) in declared, f"{name}: --{key} is not read by the {recipe}"


def test_shared_util_modules_are_identical_copies() -> None:
    by_name: dict[str, list[Path]] = {}
    for folder in RECIPE_FOLDERS:
        for module in (folder / "util").glob("*.py"):
            by_name.setdefault(module.name, []).append(module)
    for copies in by_name.values():
        for other in copies[1:]:
            assert filecmp.cmp(copies[0], other, shallow=False), f"{other} differs from {copies[0]}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_router_deployment_properties_set_only_what_the_router_reads() -> None:
    declared = {canonical(p.name) for p in recipe_properties("router")[0]}
    text = (ROOT / "polyglot-python-app" / "polyglot-python-app-deployment.properties").read_text()
    keys = re.findall(r"^app\.python-router\.([^=\s]+)=", text, re.M)
    wired = {f"spring.cloud.stream.bindings.{key}" for key in
             ("input.destination", "input.group", "even.destination", "odd.destination")}
    assert wired <= set(keys)
    assert all(canonical(key) in declared for key in keys)


def test_task_ships_the_spring_cloud_task_ddl_unchanged() -> None:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip("no shared/ beside this clone: the Spring Cloud Task fixtures are not here to compare")
    fixtures = sorted(SHARED_FIXTURES.glob("schema-*.sql"))
    assert fixtures
    for fixture in fixtures:
        shipped = ROOT / "polyglot-python-task" / "util" / "schema" / fixture.name
        assert shipped.read_text() == fixture.read_text(), f"{shipped} differs from {fixture}"


@pytest.mark.parametrize("recipe", sorted(DOCS))
def test_dockerfile_metadata_label_is_generated_from_the_code(recipe: str) -> None:
    dockerfile = ROOT / RECIPES[recipe][0] / "Dockerfile"
    text = dockerfile.read_text()
    assert LABEL in text
    assert render_dockerfile(text, recipe) == text, f"{dockerfile} is stale: run `make docs`"


def test_one_pinned_base_image_for_all_recipes() -> None:
    bases = {line.split()[1] for folder in RECIPE_FOLDERS
             for line in (folder / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")}
    assert len(bases) == 1, bases
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", bases.pop())


def test_registered_images_are_the_ones_make_images_builds() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "-t $(IMAGE_PREFIX)/$$recipe:$(TAG) $$recipe" in makefile  # image name = recipe folder
    for readme in [ROOT / "README.md", *(folder / "README.md" for folder in RECIPE_FOLDERS)]:
        for image in re.findall(r"--uri docker:<prefix>/([\w-]+):<tag>", readme.read_text()):
            assert (ROOT / image / "Dockerfile").is_file(), f"{readme.name} registers {image}"
    assert "make images IMAGE_PREFIX=<prefix> TAG=<tag>" in (ROOT / "README.md").read_text()
