"""Every kind of bad input, through the CLI: exit 2, one line on stderr that names the problem, no traceback."""

from __future__ import annotations

import collections
import io
import os
import random
import struct
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from conftest import copy_dataset, write_idx
from typer.testing import CliRunner

from mlptrain.cli.main import app

REPO = Path(__file__).resolve().parents[2]
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


def edited_run(tmp: Path, good: Path, edit) -> str:
    """`good` edited, as the last.pt of a run folder: what --resume continues (it refuses any other checkpoint)."""
    ckpt = torch.load(good, weights_only=True)
    edit(ckpt)
    (tmp / "edited").mkdir()
    return str(torch_file(tmp / "edited" / "last.pt", ckpt))


def run_with_file_for_tensorboard(tmp: Path, good: Path) -> str:
    """`good`'s run as one that logs to TensorBoard, whose tensorboard/ is a file (a stray `> RUN/tensorboard`)."""
    run = Path(edited_run(tmp, good, lambda ckpt: ckpt["config"]["output"].update(tensorboard=True))).parent
    (run / "tensorboard").write_text("x")
    return str(run)


def lone_copy(tmp: Path, good: Path) -> str:
    """A run's checkpoint copied out of its run folder, alone."""
    (tmp / "x").mkdir()
    (tmp / "x" / "model.pt").write_bytes(good.read_bytes())
    return str(tmp / "x" / "model.pt")


def broken_mnist(tmp: Path, mnist_root: Path, breaker) -> list[str]:
    root = copy_dataset(mnist_root, tmp / "data")
    breaker(root / "MNIST" / "raw")
    return ["--set", "data.dataset=mnist", "--set", f"data.root={root}", "--set", "data.download=false",
            "--set", "data.val_size=500"]  # fmt: skip


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def wrong_sizes(ckpt: dict) -> None:
    ckpt["model"]["layers.0.weight"] = torch.zeros(7, 784)


def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes of YAML that expand to 9**levels strings: each level lists the one before nine times."""
    items = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def fifo(tmp: Path, name: str) -> str:
    """A named pipe: opening it for reading blocks until someone writes, which nobody will."""
    path = tmp / name
    os.mkfifo(path)
    return str(path)


def digit_png(tmp: Path) -> str:
    from PIL import Image

    path = tmp / "digit.png"
    Image.new("L", (28, 28)).save(path)
    return str(path)


def link_loop(tmp: Path, name: str) -> str:
    """A symbolic link that names itself."""
    path = tmp / name
    path.symlink_to(path)
    return str(path)


def zip_bomb(tmp: Path) -> str:
    """A small file whose one part unpacks to 50 MB (torch.save stores its parts uncompressed)."""
    path = tmp / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", bytes(50_000_000))
    return str(path)


def huge_png(tmp: Path, side: int = 10_000) -> str:
    """A PNG whose header claims side×side pixels, over PIL's decompression-bomb limit; no pixel data follows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path = tmp / "huge.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return str(path)


def run_folder(tmp: Path, good: Path, metrics: str | None = None, config: str | None = None) -> str:
    """A copy of the good run's folder with metrics.csv and/or config.yaml replaced."""
    folder = tmp / "copied-run"
    folder.mkdir()
    (folder / "config.yaml").write_text(config if config is not None else (good.parent / "config.yaml").read_text())
    (folder / "metrics.csv").write_text(metrics if metrics is not None else (good.parent / "metrics.csv").read_text())
    return str(folder)


def metrics_fifo(tmp: Path, good: Path) -> str:
    folder = Path(run_folder(tmp, good))
    (folder / "metrics.csv").unlink()
    fifo(folder, "metrics.csv")
    return str(folder)


HEADER = "epoch,train_loss,train_acc,val_loss,val_acc,lr,train_seconds,val_seconds,samples_per_second\n"


def set_progress(order: torch.Tensor):
    """An edit that makes a checkpoint one stopped inside epoch 2 of 2, with `order` as the epoch's data order."""

    def edit(ckpt: dict) -> None:
        ckpt["config"]["train"]["epochs"] = 2
        ckpt["progress"] = {"epoch": 2, "order": order, "step": 0, "loss_sum": torch.zeros(()),
                            "correct": torch.zeros((), dtype=torch.int64), "lr": 0.1, "seconds": 0.0}  # fmt: skip

    return edit


def set_entry(*keys_and_value):
    """An edit that sets ckpt[k1][k2]... = value."""
    *keys, last, value = keys_and_value

    def edit(ckpt: dict) -> None:
        node = ckpt
        for key in keys:
            node = node[key]
        node[last] = value

    return edit


def nan_weight(ckpt: dict) -> None:
    ckpt["model"]["layers.0.weight"][0, 0] = float("nan")


def grid_of(keys: int, values: int) -> str:
    listed = ", ".join(str(v) for v in range(1, values + 1))
    names = ["seed", "train.epochs", "train.batch_size", "data.val_size", "data.synthetic_size"][:keys]
    return "base: base.yaml\nparams:\n" + "".join(f"  {name}: [{listed}]\n" for name in names)


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
    ("resume-best-pt", lambda t, c, m: ["train", "--resume", str(c)], ["best.pt", "continues from", "last.pt"]),
    ("resume-tensorboard-file", lambda t, c, m: ["train", "--resume", run_with_file_for_tensorboard(t, c), "--set",
                                                 "train.epochs=2"],
     ["tensorboard", "not a folder", "output.tensorboard: false"]),
    ("resume-lone-checkpoint", lambda t, c, m: ["train", "--resume", lone_copy(t, c)],
     ["model.pt", "no last.pt beside it", "start a new run"]),
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
    # the dry run counts the images and refuses what the run would
    ("dry-run-val-too-big", lambda t, c, m: ["train", SMOKE, "--dry-run", "--set", "data.val_size=100000"],
     ["data.val_size", "100000", "6000"]),
    ("dry-run-val-too-big-mnist", lambda t, c, m: ["train", SMOKE, "--dry-run", "--set", "data.dataset=mnist",
                                                   "--set", f"data.root={m}", "--set", "data.val_size=3000"],
     ["data.val_size", "3000 training images"]),
    ("dry-run-data-truncated", lambda t, c, m: ["train", SMOKE, "--dry-run", *broken_mnist(t, m, lambda raw: truncate(
        raw / "train-images-idx3-ubyte", 5000))], ["train-images-idx3-ubyte", "truncated"]),
    ("dry-run-count-mismatch", lambda t, c, m: ["train", SMOKE, "--dry-run", *broken_mnist(t, m, lambda raw: write_idx(
        raw / "train-labels-idx1-ubyte", torch.zeros(10, dtype=torch.uint8)))], ["labels"]),
    ("val-fraction-one", lambda t, c, m: ["train", SMOKE, "--set", "data.val_size=1.0"],
     ["data.val_size", "fraction", "(0, 1)"]),
    # sweeps: every trial's config is checked before the first one runs
    ("sweep-missing", lambda t, c, m: ["sweep", str(t / "nope.yaml")], ["sweep file not found", "nope.yaml"]),
    ("sweep-empty", lambda t, c, m: ["sweep", sweep_file(t, "")], ["empty", "recipes/sweep.yaml"]),
    ("sweep-bad-yaml", lambda t, c, m: ["sweep", sweep_file(t, "params: {train.lr: [}\n")],
     ["sweep.yaml", "not valid YAML", "line 1"]),
    ("sweep-list", lambda t, c, m: ["sweep", sweep_file(t, "- 1\n")], ["sweep.yaml", "mapping", "a list"]),
    ("sweep-unknown-top", lambda t, c, m: ["sweep", sweep_file(t, SWEEP + "param: 1\n")],
     ["sweep.yaml", "unknown key 'param'", "did you mean 'params'"]),
    ("sweep-unknown-param", lambda t, c, m: ["sweep", sweep_file(t, "base: base.yaml\nparams: {train.lrr: [1]}\n")],
     ["sweep.yaml", "params", "did you mean 'train.lr'"]),
    ("sweep-bad-value", lambda t, c, m: ["sweep", sweep_file(t, "base: base.yaml\nparams: {train.epochs: [1, ten]}\n")],
     ["sweep.yaml", "combination 2", "train.epochs", "'ten'"]),
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
    # hostile files and values: refused at once, in bounded time and memory, in one line of bounded length
    ("config-alias-bomb", lambda t, c, m: ["train", config_file(t, f"name: {alias_bomb()}\n")],
     ["bad.yaml", "refused", "aliases"]),
    ("config-alias-loop", lambda t, c, m: ["train", config_file(t, "name: &a [*a]\n")],
     ["bad.yaml", "refers to a value that contains it"]),
    ("config-deep-nesting", lambda t, c, m: ["train", config_file(t, "name: " + "[" * 20000 + "]" * 20000 + "\n")],
     ["bad.yaml", "nested more than"]),
    ("config-deep-blocks", lambda t, c, m: ["train", config_file(t, "".join("  " * i + "a:\n" for i in range(500)))],
     ["bad.yaml", "nested more than"]),
    ("config-too-large", lambda t, c, m: ["train", config_file(t, "model:\n  hidden: [" + "1, " * 6_000_000 + "1]\n")],
     ["bad.yaml", "refused", "bytes"]),
    ("config-fifo", lambda t, c, m: ["train", fifo(t, "pipe.yaml")], ["pipe.yaml", "not a regular file"]),
    ("config-many-layers", lambda t, c, m: ["train", config_file(t, "model: {hidden: [" + "8, " * 1000 + "8]}\n")],
     ["model.hidden", "at most 1000 layers"]),
    ("config-huge-value", lambda t, c, m: ["train", config_file(t, "name: " + "x" * 200_000 + "/\n")],
     ["name", "not usable in a folder name"]),
    ("set-huge-model", lambda t, c, m: ["train", SMOKE, "--set", "model.hidden=[100000000]"],
     ["model.hidden", "parameters", "GiB", "more than the cpu has"]),
    ("set-huge-dataset", lambda t, c, m: ["train", SMOKE, "--set", "data.synthetic_size=1000000000000"],
     ["data.synthetic_size", "GiB"]),
    ("set-threads", lambda t, c, m: ["train", SMOKE, "--set", "threads=100000"], ["threads", "100000", "cores"]),
    ("set-alias-bomb", lambda t, c, m: ["train", SMOKE, "--set", f"name={alias_bomb()}"],
     ["--set name=", "refused", "aliases"]),
    ("set-long-value", lambda t, c, m: ["train", SMOKE, "--set", "train.optimizer=" + "x" * 100_000],
     ["--set train.optimizer=", "train.optimizer"]),
    ("ckpt-fifo", lambda t, c, m: ["eval", fifo(t, "pipe.pt")], ["pipe.pt", "not a regular file"]),
    ("ckpt-zip-bomb", lambda t, c, m: ["eval", zip_bomb(t)], ["bomb.pt", "refused", "unpack to 50,000,"]),
    ("ckpt-std-zero", lambda t, c, m: ["eval", edited_checkpoint(t, c, set_entry("data", "std", 0.0))],
     ["data.std", "above 0"]),
    ("ckpt-nan-mean", lambda t, c, m: ["eval", edited_checkpoint(t, c, set_entry("data", "mean", float("nan")))],
     ["data.mean", "finite"]),
    ("ckpt-nan-weights", lambda t, c, m: ["eval", edited_checkpoint(t, c, nan_weight)],
     ["layers.0.weight", "not finite"]),
    ("ckpt-bad-history", lambda t, c, m: ["eval", edited_checkpoint(t, c, lambda k: k["history"][0].update(lr="x"))],
     ["history[0]", "number"]),
    ("ckpt-bad-optimizer-state", lambda t, c, m: ["eval", edited_checkpoint(
        t, c, set_entry("optimizer", "state", 0, "momentum_buffer", torch.zeros(3)))],
     ["optimizer.state", "momentum_buffer", "one per parameter"]),
    ("ckpt-bad-optimizer-lr", lambda t, c, m: ["eval", edited_checkpoint(
        t, c, set_entry("optimizer", "param_groups", 0, "lr", "fast"))], ["optimizer.param_groups.lr", "'fast'"]),
    ("ckpt-bad-weight-decay", lambda t, c, m: ["eval", edited_checkpoint(
        t, c, set_entry("optimizer", "param_groups", 0, "weight_decay", -1e154))],
     ["optimizer.param_groups.weight_decay", "train.weight_decay (0.0)"]),
    ("ckpt-bad-rng", lambda t, c, m: ["eval", edited_checkpoint(t, c, set_entry("rng", "torch", torch.zeros(3)))],
     ["rng.torch", "not a generator state"]),
    ("ckpt-bad-scheduler", lambda t, c, m: ["eval", edited_checkpoint(t, c, set_entry("scheduler", "last_epoch", "x"))],
     ["scheduler.last_epoch"]),
    ("resume-order-not-permutation", lambda t, c, m: ["train", "--resume", edited_run(
        t, c, set_progress(torch.zeros(5000, dtype=torch.int64)))], ["progress.order", "permutation"]),
    ("resume-order-wrong-length", lambda t, c, m: ["train", "--resume", edited_run(
        t, c, set_progress(torch.arange(10)))], ["progress.order", "orders 10 images", "5000"]),
    ("resume-scheduler-ahead", lambda t, c, m: ["train", "--resume", edited_run(
        t, c, set_entry("scheduler", "last_epoch", 10**6)), "--set", "train.epochs=2"], ["scheduler", "1000000"]),
    ("data-no-images", lambda t, c, m: ["train", SMOKE, *broken_mnist(t, m, lambda raw: (
        write_idx(raw / "train-images-idx3-ubyte", torch.zeros(0, 28, 28, dtype=torch.uint8)),
        write_idx(raw / "train-labels-idx1-ubyte", torch.zeros(0, dtype=torch.uint8))))],
     ["train-images-idx3-ubyte", "holds 0 images"]),
    ("data-no-pixels", lambda t, c, m: ["train", SMOKE, *broken_mnist(t, m, lambda raw: write_idx(
        raw / "train-images-idx3-ubyte", torch.zeros(3000, 0, 0, dtype=torch.uint8)))],
     ["train-images-idx3-ubyte", "0×0 pixels"]),
    ("data-fifo", lambda t, c, m: ["train", SMOKE, *broken_mnist(t, m, lambda raw: (
        (raw / "t10k-labels-idx1-ubyte").unlink(), fifo(raw, "t10k-labels-idx1-ubyte")))],
     ["t10k-labels-idx1-ubyte", "not a regular file"]),
    ("predict-fifo", lambda t, c, m: ["predict", str(c), fifo(t, "digit.png")],
     ["digit.png", "not a regular file", "not an image file"]),
    ("predict-pixel-bomb", lambda t, c, m: ["predict", str(c), huge_png(t)], ["huge.png", "refused", "exceeds limit"]),
    ("plot-missing-columns", lambda t, c, m: ["plot", run_folder(t, c, metrics="epoch,train_loss\n1,0.5\n")],
     ["metrics.csv", "no column train_acc"]),
    ("plot-nan-rows", lambda t, c, m: ["plot", run_folder(t, c, metrics=HEADER + "1,0.5,0.5,0.5,0.5,nan,1,1,1\n")],
     ["no finished epoch", "line 2"]),
    ("plot-metrics-fifo", lambda t, c, m: ["plot", metrics_fifo(t, c)], ["metrics.csv", "not a regular file"]),
    ("runs-config-bomb", lambda t, c, m: ["runs", run_folder(t, c, config=f"name: {alias_bomb()}\n")],
     ["config.yaml", "refused", "aliases"]),
    ("sweep-fifo", lambda t, c, m: ["sweep", fifo(t, "sweep.yaml")], ["sweep.yaml", "not a regular file"]),
    ("sweep-alias-bomb", lambda t, c, m: ["sweep", sweep_file(t, f"base: base.yaml\nparams: {{seed: {alias_bomb()}}}")],
     ["sweep.yaml", "refused", "aliases"]),
    ("sweep-huge-trials", lambda t, c, m: ["sweep", sweep_file(t, SWEEP + "method: random\ntrials: 1000000000000\n")],
     ["sweep.yaml", "trials", "more than a sweep may run"]),
    ("sweep-huge-trials-option", lambda t, c, m: ["sweep", sweep_file(t, SWEEP + "method: random\n"), "--trials",
                                                  "1000000000000"], ["--trials", "more than a sweep may run"]),
    ("sweep-huge-grid", lambda t, c, m: ["sweep", sweep_file(t, grid_of(5, 100))],
     ["sweep.yaml", "10,000,000,000 combinations"]),
    ("sweep-workers-zero", lambda t, c, m: ["sweep", sweep_file(t, SWEEP), "--workers", "0"], ["--workers 0"]),
    ("sweep-workers-huge", lambda t, c, m: ["sweep", sweep_file(t, SWEEP), "--workers", "10000"],
     ["--workers 10000", "[1, 64]"]),
    ("sweep-timeout-zero", lambda t, c, m: ["sweep", sweep_file(t, SWEEP), "--timeout", "0"],
     ["--timeout 0", "above 0"]),
    ("sweep-timeout-huge", lambda t, c, m: ["sweep", sweep_file(t, SWEEP), "--timeout", "1e12"],
     ["--timeout 1e+12", "at most 2,592,000 seconds"]),
    ("sweep-timeout-nan", lambda t, c, m: ["sweep", sweep_file(t, SWEEP), "--timeout", "nan"], ["--timeout nan"]),
    ("sweep-join-dir", lambda t, c, m: ["sweep", "--join", str(t), "--dir", str(t / "x")],
     ["--join SWEEP_DIR", "--dir does not apply"]),
    ("sweep-join-url-password", lambda t, c, m: ["sweep", "--join", f"sqlite:///{t}/no.db?password=SECRETPW"],
     ["?password=***", "no such database file"]),
    ("sweep-storage-password", lambda t, c, m: ["sweep", sweep_file(t, SWEEP), "--storage",
                                                "postgresql://u@127.0.0.1:1/db?password=SECRETPW"],
     ["cannot open the study at postgresql://u@127.0.0.1:1/db?password=***"]),
    ("data-one-value", lambda t, c, m: ["train", SMOKE, *broken_mnist(t, m, lambda raw: write_idx(
        raw / "train-images-idx3-ubyte", torch.full((3000, 28, 28), 128, dtype=torch.uint8)))],
     ["mnist", "all one value", "std 0"]),
    ("ckpt-huge-mean", lambda t, c, m: ["eval", edited_checkpoint(t, c, set_entry("data", "mean", 1e30))],
     ["data.mean", "[0, 1]", "1e+30"]),
    ("ckpt-tiny-std", lambda t, c, m: ["eval", edited_checkpoint(t, c, set_entry("data", "std", 1e-30))],
     ["data.std", "1e-30"]),
    ("predict-empty-folder", lambda t, c, m: ["predict", str(c), str(Path(t, "empty").mkdir() or t / "empty")],
     ["no image files to classify", "empty: no image files in it"]),
    ("predict-image-loop", lambda t, c, m: ["predict", str(c), link_loop(t, "d.png")], ["d.png", "loop"]),
    ("plot-run-loop", lambda t, c, m: ["plot", link_loop(t, "run")], ["run", "loop of symbolic links"]),
    ("runs-folder-loop", lambda t, c, m: ["runs", link_loop(t, "runs")], ["runs", "loop of symbolic links"]),
    ("config-keys-set", lambda t, c, m: ["config", "--keys", "--set", "x=1"], ["--keys", "no CONFIG or --set"]),
    # bounds: every number is checked before any work, by every command that takes a config
    ("set-huge-epochs", lambda t, c, m: ["train", SMOKE, "--set", f"train.epochs={10**30}"],
     ["--set train.epochs=", "at most 100,000"]),
    ("augment-huge-elastic-sigma", lambda t, c, m: ["augment", SMOKE, "--set", "data.augment.kind=elastic", "--set",
                                                    "data.augment.elastic_sigma=1e9"],
     ["data.augment.elastic_sigma", "at most 28"]),
    ("lr-find-huge-model", lambda t, c, m: ["lr-find", SMOKE, "--set", "model.hidden=[100000000]", "--out",
                                            str(t / "lr.png")], ["model.hidden", "GiB", "more than the cpu has"]),
    # outputs: written whole through a temp file and a rename, which would replace a FIFO or a device
    ("export-out-fifo", lambda t, c, m: ["export", str(c), fifo(t, "m.onnx")], ["OUT", "m.onnx", "not a regular"]),
    ("export-out-folder", lambda t, c, m: ["export", str(c), str(Path(t, "d.onnx").mkdir() or t / "d.onnx")],
     ["OUT", "d.onnx", "is a folder"]),
    ("plot-out-fifo", lambda t, c, m: ["plot", str(c.parent), "--out", fifo(t, "c.png")], ["--out", "c.png", "not a"]),
    ("runs-out-fifo", lambda t, c, m: ["runs", str(c.parent.parent), "--out", fifo(t, "r.png")],
     ["--out", "r.png", "not a regular file"]),
    ("eval-errors-fifo", lambda t, c, m: ["eval", str(c), "--errors", fifo(t, "e.png")],
     ["--errors", "e.png", "not a regular file"]),
    ("predict-csv-fifo", lambda t, c, m: ["predict", str(c), digit_png(t), "--csv", fifo(t, "p.csv")],
     ["--csv", "p.csv", "not a regular file"]),
    ("predict-csv-folder", lambda t, c, m: ["predict", str(c), digit_png(t), "--csv", str(t)],
     ["--csv", "is a folder"]),
    ("lr-find-out-fifo", lambda t, c, m: ["lr-find", SMOKE, "--out", fifo(t, "lr.png")],
     ["--out", "lr.png", "not a regular file"]),
    ("augment-out-fifo", lambda t, c, m: ["augment", SMOKE, "--out", fifo(t, "a.png")],
     ["--out", "a.png", "not a regular file"]),
    ("augment-out-loop", lambda t, c, m: ["augment", SMOKE, "--out", link_loop(t, "a.png")],
     ["--out", "a.png", "loop of symbolic links"]),
    # export --batch 10**12 traced and checked a padded batch of 10**12 images
    ("export-huge-batch", lambda t, c, m: ["export", str(c), str(t / "m.pt2"), "--batch", "1000000000000"],
     ["--batch 1000000000000", "at most 16,777,216"]),
    ("export-batch-over-memory", lambda t, c, m: ["export", str(c), str(t / "m.pt2"), "--batch", "16777216"],
     ["--batch 16,777,216", "GiB", "more than the cpu has", "smaller N"]),
]  # fmt: skip

# Refused in well under this many seconds: each of these once took a minute or more, or never finished.
QUICK = {"config-alias-bomb": 10, "set-alias-bomb": 10, "runs-config-bomb": 10, "sweep-alias-bomb": 10,
         "config-deep-nesting": 10, "config-too-large": 10, "config-fifo": 10, "ckpt-zip-bomb": 10,
         "set-huge-model": 30, "sweep-huge-trials": 10, "sweep-huge-grid": 10, "ckpt-fifo": 10, "predict-fifo": 30,
         "sweep-fifo": 10, "plot-metrics-fifo": 10, "export-out-folder": 10, "lr-find-huge-model": 30,
         "export-huge-batch": 30, "export-batch-over-memory": 30}  # fmt: skip


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


@pytest.mark.parametrize(("case", "make_argv", "needles"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, make_argv, needles, tmp_path, checkpoint, mnist_root, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a refused pickle must not leave 'pwned' anywhere
    argv = make_argv(tmp_path, checkpoint, mnist_root)
    if argv[0] == "train" and "--resume" not in argv and "--run-dir" not in argv:
        argv += ["--run-dir", str(tmp_path / "run")]
    if argv[0] == "sweep" and "--resume" not in argv:
        argv += ["--dir", str(tmp_path / "run")]
    started = time.perf_counter()
    result = CliRunner().invoke(app, argv)
    seconds = time.perf_counter() - started
    assert result.exit_code == 2, (result.exit_code, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlptrain: error: "), result.stderr[-2000:]
    assert len(lines[0]) <= 1100, len(lines[0])  # a huge value is quoted in part, never whole
    assert seconds < QUICK.get(case, 600), f"{case} took {seconds:.1f} s"
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "run" / "last.pt").exists()
    assert not (tmp_path / "run" / "sweep.json").exists()


def mangled(good: bytes, rng: random.Random) -> bytes:
    """`good` (a checkpoint: a torch zip) with 1 to 4 bytes of its pickle, data.pkl, replaced, zipped again."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = bytearray(source.read(info.filename))
            if info.filename.endswith("/data.pkl"):
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            target.writestr(info, bytes(data))
    return out.getvalue()


FUZZ = {"eval": 100, "resume": 50}  # mutants per command: about 15 s in all on a laptop's CPU


@pytest.mark.parametrize("command", list(FUZZ))
def test_mangled_checkpoints_are_used_or_refused(command, checkpoint, tmp_path):
    """Fixed-seed mutants of a real checkpoint, and (one in five) random files: each is used (exit 0) or refused
    in one line (exit 2); never 'the run failed' (exit 1) or a traceback."""
    rng = random.Random(f"fuzz-{command}")
    good = (checkpoint.parent / "last.pt").read_bytes()
    outcomes = collections.Counter()
    for k in range(FUZZ[command]):
        folder = tmp_path / f"m{k}"
        folder.mkdir()
        path = folder / "last.pt"
        path.write_bytes(rng.randbytes(rng.randrange(1, 5000)) if k % 5 == 0 else mangled(good, rng))
        if command == "eval":
            argv = ["eval", str(path), "--device", "cpu"]
        else:
            argv = ["train", "--resume", str(folder), "--set", "train.epochs=2", "-q"]
        result = CliRunner().invoke(app, argv)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code in (0, 2), (k, result.exit_code, result.stderr[-2000:])
        assert result.exit_code == 0 or len(lines) == 1, (k, result.stderr[-2000:])
        assert "Traceback" not in result.stdout + result.stderr, k
        outcomes[result.exit_code] += 1
    assert outcomes[2] >= FUZZ[command] // 2, outcomes  # most mutants break something that is checked
