"""A `folder` dataset: image files in <root>/train/<class>/ (and <root>/test/<class>/), each made into a 28×28
digit exactly as `predict` makes one (core/digit.py), decoded once on a pool of threads and cached.

The cache is one file per split, <cache>/mlptrain/folders/<hash of the split's folder>.pt (<cache>: XDG_CACHE_HOME,
else ~/.cache), holding the images as bytes and the key they were made from: every image file's path, size and
modification time, the classes, and the versions of the preparation and of PIL. A changed folder is decoded again;
a cache file that cannot be read, or holds anything else, is ignored and written afresh. Nothing is written into
the data folder. Writes are atomic, so runs at once each read a whole cache file or make their own.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mlptrain.base.errors import DataError, DataMissing, MlptrainError, WriteFailed
from mlptrain.base.files import atomic_write, make_dirs
from mlptrain.core.digit import SIZE, image_suffixes, prepare

# What the cached bytes depend on besides the files: bump it whenever digit.prepare changes what it makes.
PREPARE_VERSION = 1
CACHE_FORMAT = "mlptrain-folder-cache"
NAMED = 3  # unreadable files the warning names; it counts them all
# Threads, not processes (docs/training.md, "A folder of images", has the numbers): a process pool spent longer
# starting Python and torch in each worker than 2,500 small PNGs take to decode; PIL's decode and torch's kernels
# release the GIL, which pays on large images (on 28×28 ones the per-call overhead, under the GIL, dominates).
MAX_WORKERS = 16


@dataclass
class FolderSplit:
    """One split of a folder dataset, on the CPU: images uint8 (N, 28, 28), labels int64 (N,), the classes the
    labels index, and the image files that could not be used, (path, why)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cache_problem: str = ""  # why the decoded images could not be cached, if they could not

    def notes(self) -> list[str]:
        """The warnings worth showing: one line for the skipped files, and a cache that could not be written."""
        notes = [self.cache_problem] if self.cache_problem else []
        if not self.skipped:
            return notes
        named = "; ".join(f"{path} ({why})" for path, why in self.skipped[:NAMED])
        more = f"; and {len(self.skipped) - NAMED} more" if len(self.skipped) > NAMED else ""
        return [f"skipped {len(self.skipped)} unreadable image file(s): {named}{more}", *notes]


def cache_dir() -> Path:
    """Where decoded folders are cached: $XDG_CACHE_HOME/mlptrain/folders, else ~/.cache/mlptrain/folders."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlptrain" / "folders"


def train_classes(root: Path) -> list[str]:
    """The class folders of <root>/train, sorted by name: label i means classes[i]."""
    return _class_folders(Path(root) / "train")


def has_test(root: Path) -> bool:
    return (Path(root) / "test").is_dir()


def count_images(root: Path) -> int:
    """How many image files (by suffix) the training split holds, without decoding any: for the dry run."""
    return len(_listing(Path(root) / "train", train_classes(root))[0])


def load_split(root: Path, split: str, classes: list[str] | None = None) -> FolderSplit:
    """The images of <root>/<split>, labelled by `classes` (default: the training split's class folders), from
    the cache where it matches the files, else decoded and cached. A copy: the caller may change it."""
    folder = Path(root) / split
    classes = train_classes(root) if classes is None else classes
    if split != "train":
        _class_folders(folder)  # the same refusals as train/'s
    files, labels = _listing(folder, classes)
    key = _key(files, classes)
    got = _remembered(str(folder.resolve()), key, lambda: _cached_or_decoded(folder, files, labels, classes, key))
    return FolderSplit(got.images.clone(), got.labels.clone(), list(got.classes), list(got.skipped))


def decode(files: list[Path], workers: int | None = None) -> list[torch.Tensor | str]:
    """Each file as a (28, 28) uint8 digit (digit.prepare), or why it cannot be one; in the files' order."""
    workers = workers or min(MAX_WORKERS, len(os.sched_getaffinity(0)))
    if workers <= 1 or len(files) < 2:
        return [_decode_one(f) for f in files]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlptrain-decode") as pool:
        return list(pool.map(_decode_one, files, chunksize=16))


def _decode_one(path: Path) -> torch.Tensor | str:
    try:
        return prepare(path).mul_(255).round_().to(torch.uint8)  # prepare's pixels are bytes / 255: exact
    except DataError as e:  # a file PIL cannot read, a damaged one, a blank page: its one-line reason
        return str(e).removeprefix(f"{path}: ")


def _class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        where = "not there" if not folder.exists() else "not a folder"
        raise DataMissing(f"{folder}: {where}; a folder dataset needs {folder}{os.sep}<class>{os.sep} of image files")
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"{folder}: cannot be listed ({e.strerror or e})") from None
    if not names:
        raise DataError(f"{folder}: no class folders in it; put each class's images in {folder}{os.sep}<class>{os.sep}")
    return names


def _listing(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """(each image file of `folder`'s class folders, its label), sorted by class then name. Hidden files and files
    without an image suffix (README, labels.csv) are not images of the dataset, and are passed over."""
    index = {name: label for label, name in enumerate(classes)}
    suffixes = image_suffixes()
    files, labels = [], []
    for name in _class_folders(folder):
        if name not in index:
            raise DataError(f"{folder / name}: a class the training split lacks (train/ has {', '.join(classes)})")
        try:
            inside = sorted(p for p in (folder / name).iterdir() if not p.name.startswith("."))
        except OSError as e:
            raise DataError(f"{folder / name}: cannot be listed ({e.strerror or e})") from None
        images = [p for p in inside if p.suffix.lower() in suffixes and not p.is_dir()]
        if not images:
            raise DataError(f"{folder / name}: no image files in it (PNG, JPEG, ...); each class needs at least one")
        files += images
        labels += [index[name]] * len(images)
    return files, labels


def _key(files: list[Path], classes: list[str]) -> str:
    """What the decoded images depend on: the files (path, size, modification time), classes and versions."""
    import PIL

    digest = hashlib.sha256(f"{PREPARE_VERSION} {PIL.__version__} {torch.__version__}\n".encode())
    digest.update(("\0".join(classes) + "\n").encode("utf-8", "surrogateescape"))
    for path in files:
        try:
            st = path.stat()
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:  # gone since the listing, or unreadable: decoding says so, and the key is another
            digest.update(f"{path}\0?\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


_MEMORY: dict[str, tuple[str, FolderSplit]] = {}  # folder -> (key, split): a sweep's trials decode it once


def _remembered(folder: str, key: str, make: Callable[[], FolderSplit]) -> FolderSplit:
    held = _MEMORY.get(folder)
    if held is not None and held[0] == key:
        return held[1]
    got = make()
    _MEMORY[folder] = (key, got)
    return got


def _cache_path(folder: Path) -> Path:
    name = hashlib.sha256(str(folder.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_dir() / f"{name}.pt"


def _cached_or_decoded(folder: Path, files: list[Path], labels: list[int], classes: list[str], key: str):
    path = _cache_path(folder)
    cached = _read_cache(path, key)
    if cached is not None:
        return cached
    decoded = decode(files)
    keep = [i for i, d in enumerate(decoded) if isinstance(d, torch.Tensor)]
    skipped = [(str(files[i]), d) for i, d in enumerate(decoded) if isinstance(d, str)]
    used = {labels[i] for i in keep}
    empty = [name for label, name in enumerate(classes) if label not in used]  # every class has files
    if empty:
        why = next(why for p, why in skipped if Path(p).parent.name == empty[0])
        raise DataError(f"{folder / empty[0]}: no usable image in it (the first: {why})")
    images = torch.stack([decoded[i] for i in keep]) if keep else torch.empty(0, SIZE, SIZE, dtype=torch.uint8)
    got = FolderSplit(images, torch.tensor([labels[i] for i in keep], dtype=torch.int64), classes, skipped)
    got.cache_problem = _write_cache(path, key, got)
    return got


def _read_cache(path: Path, key: str) -> FolderSplit | None:
    """The split cached at `path` if it was made from `key`; None if absent, stale, truncated or not ours."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != CACHE_FORMAT or saved.get("key") != key:
            return None
        images, labels = saved["images"], saved["labels"]
        ok = (
            images.dtype == torch.uint8
            and tuple(images.shape[1:]) == (SIZE, SIZE)
            and labels.dtype == torch.int64
            and labels.shape == (images.shape[0],)
        )
        skipped = [(str(p), str(why)) for p, why in saved["skipped"]]
        return FolderSplit(images, labels, [str(c) for c in saved["classes"]], skipped) if ok else None
    except Exception:  # any way a damaged or foreign file fails to unpickle: decode again
        return None


def _write_cache(path: Path, key: str, got: FolderSplit) -> str:
    """Cache `got` at `path`, atomically; '' or why not: a cache that cannot be written costs the next run a
    decode, and is said, not fatal."""
    payload = {"format": CACHE_FORMAT, "key": key, "images": got.images, "labels": got.labels,
               "classes": got.classes, "skipped": got.skipped}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        make_dirs(path.parent)
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    except (OSError, MlptrainError) as e:
        reason = e.reason if isinstance(e, WriteFailed) else (getattr(e, "strerror", None) or str(e))
        return f"could not cache the decoded images in {path} ({reason}); the next run decodes them again"
    return ""
