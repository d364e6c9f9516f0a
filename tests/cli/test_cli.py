"""End to end through the CLI: train -> files -> eval, the way a user runs it, plus its error contract."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_in_fresh_python
from typer.testing import CliRunner

from mlptrain import __version__
from mlptrain.cli.main import app

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *needles: str, code: int = 2) -> None:
    """Exit code `code`, exactly one line on stderr naming the problem, and no traceback anywhere."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mlptrain: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    result = invoke("train", SMOKE, "--run-dir", run_dir, "--set", "train.epochs=4")
    assert result.exit_code == 0, result.stdout + result.stderr
    return run_dir


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_the_run_folder(smoke_run):
    assert {p.name for p in smoke_run.iterdir()} >= {"config.yaml", "metrics.csv", "best.pt", "last.pt"}
    assert not [p for p in smoke_run.iterdir() if p.name.endswith(".tmp")]
    rows = read_rows(smoke_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "train_seconds", "val_seconds"):
        assert column in rows[0]
    for r in rows:
        assert 0.0 <= float(r["train_acc"]) <= 1.0 and 0.0 <= float(r["val_acc"]) <= 1.0
        assert float(r["train_seconds"]) > 0 and float(r["val_seconds"]) > 0
    # Synthetic digits are learnable: far above the 10% of chance after a few seconds of CPU.
    assert max(float(r["val_acc"]) for r in rows) > 0.6
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_best_checkpoint_is_the_best_validation_epoch(smoke_run):
    rows = read_rows(smoke_run)
    best = torch.load(smoke_run / "best.pt", weights_only=True)
    last = torch.load(smoke_run / "last.pt", weights_only=True)
    accs = [float(r["val_acc"]) for r in rows]
    assert best["epoch"] == accs.index(max(accs)) + 1
    assert last["epoch"] == 4
    assert best["best"] == {"epoch": best["epoch"], "monitor": "val_acc", "value": max(accs)}


def test_checkpoint_is_self_contained(smoke_run):
    ckpt = torch.load(smoke_run / "best.pt", weights_only=True)
    for key in ("model", "config", "data", "epoch", "metrics", "optimizer", "scheduler", "versions"):
        assert key in ckpt
    assert ckpt["versions"]["mlptrain"] == __version__
    assert ckpt["config"]["data"]["dataset"] == "synthetic"
    assert ckpt["data"]["in_features"] == 784 and ckpt["data"]["num_classes"] == 10
    hidden = ckpt["config"]["model"]["hidden"]
    assert ckpt["model"]["layers.0.weight"].shape == (hidden[0], 784)  # (out_features, in_features)


def test_eval_val_reproduces_recorded_val_acc(smoke_run):
    best = torch.load(smoke_run / "best.pt", weights_only=True)
    row = read_rows(smoke_run)[best["epoch"] - 1]
    result = invoke("eval", smoke_run / "best.pt", "--split", "val", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["split"] == "val" and out["epoch"] == best["epoch"]
    assert out["accuracy"] == float(row["val_acc"])
    assert out["loss"] == pytest.approx(float(row["val_loss"]), rel=1e-6)


def test_eval_json_is_exactly_one_object(smoke_run):
    result = invoke("eval", smoke_run / "last.pt", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)  # the whole of stdout parses: nothing else was printed
    assert {"split", "samples", "loss", "accuracy", "epoch"} <= set(out)
    assert out["split"] == "test" and out["samples"] == 1000 and 0.5 < out["accuracy"] <= 1.0


def test_eval_needs_only_the_checkpoint(smoke_run, tmp_path):
    lone = tmp_path / "elsewhere.pt"
    lone.write_bytes((smoke_run / "best.pt").read_bytes())
    result = invoke("eval", lone, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "accuracy=" in result.stdout  # plain output when not on a terminal
    assert "\x1b[" not in result.stdout


def test_train_on_mnist_idx_files(mnist_root, tmp_path):
    """The real torchvision path: MNIST IDX files on disk, no download."""
    run_dir = tmp_path / "run"
    result = invoke(
        "train",
        SMOKE,
        "--run-dir",
        run_dir,
        "--quiet",
        "--set",
        "data.dataset=mnist",
        "--set",
        f"data.root={mnist_root}",
        "--set",
        "data.download=false",
        "--set",
        "data.val_size=500",
        "--set",
        "train.epochs=3",
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    assert len(result.stdout.strip().splitlines()) == 1  # --quiet: the summary line only
    out = json.loads(invoke("eval", run_dir / "best.pt", "--json").stdout)
    assert out["dataset"] == "mnist" and out["samples"] == 500 and out["accuracy"] > 0.5


def test_train_json(tmp_path):
    result = invoke("train", SMOKE, "--run-dir", tmp_path / "r", "--json", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["best_epoch"] == 1 and len(out["epochs"]) == 1
    assert 0.0 <= out["best"]["val_acc"] <= 1.0
    assert Path(out["best_checkpoint"]).is_file()


def test_default_run_folder_is_name_and_timestamp(tmp_path):
    result = invoke("train", SMOKE, "--quiet", "--set", f"output.dir={tmp_path}", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.stderr
    (run,) = tmp_path.iterdir()
    assert run.name.startswith("smoke-") and (run / "best.pt").is_file()


def test_run_dir_holding_a_run_needs_force(smoke_run, tmp_path):
    target = tmp_path / "r"
    assert invoke("train", SMOKE, "--run-dir", target, "--set", "train.epochs=1").exit_code == 0
    assert_user_error(invoke("train", SMOKE, "--run-dir", target, "--set", "train.epochs=1"), str(target), "--force")
    assert invoke("train", SMOKE, "--run-dir", target, "--force", "--set", "train.epochs=1").exit_code == 0


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "missing.yaml"], ["config file not found", "missing.yaml"]),
        (["train", SMOKE, "--set", "train.lrr=0.1"], ["train.lrr", "did you mean 'train.lr'"]),
        (["train", SMOKE, "--set", "train.epochs=0"], ["train.epochs"]),
        (["train", SMOKE, "--set", "train.lr"], ["KEY=VALUE"]),
        (["train", SMOKE, "--set", "device=cuda:7"], ["cuda"]),
        (["train", SMOKE, "--set", "data.val_size=999999"], ["data.val_size"]),
        (["eval", "nowhere/best.pt"], ["checkpoint not found", "nowhere"]),
        (["eval", SMOKE], ["smoke.yaml"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needles, tmp_path):
    if any("cuda" in str(a) for a in args) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_user_error(invoke(*args, *(["--run-dir", tmp_path / "r"] if args[0] == "train" else [])), *needles)


def test_missing_mnist_names_folder_and_files(tmp_path):
    result = invoke(
        "train",
        SMOKE,
        "--run-dir",
        tmp_path / "r",
        "--set",
        "data.dataset=mnist",
        "--set",
        f"data.root={tmp_path / 'nodata'}",
        "--set",
        "data.download=false",
    )
    assert_user_error(
        result, str(tmp_path / "nodata" / "MNIST" / "raw"), "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
    )


def test_diverging_run_exits_1_and_keeps_finite_checkpoints(tmp_path):
    run_dir = tmp_path / "r"
    result = invoke(
        "train",
        SMOKE,
        "--run-dir",
        run_dir,
        "--set",
        "train.lr=1e6",
        "--set",
        "train.scheduler=none",
        "--set",
        "train.epochs=3",
    )
    assert_user_error(result, "diverged", "train.lr", code=1)
    rows = read_rows(run_dir)
    assert rows  # the diverged epoch is on record
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).exists():
            state = torch.load(run_dir / name, weights_only=True)["model"]
            assert all(torch.isfinite(t).all() for t in state.values())


def test_version_and_help_do_not_import_torch():
    out = cli_in_fresh_python(["--help"], ["--version"], ["train", "--help"])
    assert f"mlptrain {__version__}" in out.stdout
    assert "--set" in out.stdout and "--run-dir" in out.stdout


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "mlptrain", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"mlptrain {__version__}"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["eval", "x.pt", "--split", "foo"], "--split"),
        (["train"], "CONFIG"),
        (["bogus"], "bogus"),
        (["train", "configs/smoke.yaml", "--bogus"], "--bogus"),
    ],
)
def test_usage_errors_are_one_line_through_the_entry_point(argv, needle):
    out = subprocess.run(
        [sys.executable, "-m", "mlptrain", *argv], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlptrain: error: ") and needle in lines[0], out.stderr


def test_an_early_stop_says_how_long_the_run_went_without_improving_by_min_delta(tmp_path):
    """min_delta 0.5 with patience 1: epoch 2 cannot beat epoch 1 by half of the accuracy, so the run stops there,
    and says one epoch went by without such an improvement (it said 0 epochs, counted from best.pt's epoch)."""
    run_dir = tmp_path / "run"
    result = invoke("train", SMOKE, "--run-dir", run_dir, "--set", "train.min_delta=0.5", "--set", "train.patience=1")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert len(read_rows(run_dir)) == 2
    assert "stopped early: no val_acc improvement by more than 0.5 (train.min_delta) for 1 epoch (train.patience)" in (
        result.stdout
    )
