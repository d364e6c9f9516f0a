"""Shared test data: synthetic digits written out as MNIST-format IDX files, so nothing ever downloads.

Helpers are plain functions (`from conftest import write_idx`); datasets are session-scoped fixtures and
must be treated as read-only: a test that needs a broken dataset copies one into its own tmp_path.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlptrain.core.data import idx_bytes as mlptrain_idx_bytes
from mlptrain.core.synthetic import make_digits
from mlptrain.run.callbacks import Callbacks
from mlptrain.run.interrupt import StopRequest

IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# (n, seed) per split. The seeds differ so the test images are not the training images.
MNIST_SIZES = {"train": (3000, 11), "test": (500, 12)}
FASHION_SIZES = {"train": (600, 21), "test": (100, 22)}


def idx_bytes(tensor: torch.Tensor, magic: int | None = None) -> bytes:
    """mlptrain's IDX bytes for `tensor` (data.idx_bytes), with another magic number where a test wants one."""
    data = mlptrain_idx_bytes(tensor)
    return data if magic is None else magic.to_bytes(4, "big") + data[4:]


def write_idx(path: str | Path, tensor: torch.Tensor, magic: int | None = None) -> Path:
    """Write `tensor` (uint8, or integers in 0..255) as an IDX file, the format of MNIST's four files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(idx_bytes(tensor, magic))
    return path


def write_mnist_folder(raw: str | Path, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Path:
    """Write {'train': (images, labels), 'test': (images, labels)} as the four IDX files into `raw`."""
    raw = Path(raw)
    for split, (images, labels) in splits.items():
        write_idx(raw / IDX_NAMES[split, "images"], images)
        write_idx(raw / IDX_NAMES[split, "labels"], labels)
    return raw


def make_config_file(tmp_path: Path, text: str | bytes, name: str = "config.yaml") -> Path:
    """Write a config file (str as UTF-8, bytes as given) into tmp_path and return its path."""
    path = Path(tmp_path) / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def copy_dataset(root: Path, dest: Path) -> Path:
    """A private, writable copy of a dataset root (for tests that corrupt files)."""
    shutil.copytree(root, dest)
    return dest


@pytest.fixture(scope="session")
def mnist_digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The images (N, 28, 28) uint8 and labels (N,) int64 that `mnist_root` holds, per split."""
    return {split: make_digits(n, seed) for split, (n, seed) in MNIST_SIZES.items()}


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory, mnist_digits) -> Path:
    """A data root with MNIST/raw/ holding 3000 train and 500 test learnable synthetic digits (read-only)."""
    root = tmp_path_factory.mktemp("mnist-data")
    write_mnist_folder(root / "MNIST" / "raw", mnist_digits)
    return root


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory) -> Path:
    """A data root with FashionMNIST/raw/ holding 600 train and 100 test images (read-only)."""
    root = tmp_path_factory.mktemp("fashion-data")
    write_mnist_folder(
        root / "FashionMNIST" / "raw",
        {split: make_digits(n, seed) for split, (n, seed) in FASHION_SIZES.items()},
    )
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder from `mlptrain train configs/smoke.yaml` with 4 epochs (read-only: copy it to change it)."""
    from typer.testing import CliRunner

    from mlptrain.cli.main import app

    run_dir = tmp_path_factory.mktemp("trained") / "smoke"
    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    result = CliRunner().invoke(app, ["train", str(smoke), "--run-dir", str(run_dir), "--set", "train.epochs=4"])
    assert result.exit_code == 0, result.stdout + result.stderr
    return run_dir


def cli_in_fresh_python(*argvs: list[str], forbid: tuple[str, ...] = ("torch",)) -> subprocess.CompletedProcess:
    """Run `mlptrain ARGV...` for each argv in one new interpreter; each must exit 0 without importing `forbid`.

    For the commands that must answer at once: importing torch takes seconds.
    """
    code = (
        "import sys\n"
        "from mlptrain.cli.main import _run\n"  # not main(), which leaves with os._exit once torch is loaded
        f"for argv in {[list(map(str, a)) for a in argvs]!r}:\n"
        "    sys.argv = ['mlptrain', *argv]\n"
        "    assert _run() == 0, argv\n"
        f"loaded = [m for m in {list(forbid)!r} if m in sys.modules]\n"
        "assert not loaded, f'imported {loaded}'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out


class StopAt(Callbacks):
    """Asks for a stop at (epoch, batch); batch 0 means right after that epoch finished."""

    def __init__(self, stop: StopRequest, epoch: int, batch: int):
        self.stop, self.at, self.epoch = stop, (epoch, batch), 0

    def epoch_started(self, epoch, epochs, steps, done):
        self.epoch = epoch

    def batch_done(self, step):
        if (self.epoch, step) == self.at:
            self.stop.request(signal.SIGINT)

    def epoch_done(self, stats, is_best):
        if (stats.epoch, 0) == self.at:
            self.stop.request(signal.SIGTERM)


def write_letters(root: str | Path, per_class: int, test_per_class: int = 0, seed: int = 0) -> Path:
    """A `folder` dataset of drawn letters a, b and c (black on white, 48×48 PNGs), each at its own size, place and
    grey with speckle noise, so that it is learnable but not identical: <root>/train/<letter>/ and test/<letter>/."""
    import random

    from PIL import Image, ImageDraw, ImageFont

    root, rng = Path(root), random.Random(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for letter in "abc":
            folder = root / split / letter
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = Image.new("L", (48, 48), 255)
                draw = ImageDraw.Draw(image)
                font = ImageFont.load_default(size=rng.randint(22, 32))
                draw.text((rng.randint(4, 18), rng.randint(0, 10)), letter, fill=rng.randint(0, 80), font=font)
                for _ in range(20):
                    image.putpixel((rng.randrange(48), rng.randrange(48)), rng.randint(170, 255))
                image.save(folder / f"{letter}{i:03d}.png")
    return root
