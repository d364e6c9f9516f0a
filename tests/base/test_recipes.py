"""The recipes that ship in the package: a name works wherever a config file does, in any folder, and a file of
that name in the current folder wins."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlptrain.base.config import load_config
from mlptrain.base.errors import ConfigError
from mlptrain.base.recipes import RECIPES, describe, is_sweep, recipe_names, resolve
from mlptrain.cli.completion import configs, sweep_files
from mlptrain.cli.main import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_the_recipes_are_the_files_configs_shows():
    assert recipe_names() == ["mnist", "mnist-best", "smoke", "sweep", "tutorial"]
    assert (REPO / "configs").resolve() == RECIPES  # one copy: the checkout's configs/ is a link to the package's
    assert [name for name in recipe_names() if is_sweep(name)] == ["sweep"]
    assert all(describe(name) and "\n" not in describe(name) for name in recipe_names())


@pytest.mark.parametrize("argument", ["mnist-best", "mnist-best.yaml"])
def test_a_name_resolves_to_the_shipped_file_from_any_folder(tmp_path, monkeypatch, argument):
    monkeypatch.chdir(tmp_path)
    assert resolve(argument) == RECIPES / "mnist-best.yaml"
    assert load_config(argument).name == "mnist-best"


def test_a_file_in_the_current_folder_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("smoke.yaml").write_text("name: mine\n")
    assert load_config("smoke.yaml").name == "mine"
    assert load_config("smoke").name == "smoke"  # no file called 'smoke' here: the recipe


def test_an_unknown_name_is_refused_with_the_recipes_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refusal = r"config file not found: mnist-bset \(nor is it a recipe.s name; the recipes are mnist, mnist-best, smoke"
    with pytest.raises(ConfigError, match=refusal):
        resolve("mnist-bset")
    assert resolve("some/where/mnist.yaml") == Path("some/where/mnist.yaml")  # a path: its reader says it is missing


def test_the_cli_takes_names_and_lists_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listed = runner.invoke(app, ["config", "--list"])
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    for name in recipe_names():
        assert sum(line.split()[0] == name for line in lines[1:-1]) == 1, listed.stdout
    assert runner.invoke(app, ["config", "smoke"]).stdout.startswith("name: smoke\n")
    plan = runner.invoke(app, ["train", "smoke", "--dry-run"])
    assert plan.exit_code == 0, plan.stderr
    refused = runner.invoke(app, ["train", "smoek"])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1 and "smoek" in refused.stderr


def test_the_shipped_sweep_runs_by_name(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    from mlptrain.sweep.start import plan

    monkeypatch.chdir(tmp_path)
    sweep = plan(Path("sweep"))
    assert sweep.base["name"] == "smoke" and sweep.spec.size == 6
    Path("mine.yaml").write_text("base: smoke\nparams: {train.lr: [0.1, 0.2]}\n")  # a recipe's name as its base
    assert plan(Path("mine.yaml")).base["name"] == "smoke"
    Path("smoke").write_text("name: beside\n")  # a file beside the sweep file wins
    assert plan(Path("mine.yaml")).base["name"] == "beside"


def test_completion_offers_the_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert configs("mn") == ["mnist", "mnist-best"]
    Path("mnist-mine.yaml").write_text("{}")
    assert configs("mn") == ["mnist-mine.yaml", "mnist", "mnist-best"]
    assert configs("sw") == [] and sweep_files("") == ["mnist-mine.yaml", "sweep"]
