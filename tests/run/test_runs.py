"""`mlptrain runs`: run folders read back from their files, newest first, with the keys that set them apart."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import cli_in_fresh_python
from typer.testing import CliRunner

from mlptrain.base.config import Config
from mlptrain.base.metrics import COLUMNS
from mlptrain.cli.main import app
from mlptrain.run.runs import differing_keys, list_runs, read_run

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_run(folder: Path, val_accs: list[float], test_acc: float | None = None, **settings) -> Path:
    """A run folder as `mlptrain train` leaves it (without checkpoints): settings are dotted keys, e.g. train__lr."""
    config = Config().to_dict()
    for key, value in settings.items():
        section, name = key.split("__")
        config[section][name] = value
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for epoch, acc in enumerate(val_accs, 1):
            writer.writerow([epoch, 1.0 / epoch, acc, 1.0 - acc, acc, 0.01, 1.5, 0.25, 1000.0, 0])
    if test_acc is not None:
        (folder / "best.test.json").write_text(json.dumps({"accuracy": test_acc, "split": "test"}))
    return folder


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    folder = tmp_path / "runs"
    write_run(folder / "mlp-20240101-120000", [0.5, 0.7, 0.6], test_acc=0.68, train__lr=0.1)
    write_run(folder / "mlp-20240301-090000", [0.8, 0.9], model__hidden=[256, 128], train__epochs=5)
    write_run(folder / "mlp-20240301-090000-2", [0.85], train__lr=0.1)
    custom = write_run(folder / "custom", [0.4], train__lr=0.2)  # named with --run-dir: its mtime dates it
    stamp = 1_700_000_000  # 2023-11-14: older than all the others
    os.utime(custom / "config.yaml", (stamp, stamp))
    (folder / "not-a-run").mkdir()
    (folder / "notes.txt").write_text("not a run either")
    return folder


def test_lists_runs_newest_first_with_the_keys_that_differ(runs_dir):
    result = invoke("runs", runs_dir)
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert [row.split()[0] for row in rows] == [
        "mlp-20240301-090000-2",
        "mlp-20240301-090000",
        "mlp-20240101-120000",
        "custom",
    ]
    for column in ("run", "started", "epochs", "best val acc", "test acc", "time", "model.hidden", "train.lr"):
        assert column in header
    assert header.split()[-3:] == ["model.hidden", "train.epochs", "train.lr"]  # in the config's order
    assert "name" not in header.split() and "train.momentum" not in header
    assert rows[2].split()[1:6] == ["2024-01-01", "12:00", "3/10", "70.00%", "68.00%"]  # best epoch 2, evaluated
    assert "[256, 128]" in rows[1] and "2/5" in rows[1]
    assert rows[0].split()[-4:] == ["[128,", "64]", "10", "0.1"]


def test_json_lists_the_same_runs(runs_dir):
    result = invoke("runs", runs_dir, "--json")
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert [r["run"] for r in out] == [
        "mlp-20240301-090000-2",
        "mlp-20240301-090000",
        "mlp-20240101-120000",
        "custom",
    ]
    oldest = out[2]
    assert oldest["best_epoch"] == 2 and oldest["best_val_acc"] == 0.7 and oldest["test_acc"] == 0.68
    assert oldest["epochs"] == 3 and oldest["epochs_planned"] == 10 and oldest["seconds"] == pytest.approx(5.25)
    assert oldest["differs"] == {"model.hidden": [128, 64], "train.epochs": 10, "train.lr": 0.1}
    assert out[1]["test_acc"] is None and oldest["started"] == "2024-01-01T12:00:00"


def test_the_best_epoch_follows_the_monitor_and_skips_diverged_epochs(tmp_path):
    run = write_run(tmp_path / "r", [0.5, 0.9, 0.8], train__monitor="val_loss")
    assert read_run(run).best_epoch == 2  # val_loss is 1 - acc here: lowest at epoch 2
    with open(run / "metrics.csv", "a", newline="") as f:
        csv.writer(f).writerow([4, "nan", 0.1, "nan", 0.1, 0.01, 1, 1, 1, 0])
    assert read_run(run).best_epoch == 2


def test_a_single_run_folder_lists_itself_and_alone_differs_in_nothing(runs_dir):
    runs = list_runs(runs_dir / "custom")
    assert [r.path.name for r in runs] == ["custom"] and differing_keys(runs) == []


def test_an_empty_folder_and_a_missing_one(tmp_path):
    result = invoke("runs", tmp_path)
    assert result.exit_code == 0 and result.stdout.strip() == f"no runs in {tmp_path}"
    assert json.loads(invoke("runs", tmp_path, "--json").stdout) == []
    missing = invoke("runs", tmp_path / "nope")
    assert missing.exit_code == 2 and "no such folder" in missing.stderr and missing.stderr.count("\n") == 1


def test_a_trained_and_evaluated_run_shows_its_test_accuracy(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "runs" / "smoke")
    accuracy = json.loads(invoke("eval", run / "best.pt", "--json").stdout)["accuracy"]
    (listed,) = json.loads(invoke("runs", tmp_path / "runs", "--json").stdout)
    assert listed["test_acc"] == accuracy and listed["epochs"] == 4
    assert listed["best_val_acc"] == max(s.val_acc for s in read_run(run).history.epochs)


def test_runs_and_plot_help_do_not_import_torch(runs_dir):
    """Listing reads small files only, so it answers at once: no torch (and no matplotlib) is loaded."""
    out = cli_in_fresh_python(
        ["runs", runs_dir], ["plot", "--help"], ["predict", "--help"], forbid=("torch", "matplotlib")
    )
    assert "mlp-20240301-090000-2" in out.stdout and "--top" in out.stdout


def test_runs_says_each_run_it_cannot_read_and_how_many(runs_dir):
    """A run folder whose config.yaml is broken YAML, a FIFO, an alias bomb or a list is left out, each said in a
    line of its own, then counted; the readable runs list as before."""
    broken = {
        "bad-yaml": "train: {lr: [\n",
        "bomb": 'a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]\n'
        + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)),
        "a-list": "- 1\n- 2\n",
    }
    for name, text in broken.items():
        (runs_dir / name).mkdir()
        (runs_dir / name / "config.yaml").write_text(text)
    (runs_dir / "fifo").mkdir()
    os.mkfifo(runs_dir / "fifo" / "config.yaml")
    result = invoke("runs", runs_dir)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 5  # the header and the four readable runs
    *each, count = result.stderr.strip().splitlines()
    assert len(each) == 4 and "4 run folders left out" in count
    for name, needle in (("a-list", "a list"), ("bad-yaml", "not valid YAML"), ("bomb", "refused"), ("fifo", "pipe")):
        assert any(str(runs_dir / name / "config.yaml") in line and needle in line for line in each), name
    alone = invoke("runs", runs_dir / "fifo")
    assert alone.exit_code == 2 and "not a regular file" in alone.stderr


def test_runs_without_augmentation_do_not_differ_in_its_settings(tmp_path):
    def run(name: str, lr: float, **augment) -> Path:
        folder = write_run(tmp_path / name, [0.5], train__lr=lr)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config["data"]["augment"].update(augment)
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return folder

    run("a", 0.1, kind="none", rotation=12.0, scale=0.15)  # mnist-best.yaml with --set data.augment=none
    run("b", 0.2, kind="none")
    assert differing_keys(list_runs(tmp_path)) == ["train.lr"]
    run("c", 0.2, kind="affine", rotation=5.0)  # the only run its rotation applies to
    assert differing_keys(list_runs(tmp_path)) == ["data.augment.kind", "train.lr"]
    run("d", 0.2, kind="elastic", rotation=7.0)
    assert differing_keys(list_runs(tmp_path)) == ["data.augment.kind", "data.augment.rotation", "train.lr"]
