"""What each config key means, in one line: the one source of `mlptrain config --keys` and of the README's
annotated config (a test checks the README holds exactly `annotated_yaml()`)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, Literal

from mlptrain.base.config import Config, _fields

MEANINGS = {
    "name": "run folders are <output.dir>/<name>-<timestamp>",
    "seed": "weights, validation split, data order and dropout all follow it",
    "device": "auto | cpu | cuda | cuda:N | mps (auto: cuda, else mps, else cpu)",
    "threads": "CPU threads for torch: auto (the cores others leave free, see Performance) or N, at most 4 per core",
    "data.dataset": "synthetic is drawn with PIL, seeded, and needs no files; folder: image files in class folders",
    "data.root": "IDX files in <root>/MNIST/raw/ (FashionMNIST/raw/) or in <root>; folder: <root>/train/<class>/ "
    "(and test/<class>/); relative to where the run starts",
    "data.download": "let torchvision download missing files (mnist, fashion-mnist)",
    "data.val_size": "held-out validation images (a seeded choice): a count, or a fraction in (0, 1)",
    "data.synthetic_size": "synthetic only: training images; the test split has a sixth as many",
    "data.augment.kind": "training batches only; `data.augment: <kind>` is short for it",
    "data.augment.rotation": "degrees: each image turns by a uniform draw in ±rotation",
    "data.augment.scale": "fraction: each image is resized by a factor in [1 - scale, 1 + scale]",
    "data.augment.shear": "degrees: horizontal shear, a uniform draw in ±shear",
    "data.augment.translate": "pixels: shift along each axis, a uniform draw in ±translate",
    "data.augment.elastic_alpha": "pixels: strength, the scale of the smoothed uniform(-1, 1) displacement field",
    "data.augment.elastic_sigma": "pixels: smoothness, the std of the Gaussian that smooths the field",
    "model.hidden": "hidden layer sizes (at most 1000 layers); input size and class count come from the dataset",
    "model.activation": "after each hidden layer",
    "model.dropout": "after each hidden activation, in [0, 1)",
    "model.bias": "each layer adds a bias",
    "model.fused": "the whole MLP as one node, gradients by hand in fp32; false: one node per layer",
    "train.epochs": "passes over the training images",
    "train.batch_size": "images per optimizer step (over all processes)",
    "train.lr": "the learning rate; the peak rate under onecycle",
    "train.optimizer": "how the weights are updated",
    "train.momentum": "SGD momentum; for adam/adamw it is beta1",
    "train.weight_decay": "L2 penalty on weights, not biases (decoupled for adamw)",
    "train.scheduler": "how the rate changes: every batch, or (plateau) cut after epochs without improvement",
    "train.warmup_epochs": "epochs (fractions too) over which the rate climbs linearly to lr first; not onecycle",
    "train.plateau_factor": "plateau only: the rate is multiplied by this, in (0, 1), when the monitor stalls",
    "train.plateau_patience": "plateau only: the rate is cut after this many epochs in a row without improvement",
    "train.monitor": "which epoch best.pt keeps: the highest val_acc or the lowest val_loss",
    "train.patience": "stop after this many epochs without improvement on the monitor; 0 = never stop early",
    "train.min_delta": "an improvement (patience, plateau) beats the last one by more than this; best.pt: any",
    "train.precision": "autocast dtype for the matmuls (fp16 adds loss scaling on CUDA)",
    "train.compile": "torch.compile the model; falls back to eager, with a warning, where it cannot",
    "train.label_smoothing": "ε in [0, 1): the target puts 1 - ε on the label and ε/classes on every class",
    "train.grad_clip_norm": "clip the global gradient norm (L2) to this before each step; 0 = off",
    "train.ema": "decay of the weights' moving average (e.g. 0.999) that validation, best.pt use; 0 = off",
    "output.dir": "where run folders go; relative to where the run starts",
    "output.tensorboard": "also log to <run>/tensorboard/ for TensorBoard; needs pip install 'mlptrain[tensorboard]'",
    "output.mlflow": "also log to MLflow: true (<output.dir>/mlflow.db) or a tracking URI; needs 'mlptrain[mlflow]'",
}


@dataclass
class KeyDoc:
    key: str
    type: str  # as a person reads it: 'int', 'relu | gelu | tanh | sigmoid', 'list of int'
    default: Any
    meaning: str


def key_docs() -> list[KeyDoc]:
    """Every config key, in the schema's order, with its type, default and meaning."""
    return [KeyDoc(key, type_text(tp), default, MEANINGS[key]) for key, tp, default in _leaves(Config, Config(), "")]


def yaml_value(value: Any) -> str:
    """A default as YAML writes it inline: true, 0.05, [128, 64], auto."""
    return json.dumps(value, separators=(", ", ": ")) if not isinstance(value, str) else value


def type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(typing.get_args(tp))
    if origin is list:
        return f"list of {type_text(typing.get_args(tp)[0])}"
    if typing.get_args(tp):  # a union: int | Literal["auto"]
        return " | ".join(type_text(option) for option in typing.get_args(tp))
    return tp.__name__


def annotated_yaml() -> str:
    """Every key with its default and meaning, as a commented YAML file: what the README shows."""
    lines, section = [], []
    for doc in key_docs():
        *head, leaf = doc.key.split(".")
        shared = 0  # how many enclosing sections the previous key shares with this one
        while shared < min(len(head), len(section)) and head[shared] == section[shared]:
            shared += 1
        lines += [f"{'  ' * depth}{name}:" for depth, name in enumerate(head) if depth >= shared]
        section = head
        text = f"{'  ' * len(head)}{leaf}: {yaml_value(doc.default)}"
        choices = f"{doc.type}: " if " | " in doc.type and doc.key not in ("threads", "output.mlflow") else ""
        lines.append(f"{text:<27}# {choices}{doc.meaning}")
    return "\n".join(lines) + "\n"


def _leaves(cls: Any, value: Any, section: str) -> list[tuple[str, Any, Any]]:
    leaves = []
    for name, tp in _fields(cls).items():
        key, current = f"{section}.{name}" if section else name, getattr(value, name)
        leaves += _leaves(tp, current, key) if dataclasses.is_dataclass(tp) else [(key, tp, current)]
    return leaves


def applies(key: str, settings: dict[str, Any]) -> bool:
    """Whether `key` shaped a run of these `settings` (dotted keys, as a run folder's config.yaml holds them):
    data.augment's settings do only under an augmentation (a kind other than none; runs from before
    augmentation have none), plateau's only under that scheduler, and min_delta only where something counts
    improvements (train.patience, or plateau)."""
    if key.startswith("data.augment.") and key != "data.augment.kind":
        return settings.get("data.augment.kind", "none") not in ("none", None)
    if key.startswith("train.plateau_"):
        return settings.get("train.scheduler") == "plateau"
    if key == "train.min_delta":
        return settings.get("train.scheduler") == "plateau" or bool(settings.get("train.patience"))
    return True
