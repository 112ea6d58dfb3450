"""The docs a user navigates: a short README that links every page of docs/, links that
resolve, and the names the pages use (modules, repository paths, make targets) that
exist. The commands the pages show are run by the tests of what they document
(test_docs_kubernetes.py, tests/integration/test_hostile_requests.py)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
ALL = [README, *PAGES]

# [text](target): the text may span lines; images and autolinks need no special case.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Python names under the package, as the docs write them in backticks.
# (visionline.io/run-id is a label, not a module).
MODULE = re.compile(r"`(?:python -m )?(visionline(?:\.[A-Za-z_]\w*)+)(?![\w/.-])")
# Repository paths in backticks: a top-level folder of the repository, then a path with
# no placeholder (<run_id>, *.png, {a,b}) in it.
REPO_PATH = re.compile(
    r"`((?:src|flows|handlers|k8s|benchmarks|tests|configs|notebooks)/[\w./-]*)`"
)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def _id(page: Path) -> str:
    return str(page.relative_to(REPO))


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines: move the detail to docs/"


def test_the_pages_the_issue_names_exist():
    expected = {
        "data",
        "training",
        "evaluation",
        "serving",
        "monitoring",
        "kubernetes",
        "configuration",
        "store",
        "security",
        "benchmarks",
        "layout",
    }
    assert expected <= {p.stem for p in PAGES}


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (README.parent / target.split("#")[0]).resolve()
        for target in LINK.findall(README.read_text())
        if not re.match(r"\w+:", target)
    }
    missing = [_id(p) for p in PAGES if p.resolve() not in linked]
    assert not missing, f"not linked from README.md: {missing}"


@pytest.mark.parametrize("page", ALL, ids=_id)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"\w+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO)}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, broken


@pytest.mark.parametrize("page", ALL, ids=_id)
def test_every_python_name_exists(page):
    """`visionline.x.y` in a page is a module, or an attribute of the module before it:
    after a move, a page still naming the old place fails here."""
    missing = []
    for dotted in sorted(set(MODULE.findall(page.read_text()))):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(dotted)
            break
        else:
            missing.append(dotted)
    assert not missing, missing


@pytest.mark.parametrize("page", ALL, ids=_id)
def test_every_repository_path_exists(page):
    missing = [p for p in set(REPO_PATH.findall(page.read_text())) if not (REPO / p).exists()]
    assert not missing, missing


@pytest.mark.parametrize("page", ALL, ids=_id)
def test_every_make_command_names_a_target(page):
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)
    inline = re.findall(r"`make ([\w-]+)", page.read_text())
    named = inline + [
        line.split()[1] for b in blocks for line in b.splitlines() if line.startswith("make ")
    ]
    assert set(named) <= targets, sorted(set(named) - targets)
