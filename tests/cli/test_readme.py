"""The README is the user's manual: it must name every config key and every command option."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlptrain.base.config import config_keys
from mlptrain.cli.main import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("key", config_keys())
def test_every_config_key_is_documented(key):
    leaf = key.rsplit(".", 1)[-1]
    assert re.search(rf"^\s*{re.escape(leaf)}:", README, re.MULTILINE), f"README lacks config key {key}"


def test_every_command_option_is_documented():
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"mlptrain {name}" in README, name
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--"):
                    assert f"`{opt}" in README, f"README lacks {name} {opt}"


def test_ci_test_command_is_in_readme():
    assert "<!-- ci: test command -->" in README
