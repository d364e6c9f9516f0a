"""`mlptrain augment`: a look at what data.augment does before training, training images beside augmented copies of
each, drawn as the kernel (core/augment.py) makes them for batch j of epoch 1."""

from __future__ import annotations

from pathlib import Path

import torch

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError
from mlptrain.core.augment import Augmenter
from mlptrain.core.data import load_training_data
from mlptrain.run.plot import save_augment_grid


def preview(config: Config, rows: int = 10, copies: int = 7) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """What data.augment does to `config`'s training images: (originals (K, H, W), copies (K, C, H, W)) in [0, 1]
    and the K class names; one image of each class first, on the CPU, copy j drawn as batch j of epoch 1 would
    be."""
    if config.data.augment.kind == "none":
        raise ConfigError("data.augment is none: nothing to show; set one, e.g. --set data.augment=affine+elastic")
    data = load_training_data(config.data, config.seed, torch.device("cpu"))
    y = data.train.y
    firsts = [int(torch.nonzero(y == label)[0]) for label in y.unique().tolist()]
    rest = [i for i in range(len(y)) if i not in set(firsts)]
    picked = torch.tensor((firsts + rest)[:rows])
    x = data.train.x[picked]  # (K, side²)
    augment = Augmenter.build(config.data.augment, data, config.seed)
    side = augment.side
    copied = torch.stack([augment(x, 1, j) for j in range(copies)], 1)  # (K, C, side²)

    def pixels(t: torch.Tensor) -> torch.Tensor:
        return (t * data.std + data.mean).clamp_(0, 1).view(*t.shape[:-1], side, side)

    return pixels(x), pixels(copied), [data.classes[label] for label in y[picked].tolist()]


def save_preview(config: Config, out: Path) -> Path:
    """Draw preview(config) into `out`: each row an image, then its augmented copies. Returns `out`."""
    originals, copies, labels = preview(config)
    a = config.data.augment
    settings = f"rotation ±{a.rotation:g}°, scale ±{a.scale:g}, shear ±{a.shear:g}°, translate ±{a.translate:g} px"
    if a.kind in ("elastic", "affine+elastic"):
        settings += f", elastic alpha {a.elastic_alpha:g} px, sigma {a.elastic_sigma:g} px"
    if a.kind == "elastic":
        settings = settings.split(", elastic ")[1]
    title = f"data.augment: {a.kind} ({config.data.dataset})\n{settings}"
    save_augment_grid(out, originals, copies, labels, title)
    return out
