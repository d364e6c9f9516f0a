"""Scoring a checkpoint on a split: loss and accuracy, accuracy per class, the confusion matrix, and a picture of
the most confidently wrong images. It starts the way predict.py does: the model rebuilt from the checkpoint alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError, DataError, WriteFailed
from mlptrain.base.files import atomic_write_text
from mlptrain.core.data import Split, load_eval_split
from mlptrain.core.device import resolve_device
from mlptrain.core.engine import confusion_matrix, predict_logits, score_logits
from mlptrain.core.nn import MLP
from mlptrain.run.checkpoint import load_model
from mlptrain.run.checkpoint_entries import checkpoint_classes
from mlptrain.run.plot import save_error_grid
from mlptrain.run.runs import eval_record_path

# `eval --errors` shows this many of the most confidently wrong images (four rows of eight).
ERROR_GRID_SIZE = 32


@dataclass
class EvalResult:
    checkpoint: Path
    split: str
    samples: int
    loss: float
    accuracy: float
    epoch: int
    dataset: str
    device: str
    classes: list[str] = field(default_factory=list)  # what each label means: the checkpoint's class names
    confusion: list[list[int]] = field(default_factory=list)  # (classes, classes): row = true, column = predicted
    record: Path | None = None  # where this result was recorded for `mlptrain runs`
    record_problem: str = ""  # why it could not be, if it could not
    errors_image: Path | None = None
    errors_shown: int = 0
    notes: list[str] = field(default_factory=list)  # warnings from reading the split (files passed over)

    @property
    def per_class(self) -> list[float | None]:
        """Accuracy on each true class (None for a class the split lacks)."""
        return [row[label] / sum(row) if sum(row) else None for label, row in enumerate(self.confusion)]

    def to_json(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint),
            "split": self.split,
            "samples": self.samples,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "epoch": self.epoch,
            "dataset": self.dataset,
            "device": self.device,
            "classes": self.classes,
            "per_class": self.per_class,
            "confusion": self.confusion,
        }


def evaluate_checkpoint(
    path: Path,
    split: str = "test",
    data_root: Path | None = None,
    device: str = "auto",
    errors_image: Path | None = None,
    record: bool = True,
) -> EvalResult:
    """Score a checkpoint on the test split, or on the validation images its run held out.

    Also counts the confusion matrix; draws the most confidently wrong images into `errors_image` if given; and
    records the result next to the checkpoint (see runs.eval_record_path) unless `record` is false.
    """
    path = Path(path)
    dev = resolve_device(device)
    ckpt, model = load_model(path, dev)
    config: Config = ckpt["config"]
    data_cfg = replace(config.data, root=str(data_root)) if data_root is not None else config.data
    mean, std = float(ckpt["data"]["mean"]), float(ckpt["data"]["std"])
    split_data = checkpoint_split(ckpt, model, split, data_root, dev)
    logits = predict_logits(model, split_data, config.train.precision)  # (N, classes), as validation ran
    loss, accuracy = score_logits(logits, split_data.y)
    predicted = logits.argmax(1)  # as score_logits counts it, so the confusion's diagonal sums to its accuracy
    num_classes = logits.shape[1]
    result = EvalResult(
        checkpoint=path,
        split=split,
        samples=len(split_data),
        loss=loss,
        accuracy=accuracy,
        epoch=int(ckpt["epoch"]),
        dataset=data_cfg.dataset,
        device=str(dev),
        classes=checkpoint_classes(ckpt),
        confusion=confusion_matrix(predicted, split_data.y, num_classes).tolist(),
        notes=split_data.notes,
    )
    if errors_image is not None:
        confidence = logits.softmax(1).gather(1, predicted[:, None]).squeeze(1)  # (N,)
        result.errors_image = Path(errors_image)
        result.errors_shown = save_mistakes(result, split_data, predicted, confidence, mean, std)
    if record:
        _record(result)
    return result


def checkpoint_split(ckpt: dict, model: MLP, split: str, data_root: Path | None, device: torch.device) -> Split:
    """The split (test, or val: the images the run held out) of the checkpoint's dataset, normalised as its run
    normalised, on `device`; the dataset at `data_root` if given, else where the run found it."""
    config: Config = ckpt["config"]
    data_cfg = replace(config.data, root=str(data_root)) if data_root is not None else config.data
    mean, std = float(ckpt["data"]["mean"]), float(ckpt["data"]["std"])
    split_data = load_eval_split(data_cfg, split, config.seed, mean, std, device, checkpoint_classes(ckpt))
    if split_data.x.shape[1] != model.sizes[0]:
        raise DataError(
            f"{data_cfg.dataset} images have {split_data.x.shape[1]} pixels but the model expects {model.sizes[0]}"
        )
    return split_data


def _record(result: EvalResult) -> None:
    """Write the result beside its checkpoint for `mlptrain runs`; a place that cannot be written is said, not fatal."""
    target = eval_record_path(result.checkpoint, result.split)
    try:
        atomic_write_text(target, json.dumps(result.to_json(), indent=1) + "\n")
        result.record = target
    except WriteFailed as e:
        result.record_problem = f"cannot record the result in {target}: {e.reason}"
    except ConfigError as e:  # something not a file in the way (a folder, a FIFO): never replaced
        result.record_problem = f"cannot record the result: {e}"


def save_mistakes(
    result: EvalResult, split: Split, predicted: torch.Tensor, confidence: torch.Tensor, mean: float, std: float
) -> int:
    """Draw the most confidently wrong images of `split` into result.errors_image; returns how many it shows."""
    wrong = (predicted != split.y).nonzero().squeeze(1)
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices[:ERROR_GRID_SIZE]
    shown = wrong[order]
    side = math.isqrt(split.x.shape[1])
    # Undo the normalisation: back to the 0..255 pixels the dataset holds.
    pixels = (split.x[shown] * std + mean).mul_(255).round_().clamp_(0, 255).view(-1, side, side).cpu().numpy()
    save_error_grid(
        result.errors_image,
        pixels,
        split.y[shown].tolist(),
        predicted[shown].tolist(),
        confidence[shown].tolist(),
        result.classes,
        title=f"{result.checkpoint} on {result.split} ({result.dataset}): the {len(shown)} most confident of "
        f"{len(wrong):,} mistakes in {result.samples:,} images",
    )
    return len(shown)
