"""Datasets as normalised device tensors: MNIST and Fashion-MNIST (downloaded by torchvision, read here),
synthetic digits, or a folder of image files in class folders (core/folder.py).

Each split is read once, moved to the training device as uint8, and converted there; batches are slices of
a per-epoch device permutation, so the hot loop touches no Python per sample and no DataLoader.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import math
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from mlptrain.base.config import DataConfig
from mlptrain.base.errors import DataError, DataMissing
from mlptrain.base.files import atomic_write, file_problem, make_dirs
from mlptrain.core import folder as image_folder

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NUM_CLASSES = 10  # of MNIST, Fashion-MNIST and synthetic digits; a folder dataset has one per class folder
# Every dataset here is MNIST-shaped: 28×28 images. A model's input size comes from its data (TrainingData's
# in_features); this is for sizing work before any data is loaded.
IN_FEATURES = 28 * 28
# The least pixel std (pixels in [0, 1]) a checkpoint may hold: one pixel differing by one step over all of
# MNIST gives about 6e-7; less, and normalising by it blows the inputs up past what float32 keeps.
MIN_STD = 1e-7
# Rows per forward pass when evaluating. Fixed, so validation during training and `mlptrain eval` run the very
# same computation and agree to the last digit.
EVAL_BATCH_SIZE = 8192
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
# torchvision.datasets.FashionMNIST.classes (tests/core/test_data.py checks), without importing torchvision
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_SYNTHETIC_SEEDS = {"train": 1, "test": 2}  # fixed: the synthetic dataset, like MNIST, does not change with seed


@dataclass
class Split:
    """One split on the device: x (N, in_features) float32 normalised, y (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor
    notes: list[str] = field(default_factory=list)  # warnings from reading it: files passed over

    def __len__(self) -> int:
        return self.y.shape[0]


@dataclass
class TrainingData:
    train: Split
    val: Split
    mean: float  # of the training split's pixels in [0, 1]; the checkpoint keeps both
    std: float
    classes: list[str] = field(default_factory=lambda: class_names("mnist"))  # what each label means
    notes: list[str] = field(default_factory=list)  # warnings from reading it, for the run to report

    @property
    def in_features(self) -> int:
        return self.train.x.shape[1]


def load_training_data(
    cfg: DataConfig, seed: int, device: torch.device, stats: tuple[float, float] | None = None
) -> TrainingData:
    """The training split minus its held-out images (data.val_size, a seeded choice), normalised by its own
    statistics, or by `stats` (mean, std) where given: a resumed run normalises exactly as its checkpoint records."""
    read = read_split(cfg, train=True)
    images, labels = read.images, read.labels
    train_idx, val_idx = split_indices(len(labels), val_count(cfg, len(labels)), seed, cfg.dataset)
    train_images = images[train_idx].to(device)
    mean, std = stats or pixel_stats(train_images)
    if std == 0:  # exactly: pixel_stats counts the bytes (float32 sums said 6e-8, not 0)
        raise DataError(
            f"{cfg.dataset} in {cfg.root}: the training images are all one value (pixel std 0): there is nothing "
            "to learn, and normalising would divide by 0"
        )
    return TrainingData(
        train=Split(normalize(train_images, mean, std), labels[train_idx].to(device)),
        val=Split(normalize(images[val_idx].to(device), mean, std), labels[val_idx].to(device)),
        mean=mean,
        std=std,
        classes=read.classes,
        notes=read.notes,
    )


def load_eval_split(
    cfg: DataConfig,
    split: str,
    seed: int,
    mean: float,
    std: float,
    device: torch.device,
    classes: list[str] | None = None,
) -> Split:
    """The test split, or the validation images held out in training (same seed, same choice). `classes`: what
    the model's outputs mean (its checkpoint's), which a folder dataset's labels are matched to by name."""
    if split == "test" and cfg.dataset == "folder" and not image_folder.has_test(Path(cfg.root)):
        raise DataMissing(
            f"{Path(cfg.root) / 'test'}: not there, so this folder dataset has no test split; "
            "score the images its run held out with --split val"
        )
    read = read_split(cfg, train=split != "test", classes=classes)
    images, labels = read.images, read.labels
    if split != "test":
        if classes is not None and read.classes != classes:
            raise DataError(f"{cfg.root}: its classes ({', '.join(read.classes)}) are not the model's "
                            f"({', '.join(classes)})")  # fmt: skip
        _, val_idx = split_indices(len(labels), val_count(cfg, len(labels)), seed, cfg.dataset)
        images, labels = images[val_idx], labels[val_idx]
    return Split(normalize(images.to(device), mean, std), labels.to(device), read.notes)


def pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """(mean, std, unbiased) of uint8 images' pixels scaled to [0, 1], exactly: from a count of each byte value.

    Not float sums, which torch splits between threads: their last bit changed with the thread count (0.14173229
    at 1, 0.14173228 at 2), and with it every weight of a run. Integer counts add up the same in any order.
    """
    counts = torch.bincount(images.reshape(-1), minlength=256).tolist()  # (256,) pixels of each value
    n = sum(counts)
    s1 = sum(v * c for v, c in enumerate(counts))
    s2 = sum(v * v * c for v, c in enumerate(counts))
    variance = (n * s2 - s1 * s1) / (n * (n - 1)) if n > 1 else math.nan  # Python's exact integers until here
    return s1 / n / 255, math.sqrt(variance) / 255


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, H*W), scaled to [0, 1] and standardised."""
    return images.reshape(images.shape[0], -1).float().div_(255).sub_(mean).div_(std)


def val_count(cfg: DataConfig, n: int) -> int:
    """How many of the `n` training images data.val_size holds out: a count as given, a fraction of `n` rounded
    (at least 1). It depends on `n` alone, so a resumed run holds out the same images; refused unless at least
    one image is left to train on. The one check of data.val_size against the data (the dry run calls it too)."""
    size = cfg.val_size
    count = max(1, round(size * n)) if isinstance(size, float) else size
    if count >= n:
        given = f"{size} of {n} images is {count}" if isinstance(size, float) else str(size)
        raise DataError(f"data.val_size ({given}) must be smaller than the {n} training images of {cfg.dataset}")
    return count


def split_indices(n: int, val_size: int, seed: int, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into the training split (`val_size` from val_count). Drawn on the CPU so every device
    holds out the same images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The data order of an epoch: a permutation drawn on the device that depends on (seed, epoch) only."""
    generator = torch.Generator(device=device).manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, device=device, generator=generator)


def batches(
    split: Split, order: torch.Tensor, batch_size: int, start_step: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches in `order`, from batch `start_step` on: one device-side gather, then views.

    The last batch may be short. `order` may hold part of the split (one process's share, see shard_order).
    """
    x, y = split.x[order], split.y[order]
    for start in range(start_step * batch_size, len(order), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def trained_samples(n: int, world_size: int = 1) -> int:
    """How many of the `n` training images an epoch trains on: all in one process.

    Over several processes, every global batch (the short last one too) must split into equal shards, or the
    averaged gradient would weight some images more than others; so the last n % world_size images of each
    epoch's permutation (at most world_size - 1, different ones every epoch) sit the epoch out.
    """
    return n - n % world_size


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    return math.ceil(trained_samples(n, world_size) / batch_size)


def shard_order(order: torch.Tensor, batch_size: int, rank: int, world_size: int) -> tuple[torch.Tensor, int]:
    """(rank's part of `order`, its batch size): batch s of it is the rank-th contiguous slice of global batch s.

    `batches(split, part, batch_size // world_size)` then yields, step by step, this process's equal share of
    each global batch of `order`, the short last one included (see trained_samples). One process: `order` as is.
    """
    if world_size == 1:
        return order, batch_size
    n = trained_samples(len(order), world_size)
    local = batch_size // world_size
    full = n // batch_size * batch_size  # images in full global batches
    head = order[:full].view(-1, world_size, local)[:, rank]  # (full batches, local)
    tail = order[full:n].view(world_size, (n - full) // world_size)[rank]  # the short last batch's share
    return torch.cat([head.reshape(-1), tail]), local


@dataclass
class Images:
    """One split as read, on the CPU: images uint8 (N, H, W), labels int64 (N,), what each label means, and
    warnings about files passed over."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    notes: list[str]


def read_split(cfg: DataConfig, train: bool, classes: list[str] | None = None) -> Images:
    """One split with its classes: a folder dataset's are its class folders (or `classes`, matched by name)."""
    if cfg.dataset == "folder":
        got = image_folder.load_split(Path(cfg.root), "train" if train else "test", classes)
        return Images(got.images, got.labels, got.classes, got.notes())
    return Images(*load_images(cfg, train), class_names(cfg.dataset), [])


def dataset_classes(cfg: DataConfig) -> list[str]:
    """What each label of cfg's dataset means, without reading its images (a folder's: its class folders)."""
    return image_folder.train_classes(Path(cfg.root)) if cfg.dataset == "folder" else class_names(cfg.dataset)


def load_images(cfg: DataConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as CPU tensors: images uint8 (N, H, W), labels int64 (N,)."""
    if cfg.dataset == "folder":
        got = read_split(cfg, train)
        return got.images, got.labels
    if cfg.dataset == "synthetic":
        n = cfg.synthetic_size if train else max(1, cfg.synthetic_size // 6)
        images, labels = _rendered_digits(n, _SYNTHETIC_SEEDS["train" if train else "test"])
        return images.clone(), labels.clone()  # the caller's own: nothing it does reaches the next caller
    return _load_idx_files(cfg, train)


@functools.lru_cache(maxsize=4)
def _rendered_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic digits, rendered once per process for each (count, seed), which is all that determines them: a
    sweep's trials (one worker, one process) render them once rather than once a trial (0.1 s at 6,000 images).
    Read only: load_images hands out copies."""
    from mlptrain.core.synthetic import make_digits

    return make_digits(n, seed=seed)


def raw_folder(cfg: DataConfig) -> Path:
    """Where the four IDX files of cfg.dataset are: data.root itself where it holds any of them (or is named like
    torchvision's raw folder, <Class>/raw), else where torchvision keeps them under it, data.root/<Class>/raw."""
    root, name = Path(cfg.root), _TORCHVISION_CLASS[cfg.dataset]
    held = any((root / file).exists() or (root / f"{file}.gz").exists() for file in IDX_FILES)
    if held or (root.name == "raw" and root.parent.name == name):
        return root
    return root / name / "raw"


def _load_idx_files(cfg: DataConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = raw_folder(cfg)
    _unpack_gzipped(folder)
    missing = [name for name in IDX_FILES if not (folder / name).exists()]
    why = ""
    if missing and cfg.download:
        why = _download(cfg)
        missing = [name for name in IDX_FILES if not (folder / name).exists()]
    if missing:
        raise DataMissing(
            f"{cfg.dataset} not found: {folder}{os.sep} lacks {', '.join(missing)}"
            + (f" (download failed: {why})" if why else " (data.download is false)")
            + f". Copy the four IDX files (or their .gz, from {_mirror(cfg)}) there, or run once with"
            " data.download: true online"
        )
    images_path, labels_path, image_shape, label_shape = _checked_files(folder, train)
    images, labels = read_idx(images_path, image_shape), read_idx(labels_path, label_shape).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{labels_path}: labels must be 0..{NUM_CLASSES - 1}, found {int(labels.max())}")
    return images, labels


def _checked_files(folder: Path, train: bool) -> tuple[Path, Path, tuple[int, ...], tuple[int, ...]]:
    """(images path, labels path, their shapes) of one split in `folder`, the four files' headers checked first."""
    for name in IDX_FILES:  # all four, before any is read: a pipe would block the read
        problem = file_problem(folder / name, "IDX file")
        if problem:
            raise DataError(problem)
    prefix = "train" if train else "t10k"
    images_path, labels_path = folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"
    image_shape = check_idx_file(images_path, ndim=3)
    label_shape = check_idx_file(labels_path, ndim=1)
    if image_shape[0] != label_shape[0]:
        raise DataError(f"{images_path} holds {image_shape[0]} images but {labels_path} holds {label_shape[0]} labels")
    return images_path, labels_path, image_shape, label_shape


def count_training_images(cfg: DataConfig) -> int | None:
    """How many images the training split holds, from the files' headers and without reading the images: what the
    dry run checks data.val_size against (val_count). The files get the checks loading makes, packed ones (.gz)
    their headers only; None where a file is missing (a run would download it, or refuse)."""
    if cfg.dataset == "synthetic":
        return cfg.synthetic_size
    if cfg.dataset == "folder":
        return image_folder.count_images(Path(cfg.root))
    folder = raw_folder(cfg)
    if all((folder / name).exists() for name in IDX_FILES):
        return _checked_files(folder, train=True)[2][0]
    if not all((folder / name).exists() or (folder / f"{name}.gz").is_file() for name in IDX_FILES):
        return None
    images, labels = (_packed_count(folder / IDX_FILES[i], ndim) for i, ndim in ((0, 3), (1, 1)))
    if images != labels:
        raise DataError(f"{folder}: the training images file holds {images} images but its labels file {labels}")
    return images


def _packed_count(path: Path, ndim: int) -> int:
    """The first dimension in the header of IDX file `path`, or of its .gz where it is not unpacked yet."""
    if path.exists():
        return check_idx_file(path, ndim)[0]
    packed = path.with_name(f"{path.name}.gz")
    try:
        with gzip.open(packed, "rb") as f:
            header = f.read(8)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{packed}: cannot be unpacked ({e})") from None
    if len(header) < 8 or int.from_bytes(header[:4], "big") != 0x0800 + ndim:
        raise DataError(f"{packed}: does not hold an IDX {'image' if ndim == 3 else 'label'} file")
    return int.from_bytes(header[4:8], "big")


def read_idx(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """The bytes of an IDX file that check_idx_file passed, as a uint8 tensor of its `shape`: what torchvision's
    MNIST reader returns (tests/core/test_data.py checks the two agree), without importing torchvision (2.5 s)."""
    data = bytearray(math.prod(shape))
    try:
        with open(path, "rb") as f:
            f.seek(4 + 4 * len(shape))
            got = f.readinto(data)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    if got != len(data):
        raise DataError(f"{path}: truncated while being read ({got} of {len(data)} bytes of data)")
    return torch.frombuffer(data, dtype=torch.uint8).view(shape)


def check_idx_file(path: Path, ndim: int) -> tuple[int, ...]:
    """Check an IDX file's magic number and size against its header before it is read; returns its shape."""
    kind = "image" if ndim == 3 else "label"
    expected_magic = 0x0800 + ndim  # unsigned bytes, ndim dimensions
    problem = file_problem(path, f"IDX {kind} file")
    if problem:
        raise DataError(problem)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated ({size} bytes, shorter than an IDX header)")
    magic = int.from_bytes(header[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{path}: not an IDX {kind} file (magic number {magic:#010x}, expected {expected_magic:#010x})")
    shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if 0 in shape:
        held = f"{shape[0]} {kind}s" + (f" of {shape[1]}×{shape[2]} pixels" if ndim == 3 else "")
        raise DataError(f"{path}: holds {held}; a dataset needs at least one {kind} of at least one pixel")
    expected_size = 4 + 4 * ndim + math.prod(shape)
    if size != expected_size:
        raise DataError(
            f"{path}: truncated or corrupt: its header promises {'×'.join(map(str, shape))} bytes of data "
            f"({expected_size} bytes in all) but the file has {size}"
        )
    return shape


def idx_bytes(tensor: torch.Tensor) -> bytes:
    """Unsigned bytes (N, ...) as IDX, MNIST's format: magic 0x0800 + ndim, each dimension as a 4-byte big-endian
    number, then the raw bytes. Integers in 0..255 of another dtype are accepted; anything else is refused."""
    if tensor.dtype != torch.uint8:
        if tensor.dtype.is_floating_point or (tensor.numel() and (tensor.min() < 0 or tensor.max() > 255)):
            raise ValueError(f"IDX here holds unsigned bytes; got {tensor.dtype} with values outside 0..255")
        tensor = tensor.to(torch.uint8)
    header = (0x0800 + tensor.dim()).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in tensor.shape)
    return header + tensor.contiguous().numpy().tobytes()


def write_idx(path: Path, tensor: torch.Tensor) -> Path:
    """Write `tensor` (see idx_bytes) as an IDX file, atomically, making its folder if needed; returns the path."""
    path = Path(path)
    make_dirs(path.parent)
    data = idx_bytes(tensor)
    atomic_write(path, lambda f: f.write(data))
    return path


def _unpack_gzipped(folder: Path) -> None:
    """Accept the files as distributed (.gz) as well as unpacked, as torchvision's own download leaves them."""
    for name in IDX_FILES:
        target, packed = folder / name, folder / f"{name}.gz"
        if target.exists() or not packed.is_file():  # a FIFO or a folder in the way is said by check_idx_file
            continue
        atomic_write(target, lambda dst, packed=packed: _gunzip(packed, dst))


def _gunzip(packed: Path, dst: BinaryIO) -> None:
    try:
        with gzip.open(packed, "rb") as src:
            shutil.copyfileobj(src, dst)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a broken .gz; a failed write is atomic_write's to say
        raise DataError(f"{packed}: cannot be unpacked ({e})") from None


def _mirror(cfg: DataConfig) -> str:
    """Where torchvision downloads this dataset from, to tell a user with no network where to fetch it."""
    from torchvision import datasets

    return getattr(datasets, _TORCHVISION_CLASS[cfg.dataset]).mirrors[0]


def _download(cfg: DataConfig) -> str:
    """Let torchvision fetch the dataset; '' on success, else the reason in a few words."""
    from urllib.error import URLError

    from torchvision import datasets

    folder = raw_folder(cfg)
    if folder.parent.name != _TORCHVISION_CLASS[cfg.dataset] or folder.name != "raw":
        return f"torchvision downloads into <root>/{_TORCHVISION_CLASS[cfg.dataset]}/raw/, not into {folder}"
    made = [p for p in (folder, folder.parent, folder.parent.parent) if not p.exists()]  # deepest first
    try:
        getattr(datasets, _TORCHVISION_CLASS[cfg.dataset])(folder.parent.parent, train=True, download=True)
        return ""
    except (RuntimeError, URLError, OSError) as e:
        for empty in made:  # a failed download leaves no empty data/MNIST/raw/ behind
            with contextlib.suppress(OSError):
                empty.rmdir()
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line for line in lines if line.startswith("<urlopen error")), lines[-1] if lines else "")
        return reason.removeprefix("<urlopen error ").removesuffix(">") or type(e).__name__


def class_names(dataset: str) -> list[str]:
    """What each label means: the digit for mnist and synthetic, torchvision's names for fashion-mnist."""
    if dataset == "fashion-mnist":
        return list(FASHION_CLASSES)
    return [str(label) for label in range(NUM_CLASSES)]
