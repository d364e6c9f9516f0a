"""The README is the front page and docs/ the manual: together they name every command, option and config key; the
generated references are what the code generates; every relative link resolves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlptrain.base.config import config_keys
from mlptrain.cli.main import app

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PAGES = sorted((REPO / "docs").glob("*.md"))
MANUAL = "\n".join([README, *(page.read_text() for page in PAGES)])
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("key", config_keys())
def test_every_config_key_is_documented_by_its_dotted_name(key):
    assert f"`{key}`" in MANUAL, f"neither the README nor docs/ names config key {key}"


def test_every_command_option_is_documented():
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"mlptrain {name}" in MANUAL, name
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--"):
                    assert f"`{opt}" in MANUAL, f"neither the README nor docs/ names {name} {opt}"


def test_ci_test_command_is_in_readme():
    assert "<!-- ci: test command -->" in README
    assert sum("<!-- ci: test command -->" in page.read_text() for page in PAGES) == 0  # one place CI reads


def test_the_readme_is_a_front_page_and_docs_the_manual():
    assert README.count("\n") <= 250, "README.md is the front page: move the details into docs/"
    assert len(PAGES) >= 6


def test_the_generated_references_are_what_the_code_generates():
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "docs.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("page", [REPO / "README.md", REPO / "CHANGELOG.md", *PAGES], ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # code blocks hold no links
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: link to {target}: {file.name} has no heading #{anchor}"


def anchors(page: Path) -> set[str]:
    """The anchors a code host makes of a Markdown page's headings: lower case, punctuation dropped, spaces to -."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found
