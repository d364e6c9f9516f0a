"""`data.dataset: folder` end to end: a folder of drawn letters trains, and eval, predict and export name its classes
from the checkpoint; a checkpoint written before class names still reads as the digits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_config_file, write_letters
from typer.testing import CliRunner

from mlptrain.cli.main import app
from mlptrain.core import folder
from mlptrain.run.checkpoint import load_checkpoint
from mlptrain.run.checkpoint_entries import checkpoint_classes

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(folder, "_MEMORY", {})


@pytest.fixture
def letters_run(tmp_path) -> tuple[Path, Path]:
    """(the letters' root, the run folder trained on them)."""
    root = write_letters(tmp_path / "letters", per_class=40, test_per_class=10)
    config = make_config_file(
        tmp_path,
        f"name: letters\ndata: {{dataset: folder, root: {root}, val_size: 15}}\n"
        "model: {hidden: [64]}\ntrain: {epochs: 8, batch_size: 16, lr: 0.05}\n"
        f"output: {{dir: {tmp_path / 'runs'}}}\n",
    )
    result = invoke("train", config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    return root, tmp_path / "run"


def test_a_folder_of_letters_trains_and_predict_eval_and_export_name_its_classes(letters_run, tmp_path):
    root, run = letters_run
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["data"]["classes"] == ["a", "b", "c"] and ckpt["data"]["num_classes"] == 3
    assert ckpt["model"]["layers.1.weight"].shape == (3, 64)

    files = [root / "test" / letter / f"{letter}00{i}.png" for letter in "abc" for i in range(3)]
    result = invoke("predict", run / "best.pt", *files, "--json")
    assert result.exit_code == 0, result.output
    names = [p["name"] for p in json.loads(result.stdout)]
    assert set(names) <= {"a", "b", "c"} and sum(n == f.parent.name for n, f in zip(names, files, strict=True)) >= 7
    plain = invoke("predict", run / "best.pt", files[0])
    assert f"{files[0]}: a " in plain.stdout

    scored = invoke("eval", run / "best.pt", "--json")
    assert scored.exit_code == 0, scored.output
    report = json.loads(scored.stdout)
    assert report["classes"] == ["a", "b", "c"] and report["samples"] == 30 and report["accuracy"] >= 0.8

    out = tmp_path / "letters.safetensors"
    assert invoke("export", run / "best.pt", out).exit_code == 0
    from safetensors import safe_open

    assert json.loads(safe_open(str(out), "pt").metadata()["classes"]) == ["a", "b", "c"]


def test_without_a_test_folder_eval_says_to_score_the_held_out_images(letters_run):
    root, run = letters_run
    shutil.rmtree(root / "test")
    result = invoke("eval", run / "best.pt")
    assert result.exit_code == 2
    assert f"{root / 'test'}: not there, so this folder dataset has no test split" in result.output
    assert "--split val" in result.output and "Traceback" not in result.output
    assert invoke("eval", run / "best.pt", "--split", "val").exit_code == 0


def test_a_run_resumed_on_other_classes_is_refused(letters_run):
    root, run = letters_run
    shutil.copytree(root / "train" / "c", root / "train" / "d")
    result = invoke("train", "--resume", run, "--set", "train.epochs=9")
    assert result.exit_code == 2
    assert "its classes (a, b, c, d) are not those the run trained on (a, b, c)" in result.output


def test_a_checkpoint_without_class_names_reads_as_the_digits(trained_run, tmp_path):
    ckpt = torch.load(trained_run / "best.pt", weights_only=True)
    del ckpt["data"]["classes"]
    torch.save(ckpt, tmp_path / "old.pt")
    assert checkpoint_classes(load_checkpoint(tmp_path / "old.pt")) == [str(d) for d in range(10)]
    result = invoke("eval", tmp_path / "old.pt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classes"] == [str(d) for d in range(10)]


def test_a_folder_run_stopped_and_resumed_from_the_cache_is_the_uninterrupted_run(tmp_path):
    from conftest import StopAt

    from mlptrain.base.config import Config
    from mlptrain.base.errors import Interrupted
    from mlptrain.run import trainer
    from mlptrain.run.interrupt import StopRequest

    root = write_letters(tmp_path / "letters", per_class=20)
    config = Config.from_dict({
        "device": "cpu", "seed": 1, "data": {"dataset": "folder", "root": str(root), "val_size": 6},
        "model": {"hidden": [16], "dropout": 0.2}, "train": {"epochs": 2, "batch_size": 8},
    })  # fmt: skip
    trainer.train(config, run_dir=tmp_path / "whole")
    stop = StopRequest()
    with pytest.raises(Interrupted):
        trainer.train(config, run_dir=tmp_path / "stopped", callbacks=StopAt(stop, 1, 3), stop=stop)
    folder._MEMORY.clear()  # a new process: the resumed run reads the cache on disk
    trainer.resume(tmp_path / "stopped")
    whole, resumed = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("whole", "stopped"))
    assert whole["data"] == resumed["data"]
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
