"""Every kind of bad input, through the CLI: exit 2, one line on stderr that names the problem, no traceback."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
import torch
from conftest import copy_dataset, write_idx
from typer.testing import CliRunner

from mlptrain.cli import app

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("good") / "run"
    result = CliRunner().invoke(app, ["train", SMOKE, "--run-dir", str(run_dir), "--set", "train.epochs=1", "-q"])
    assert result.exit_code == 0, result.stderr
    return run_dir / "best.pt"


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def torch_file(path: Path, obj) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getvalue())
    return path


def config_file(tmp: Path, text: str | bytes) -> str:
    path = tmp / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def sweep_file(tmp: Path, text: str, base: str = "name: b\ndevice: cpu\ndata: {dataset: synthetic}\n") -> str:
    """A sweep file over base.yaml (a valid config unless `base` says otherwise), side by side in `tmp`."""
    (tmp / "base.yaml").write_text(base)
    path = tmp / "sweep.yaml"
    path.write_text(text)
    return str(path)


SWEEP = "base: base.yaml\nparams: {train.lr: [0.1, 0.2]}\n"


def edited_checkpoint(tmp: Path, good: Path, edit) -> str:
    ckpt = torch.load(good, weights_only=True)
    edit(ckpt)
    return str(torch_file(tmp / "edited.pt", ckpt))


def broken_mnist(tmp: Path, mnist_root: Path, breaker) -> list[str]:
    root = copy_dataset(mnist_root, tmp / "data")
    breaker(root / "MNIST" / "raw")
    return ["--set", "data.dataset=mnist", "--set", f"data.root={root}", "--set", "data.download=false",
            "--set", "data.val_size=500"]  # fmt: skip


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def wrong_sizes(ckpt: dict) -> None:
    ckpt["model"]["layers.0.weight"] = torch.zeros(7, 784)


# Each case: (id, a function (tmp, checkpoint, mnist_root) -> argv, words the error line must contain).
CASES = [
    # configs
    ("config-missing", lambda t, c, m: ["train", str(t / "nope.yaml")], ["config file not found", "nope.yaml"]),
    ("config-folder", lambda t, c, m: ["train", str(t)], ["is a folder"]),
    ("config-list", lambda t, c, m: ["train", config_file(t, "- 1\n- 2\n")], ["mapping", "list"]),
    ("config-not-utf8", lambda t, c, m: ["train", config_file(t, b"name: \xff\xfe\n")], ["UTF-8"]),
    ("config-bad-yaml", lambda t, c, m: ["train", config_file(t, "train: {lr: [}\n")], ["not valid YAML", "line 1"]),
    ("config-duplicate", lambda t, c, m: ["train", config_file(t, "seed: 1\nseed: 2\n")], ["duplicate key 'seed'"]),
    ("config-unknown-top", lambda t, c, m: ["train", config_file(t, "sed: 1\n")], ["'sed'", "did you mean 'seed'"]),
    ("config-unknown-key", lambda t, c, m: ["train", config_file(t, "train: {lrr: 1}\n")], ["did you mean 'train.lr'"]),
    ("config-str-for-int", lambda t, c, m: ["train", config_file(t, "train: {epochs: ten}\n")], ["train.epochs"]),
    ("config-bool-for-int", lambda t, c, m: ["train", config_file(t, "train: {batch_size: true}\n")],
     ["train.batch_size"]),
    ("config-float-epochs", lambda t, c, m: ["train", config_file(t, "train: {epochs: 2.5}\n")], ["train.epochs"]),
    ("config-negative-lr", lambda t, c, m: ["train", config_file(t, "train: {lr: -0.1}\n")], ["train.lr", "> 0"]),
    ("config-dropout-1", lambda t, c, m: ["train", config_file(t, "model: {dropout: 1.0}\n")], ["model.dropout"]),
    ("config-zero-width", lambda t, c, m: ["train", config_file(t, "model: {hidden: [64, 0]}\n")],
     ["model.hidden[1]"]),
    ("config-activation", lambda t, c, m: ["train", config_file(t, "model: {activation: relu6}\n")],
     ["model.activation", "relu6"]),
    ("config-dataset", lambda t, c, m: ["train", config_file(t, "data: {dataset: cifar}\n")], ["data.dataset"]),
    ("config-device", lambda t, c, m: ["train", config_file(t, "device: gpu\n")], ["device", "'gpu'"]),
    ("config-section-scalar", lambda t, c, m: ["train", config_file(t, "train: 5\n")], ["train", "mapping"]),
    ("config-name-slash", lambda t, c, m: ["train", config_file(t, "name: a/b\n")], ["name", "'a/b'"]),
    # overrides
    ("set-no-equals", lambda t, c, m: ["train", SMOKE, "--set", "train.lr"], ["--set train.lr", "KEY=VALUE"]),
    ("set-unknown", lambda t, c, m: ["train", SMOKE, "--set", "trian.lr=1"], ["did you mean 'train.lr'"]),
    ("set-bad-value", lambda t, c, m: ["train", SMOKE, "--set", "train.batch_size=abc"],
     ["--set train.batch_size=abc"]),
    ("set-section", lambda t, c, m: ["train", SMOKE, "--set", "model=1"], ["'model' is a section"]),
    ("config-and-resume", lambda t, c, m: ["train", SMOKE, "--resume", str(c.parent)], ["not both"]),
    ("resume-other-key", lambda t, c, m: ["train", "--resume", str(c.parent), "--set", "train.lr=1"],
     ["only train.epochs can change"]),
    ("resume-no-run", lambda t, c, m: ["train", "--resume", str(t)], ["no last.pt"]),
    # checkpoints
    ("ckpt-missing", lambda t, c, m: ["eval", str(t / "none.pt")], ["checkpoint not found"]),
    ("ckpt-folder", lambda t, c, m: ["eval", str(c.parent)], ["is a folder", "did you mean"]),
    ("ckpt-truncated", lambda t, c, m: ["eval", _truncated(t, c)], ["not a readable checkpoint"]),
    ("ckpt-random-bytes", lambda t, c, m: ["eval", _random_bytes(t)], ["not a readable checkpoint"]),
    ("ckpt-not-ours", lambda t, c, m: ["eval", str(torch_file(t / "w.pt", {"state_dict": {}}))],
     ["not an mlptrain checkpoint"]),
    ("ckpt-future-format", lambda t, c, m: ["eval", edited_checkpoint(t, c, lambda k: k.update(format_version=9))],
     ["format version 9"]),
    ("ckpt-wrong-sizes", lambda t, c, m: ["eval", edited_checkpoint(t, c, wrong_sizes)], ["layers.0.weight"]),
    ("ckpt-bad-config", lambda t, c, m: ["eval", edited_checkpoint(t, c, lambda k: k["config"].update(seed=-1))],
     ["seed"]),
    ("ckpt-unpickles-code", lambda t, c, m: ["eval", str(torch_file(t / "e.pt", {"x": Evil()}))], ["refused"]),
    ("eval-bad-device", lambda t, c, m: ["eval", str(c), "--device", "tpu"], ["device", "'tpu'"]),
    # data
    ("data-missing", lambda t, c, m: ["train", SMOKE, "--set", "data.dataset=mnist", "--set", f"data.root={t}",
                                      "--set", "data.download=false"], ["MNIST", "train-images-idx3-ubyte"]),
    ("data-truncated", lambda t, c, m: ["train", SMOKE, *broken_mnist(t, m, lambda raw: truncate(
        raw / "train-images-idx3-ubyte", 5000))], ["train-images-idx3-ubyte", "truncated"]),
    ("data-short-header", lambda t, c, m: ["train", SMOKE, *broken_mnist(t, m, lambda raw: truncate(
        raw / "train-labels-idx1-ubyte", 6))], ["train-labels-idx1-ubyte", "truncated"]),
    ("data-magic", lambda t, c, m: ["train", SMOKE, *broken_mnist(t, m, lambda raw: write_idx(
        raw / "train-images-idx3-ubyte", torch.zeros(10, 28, 28, dtype=torch.uint8), magic=0x0901))],
     ["train-images-idx3-ubyte", "magic"]),
    ("data-count-mismatch", lambda t, c, m: ["train", SMOKE, *broken_mnist(t, m, lambda raw: write_idx(
        raw / "train-labels-idx1-ubyte", torch.zeros(10, dtype=torch.uint8)))], ["labels"]),
    ("data-val-too-big", lambda t, c, m: ["train", SMOKE, "--set", "data.val_size=6000"], ["data.val_size"]),
    # sweeps: every trial's config is checked before the first one runs
    ("sweep-missing", lambda t, c, m: ["sweep", str(t / "nope.yaml")], ["sweep file not found", "nope.yaml"]),
    ("sweep-empty", lambda t, c, m: ["sweep", sweep_file(t, "")], ["empty", "configs/sweep.yaml"]),
    ("sweep-bad-yaml", lambda t, c, m: ["sweep", sweep_file(t, "params: {train.lr: [}\n")],
     ["sweep.yaml", "not valid YAML", "line 1"]),
    ("sweep-list", lambda t, c, m: ["sweep", sweep_file(t, "- 1\n")], ["sweep.yaml", "mapping", "a list"]),
    ("sweep-unknown-top", lambda t, c, m: ["sweep", sweep_file(t, SWEEP + "param: 1\n")],
     ["sweep.yaml", "unknown key 'param'", "did you mean 'params'"]),
    ("sweep-unknown-param", lambda t, c, m: ["sweep", sweep_file(t, "base: base.yaml\nparams: {train.lrr: [1]}\n")],
     ["sweep.yaml", "params", "did you mean 'train.lr'"]),
    ("sweep-bad-value", lambda t, c, m: ["sweep", sweep_file(t, "base: base.yaml\nparams: {train.epochs: [1, ten]}\n")],
     ["sweep.yaml", "trial 2", "train.epochs", "'ten'"]),
    ("sweep-empty-list", lambda t, c, m: ["sweep", sweep_file(t, "base: base.yaml\nparams: {train.lr: []}\n")],
     ["train.lr", "empty"]),
    ("sweep-scalar", lambda t, c, m: ["sweep", sweep_file(t, "base: base.yaml\nparams: {train.lr: 0.1}\n")],
     ["train.lr", "expected a list"]),
    ("sweep-random-no-trials", lambda t, c, m: ["sweep", sweep_file(t, SWEEP + "method: random\n")],
     ["trials", "random"]),
    ("sweep-trials-for-grid", lambda t, c, m: ["sweep", sweep_file(t, SWEEP), "--trials", "3"],
     ["--trials 3", "grid"]),
    ("sweep-trials-zero", lambda t, c, m: ["sweep", sweep_file(t, SWEEP + "method: random\n"), "--trials", "0"],
     ["--trials", "0"]),
    ("sweep-base-missing", lambda t, c, m: ["sweep", sweep_file(t, "base: nope.yaml\nparams: {seed: [1]}\n")],
     ["base", "nope.yaml", "relative to the sweep file"]),
    ("sweep-base-invalid", lambda t, c, m: ["sweep", sweep_file(t, SWEEP, base="train: {lr: -1}\n")],
     ["base.yaml", "train.lr"]),
    ("sweep-and-resume", lambda t, c, m: ["sweep", sweep_file(t, SWEEP), "--resume", str(t)], ["not both"]),
    ("sweep-resume-no-sweep", lambda t, c, m: ["sweep", "--resume", str(t)], ["not a sweep folder", "sweep.json"]),
    ("runs-out-format", lambda t, c, m: ["runs", str(c.parent), "--out", str(t / "x.svg")], ["--out", "x.svg", ".png"]),
]  # fmt: skip


def _truncated(tmp: Path, good: Path) -> str:
    path = tmp / "cut.pt"
    path.write_bytes(good.read_bytes()[:3000])
    return str(path)


def _random_bytes(tmp: Path) -> str:
    path = tmp / "noise.pt"
    path.write_bytes(random.Random(1).randbytes(5000))
    return str(path)


def test_the_table_is_long_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize(("make_argv", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(make_argv, needles, tmp_path, checkpoint, mnist_root, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a refused pickle must not leave 'pwned' anywhere
    argv = make_argv(tmp_path, checkpoint, mnist_root)
    if argv[0] == "train" and "--resume" not in argv and "--run-dir" not in argv:
        argv += ["--run-dir", str(tmp_path / "run")]
    if argv[0] == "sweep" and "--resume" not in argv:
        argv += ["--dir", str(tmp_path / "run")]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlptrain: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "run" / "last.pt").exists()
    assert not (tmp_path / "run" / "sweep.json").exists()
