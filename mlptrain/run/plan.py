"""What a run would use, checked without training: its data files and their images (counted, and data.val_size
checked against them), its device, and its model's layers, parameters and memory, with the checks the run makes
before training (the same functions). `mlptrain train --dry-run` shows it; nothing is downloaded or written."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from mlptrain.base.config import Config
from mlptrain.base.errors import DataMissing
from mlptrain.base.extras import check_config
from mlptrain.core.data import IDX_FILES, IN_FEATURES, count_training_images, dataset_classes, raw_folder, val_count
from mlptrain.core.device import resolve_device
from mlptrain.core.distributed import World, check_world
from mlptrain.core.memory import MNIST_TRAIN_IMAGES, check_run_fits

FLOAT_BYTES = 4  # parameters, their gradients and the optimizer's state are fp32 whatever train.precision is


@dataclass
class RunPlan:
    config: Config
    device: str
    data: str  # where the images come from, as a person reads it
    split: tuple[int, int]  # (training, validation) images
    layers: list[tuple[int, int]]  # (in_features, out_features) of each Linear, input first
    parameters: int
    memory_bytes: int  # parameters + gradients + optimizer state (+ the weights' average under train.ema)

    @property
    def run_dir(self) -> str:
        return str(Path(self.config.output.dir) / f"{self.config.name}-<YYYYmmdd-HHMMSS>")


def plan_run(config: Config) -> RunPlan:
    """Check that `config` can start here (device, data files) and size its model; raises what training would."""
    check_config(config)
    world = World.from_env()
    device = world.device(resolve_device(config.device))
    check_world(config, device, world.size, world.local_size)
    check_run_fits(config, device, world.size)
    sizes = [IN_FEATURES, *config.model.hidden, len(dataset_classes(config.data))]
    layers = list(itertools.pairwise(sizes))
    parameters = sum(i * o + (o if config.model.bias else 0) for i, o in layers)
    # Adam keeps two moments per parameter, SGD with momentum one buffer, plain SGD none.
    state = 2 if config.train.optimizer in ("adam", "adamw") else int(config.train.momentum > 0)
    average = int(config.train.ema > 0)  # train.ema keeps a second copy of the weights
    memory = parameters * FLOAT_BYTES * (2 + state + average)
    source, images = _data_source(config)
    held = val_count(config.data, images)
    return RunPlan(config, str(device), source, (images - held, held), layers, parameters, memory)


def _data_source(config: Config) -> tuple[str, int]:
    """Where the images come from and how many the training split holds; refuses what loading them would."""
    cfg = config.data
    images = count_training_images(cfg)
    if cfg.dataset == "synthetic":
        source = "synthetic: digits drawn in memory, no files"
    elif cfg.dataset == "folder":
        classes = dataset_classes(cfg)
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        source = f"folder: {Path(cfg.root) / 'train'} ({len(classes)} classes: {shown}; image files counted, not read)"
    else:
        folder = raw_folder(cfg)
        missing = [name for name in IDX_FILES if not (folder / name).exists() and not (folder / f"{name}.gz").is_file()]
        if missing and not cfg.download:
            raise DataMissing(
                f"{cfg.dataset} not found: {folder}{os.sep} lacks {', '.join(missing)} (data.download is false)"
            )
        source = f"{cfg.dataset}: {folder}"
        if images is None:  # the download brings the full set
            images = MNIST_TRAIN_IMAGES
            source += f" lacks {len(missing)} of 4 files; the run would download them"
    return source, images
