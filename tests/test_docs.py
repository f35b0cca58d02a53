"""The README and docs/ say what the code does, their links lead somewhere, and the shared modules are one code."""

from __future__ import annotations

import ast
import filecmp
import re
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_FIXTURES
from devkit.docs import PAGES, markdown_files, render_block, render_page
from devkit.metadata import LABEL, render_dockerfile
from devkit.properties import RECIPES, recipe_properties
from util.arguments import canonical

RECIPE_FOLDERS = sorted(p.parent for p in ROOT.glob("polyglot-python-*/Dockerfile"))
APP_NAMES = {"processor": "python-processor", "router": "python-router",  # as the READMEs register them
             "task": "python-task-with-status"}
MARKDOWN = markdown_files()  # README.md, docs/*.md and the recipes' READMEs
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize(("block", "page"), [(b, page) for b, pages in PAGES.items() for page in pages])
def test_generated_blocks_are_in_their_pages_and_made_from_the_code(block: str, page: str) -> None:
    text = (ROOT / page).read_text()
    assert f"<!-- {block} -->" in text, page
    after = " after `make bench`" if block == "bench" else ""
    assert render_block(text, block) == text, f"{page} is stale: run `make docs`{after}"


@pytest.mark.parametrize("page", MARKDOWN, ids=_name)
def test_every_generated_block_of_a_page_is_fresh(page: Path) -> None:
    text = page.read_text()
    assert render_page(text) == text, f"{_name(page)} is stale: run `make docs`"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_readme_scdf_commands_pass_only_properties_the_app_reads(recipe: str) -> None:
    declared = {canonical(n) for p in recipe_properties(recipe)[0] for n in (p.name, *p.aliases)}
    for name in ("README.md", f"{RECIPES[recipe][0]}/README.md"):
        assert f"--name {APP_NAMES[recipe]} " in (ROOT / name).read_text(), name
    for page in MARKDOWN:
        for definition in re.findall(r'definition "([^"]+)"', page.read_text()):
            for part in definition.split("|"):
                words = part.split()
                if words and words[0] == APP_NAMES[recipe]:
                    for key in re.findall(r"--([\w.\-]+)=", part):
                        assert canonical(key) in declared, f"{_name(page)}: --{key} is not read by the {recipe}"


def _slugs(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens, -1 on repeats."""
    slugs: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n, unique = 0, slug
        while unique in slugs:
            n += 1
            unique = f"{slug}-{n}"
        slugs.add(unique)
    return slugs


@pytest.mark.parametrize("page", MARKDOWN, ids=_name)
def test_relative_links_point_at_files_and_headings_that_exist(page: Path) -> None:
    text = page.read_text()
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z][a-z+.-]*:", target):
            continue  # https:, mailto: ...
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{_name(page)}: {target} points at nothing"
        assert linked.is_relative_to(ROOT), f"{_name(page)}: {target} leaves the repository"
        if anchor and linked.suffix == ".md":
            assert anchor in _slugs(linked.read_text()), f"{_name(page)}: {target}: no such heading"


def test_every_docs_page_is_listed_and_the_readmes_lead_to_docs() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not list {page.name}"
    assert "](docs/README.md)" in (ROOT / "README.md").read_text()
    for folder in RECIPE_FOLDERS:
        assert "](../docs/README.md)" in (folder / "README.md").read_text(), folder.name


@pytest.mark.parametrize("page", MARKDOWN, ids=_name)
def test_python_examples_parse(page: Path) -> None:
    for block in re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M):
        ast.parse(block)


def test_readme_step_example_runs() -> None:
    code = re.search(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M).group(1)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    message = namespace["Message"](b"abc", (), "text/plain")
    assert namespace["shout"](message, upper=True).payload == b"ABC"
    assert namespace["shout"](message, upper=False) == message


def test_readme_value_and_batch_examples_run_as_the_readme_says() -> None:
    """The README's second example (values and batch mode) and the batch example of writing-steps.md, run as
    they are and checked with the calls the pages show."""
    code = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)[1]
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec", dont_inherit=True), namespace)  # no __future__ of this file
    assert namespace["enrich"]({"amount": 150})["priority"]
    assert namespace["invoice"](namespace["Order"](1, 0.0)) is None
    assert namespace["invoice"](namespace["Order"](1, 10.0)) == {"order": 1, "total": 12.0}
    assert namespace["score"]([{"a": 1}]) == [{"a": 1, "score": 1}]
    page = (ROOT / "docs" / "writing-steps.md").read_text()
    batch = next(b for b in re.findall(r"^```python\n(.*?)^```", page, re.S | re.M) if "BatchError" in b)
    namespace = {"__name__": "docs_example"}
    exec(compile(batch, "writing-steps.md", "exec", dont_inherit=True), namespace)
    score, batch_error = namespace["score"], namespace["BatchError"]
    assert score([{"amount": 2}, {"amount": 0}]) == [{"amount": 2, "score": 4}, None]
    with pytest.raises(batch_error) as raised:
        score([{"amount": 1}, {}])
    assert raised.value.index == 1


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


@pytest.mark.parametrize("recipe", sorted(RECIPES))
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
    for readme in MARKDOWN:
        for image in re.findall(r"--uri docker:<prefix>/([\w-]+):<tag>", readme.read_text()):
            assert (ROOT / image / "Dockerfile").is_file(), f"{_name(readme)} registers {image}"
    assert "make images IMAGE_PREFIX=<prefix> TAG=<tag>" in (ROOT / "README.md").read_text()
