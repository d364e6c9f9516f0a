"""Shell completion: Typer's scripts for bash, zsh and fish, and what TAB offers (config files, checkpoints and run
folders, config keys), all without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import cli_in_fresh_python

from mlptrain.base.config import config_keys
from mlptrain.cli import completion


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_a_script_for_each_shell(shell):
    # Typer's own switch: name the shell rather than detect the one running the tests.
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mlptrain", "--show-completion", shell],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "_MLPTRAIN_COMPLETE" in out.stdout and "mlptrain" in out.stdout
    assert f"complete_{shell}" in out.stdout


def complete(words: str, tmp_path=None) -> list[str]:
    """What bash's TAB would offer after `words` (the last one being completed), computed by mlptrain itself."""
    argv = words.split(" ")
    env = {**os.environ, "_MLPTRAIN_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(argv) - 1)}
    out = subprocess.run(
        [sys.executable, "-c", COMPLETE_WITHOUT_TORCH],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


# Completes, then fails if torch was imported: completion runs on every TAB and must answer at once.
COMPLETE_WITHOUT_TORCH = """
import sys
from mlptrain.cli.main import _run  # not main(), which would leave with os._exit, skipping the check, if torch loaded
_run()
assert 'torch' not in sys.modules, 'completion imported torch'
"""


def test_commands_complete(tmp_path):
    offered = complete("mlptrain ", tmp_path)
    assert {"train", "eval", "export", "config", "predict", "runs", "plot", "sweep", "bench"} <= set(offered)


def test_train_offers_yaml_files_and_folders(tmp_path):
    for name in ("a.yaml", "b.yml", "notes.txt", "model.pt"):
        (tmp_path / name).write_text("")
    (tmp_path / "configs").mkdir()
    # then the shipped recipes that are configs, by name
    assert complete("mlptrain train ", tmp_path) == [
        "a.yaml",
        "b.yml",
        "configs/",
        "mnist",
        "mnist-best",
        "smoke",
        "tutorial",
    ]


def test_eval_offers_checkpoints_and_run_folders(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    for name in ("best.pt", "last.pt", "config.yaml"):
        (run / name).write_text("")
    assert complete("mlptrain eval ", tmp_path) == ["runs/"]
    assert complete("mlptrain eval runs/r1/", tmp_path) == ["runs/r1/best.pt", "runs/r1/last.pt"]
    assert complete("mlptrain eval runs/r1/b", tmp_path) == ["runs/r1/best.pt"]


def test_set_offers_the_config_keys(tmp_path):
    assert complete("mlptrain train x.yaml --set train.l", tmp_path) == ["train.lr=", "train.label_smoothing="]
    assert set(complete("mlptrain config --set ", tmp_path)) == {f"{key}=" for key in config_keys()}


def test_completion_helpers_directly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".hidden.yaml").write_text("")
    (tmp_path / "c.yaml").write_text("")
    assert completion.yaml_files("") == ["c.yaml"]
    assert completion.yaml_files(".") == [".hidden.yaml"]
    assert completion.yaml_files(str(tmp_path) + "/") == [f"{tmp_path}/c.yaml"]
    assert completion.checkpoints("no/such/folder/") == []
    assert completion.settings("seed=") == []


def test_help_config_and_completion_scripts_do_not_import_torch():
    cli_in_fresh_python(["--help"], ["-h"], ["config", "--keys"], ["config"], ["predict", "-h"], ["eval", "--help"])


@pytest.mark.parametrize("env", [{}, {"COMP_WORDS": "mlptrain tr", "COMP_CWORD": "abc"}])
def test_completion_run_by_hand_is_one_line(env, tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in ("COMP_WORDS", "COMP_CWORD")}
    out = subprocess.run(
        [sys.executable, "-m", "mlptrain"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "_MLPTRAIN_COMPLETE": "complete_bash", **env},
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "COMP_WORDS" in lines[0] and "Traceback" not in out.stderr, out.stderr


def test_install_completion_that_cannot_write_is_one_line(tmp_path):
    home = tmp_path / "home"
    home.write_text("")  # a file where the home folder should be: nothing can be written under it, even by root
    env = {**os.environ, "HOME": str(home), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mlptrain", "--install-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--install-completion: cannot write" in lines[0] and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("words", "reply", "nospace"),
    [
        ("mlptrain config --set train.l", "train.lr= train.label_smoothing=", False),  # two: bash completes neither
        ("mlptrain config --set train.lr", "train.lr=", True),  # the value goes right after the =
        ("mlptrain eval ru", "runs/", True),  # into the folder, not past it
        ("mlptrain eval runs/r1/b", "runs/r1/best.pt", False),  # a file: the next word may follow
    ],
)
def test_bash_leaves_no_space_after_a_lone_key_or_folder(tmp_path, words, reply, nospace):
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "best.pt").write_text("")
    script = subprocess.run(
        [sys.executable, "-m", "mlptrain", "--show-completion", "bash"], capture_output=True, text=True, check=True
    ).stdout
    # bash's own compopt works only while completing at a prompt: here a function of the same name records the call
    probe = f"""compopt() {{ echo "compopt $1 $2"; }}
{script}
COMP_WORDS=({words})
COMP_CWORD={len(words.split(" ")) - 1}
_mlptrain_completion mlptrain
echo "reply: ${{COMPREPLY[*]}}"
"""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}  # mlptrain
    out = subprocess.run(
        ["bash", "--norc", "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert f"reply: {reply}" in out.stdout, out.stdout + out.stderr
    assert ("compopt -o nospace" in out.stdout) == nospace, out.stdout
