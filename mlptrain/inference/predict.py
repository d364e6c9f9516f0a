"""Classify image files: each is made into a 28×28 digit the way MNIST's were (core/digit.py, as a `folder`
dataset's images are), then scored by a checkpoint and named by the classes it records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mlptrain.base.errors import CheckpointError, DataError
from mlptrain.core.device import resolve_device
from mlptrain.core.digit import SIZE, image_suffixes, prepare
from mlptrain.run.checkpoint import load_model
from mlptrain.run.checkpoint_entries import checkpoint_classes


@dataclass
class Prediction:
    """One file's classes, most probable first: (label, name, probability) for the top K."""

    file: Path
    top: list[tuple[int, str, float]] = field(default_factory=list)

    @property
    def label(self) -> int:
        return self.top[0][0]

    @property
    def name(self) -> str:
        return self.top[0][1]

    @property
    def confidence(self) -> float:
        return self.top[0][2]

    def to_json(self) -> dict:
        return {
            "file": str(self.file),
            "label": self.label,
            "name": self.name,
            "confidence": self.confidence,
            "top": [{"label": label, "name": name, "probability": p} for label, name, p in self.top],
        }


@dataclass
class PredictResult:
    predictions: list[Prediction]  # in the order the files were given
    failures: list[tuple[Path, str]]  # (file, why it could not be read): one-line messages that name the file
    checkpoint: Path
    dataset: str
    device: str


def predict_files(checkpoint: Path, files: Sequence[Path], device: str = "auto", top: int = 3) -> PredictResult:
    """Classify each file with the model in `checkpoint`; a file that cannot be read is a failure, not an error."""
    checkpoint = Path(checkpoint)
    dev = resolve_device(device)
    ckpt, model = load_model(checkpoint, dev)
    if model.sizes[0] != SIZE * SIZE:
        raise CheckpointError(f"{checkpoint}: its model takes {model.sizes[0]} inputs, not {SIZE}×{SIZE} images")
    dataset = ckpt["config"].data.dataset
    names = checkpoint_classes(ckpt)
    mean, std = float(ckpt["data"]["mean"]), float(ckpt["data"]["std"])

    readable, images, failures = [], [], []
    for file in map(Path, files):
        try:
            images.append(prepare(file))
            readable.append(file)
        except DataError as e:
            failures.append((file, str(e)))
    predictions = []
    if images:
        x = ((torch.stack(images).view(len(images), -1) - mean) / std).to(dev)  # (N, 784), as data.normalize
        model.eval()
        with torch.inference_mode():
            probabilities = model(x).softmax(1).cpu()  # (N, classes)
        k = min(top, probabilities.shape[1])
        values, labels = probabilities.topk(k, dim=1)
        for file, row_p, row_l in zip(readable, values.tolist(), labels.tolist(), strict=True):
            predictions.append(Prediction(file, [(lab, names[lab], p) for lab, p in zip(row_l, row_p, strict=True)]))
    return PredictResult(predictions, failures, checkpoint, dataset, str(dev))


def image_files(paths: Sequence[Path], recursive: bool = False) -> tuple[list[Path], list[str]]:
    """(the files to classify, notes on what was skipped): a file is taken as given; a folder gives its image
    files (by suffix, sorted; with `recursive`, those of its sub-folders too), and each other file is noted."""
    suffixes = image_suffixes()
    files, notes = [], []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        inside = sorted(p for p in (path.rglob("*") if recursive else path.iterdir()) if not p.is_dir())
        visible = [p for p in inside if not p.name.startswith(".")]
        images = [p for p in visible if p.suffix.lower() in suffixes]
        files += images
        notes += [f"{p}: skipped, not an image file" for p in visible if p not in images]
        if not images:
            notes.append(f"{path}: no image files in it" + ("" if recursive else " (--recursive looks in sub-folders)"))
    return files, notes


def write_csv(path: Path, predictions: Sequence[Prediction]) -> None:
    """`file,label,confidence`, a row per classified file in order (label: the class index, as in --json)."""
    import csv
    import io

    from mlptrain.base.files import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label", "confidence"])
    for p in predictions:
        writer.writerow([str(p.file), p.label, repr(p.confidence)])
    try:
        atomic_write_text(Path(path), buf.getvalue())
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None
