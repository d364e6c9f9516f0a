"""What a run would use, checked without training: its data files, its device, and its model's layers, parameters
and memory. `mlptrain train --dry-run` shows it; nothing is loaded, downloaded or written."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from mlptrain.base.config import Config
from mlptrain.base.errors import DataMissing
from mlptrain.base.extras import check_config
from mlptrain.core.data import IDX_FILES, IN_FEATURES, NUM_CLASSES, raw_folder
from mlptrain.core.device import resolve_device

FLOAT_BYTES = 4  # parameters, their gradients and the optimizer's state are fp32 whatever train.precision is


@dataclass
class RunPlan:
    config: Config
    device: str
    data: str  # where the images come from, as a person reads it
    layers: list[tuple[int, int]]  # (in_features, out_features) of each Linear, input first
    parameters: int
    memory_bytes: int  # parameters + gradients + optimizer state (+ the weights' average under train.ema)

    @property
    def run_dir(self) -> str:
        return str(Path(self.config.output.dir) / f"{self.config.name}-<YYYYmmdd-HHMMSS>")


def plan_run(config: Config) -> RunPlan:
    """Check that `config` can start here (device, data files) and size its model; raises what training would."""
    check_config(config)
    device = resolve_device(config.device)
    sizes = [IN_FEATURES, *config.model.hidden, NUM_CLASSES]
    layers = list(itertools.pairwise(sizes))
    parameters = sum(i * o + (o if config.model.bias else 0) for i, o in layers)
    # Adam keeps two moments per parameter, SGD with momentum one buffer, plain SGD none.
    state = 2 if config.train.optimizer in ("adam", "adamw") else int(config.train.momentum > 0)
    average = int(config.train.ema > 0)  # train.ema keeps a second copy of the weights
    memory = parameters * FLOAT_BYTES * (2 + state + average)
    return RunPlan(config, str(device), _data_source(config), layers, parameters, memory)


def _data_source(config: Config) -> str:
    cfg = config.data
    if cfg.dataset == "synthetic":
        return f"synthetic: {cfg.synthetic_size:,} training digits drawn in memory, no files"
    folder = raw_folder(cfg)
    missing = [name for name in IDX_FILES if not (folder / name).is_file() and not (folder / f"{name}.gz").is_file()]
    if not missing:
        return f"{cfg.dataset}: {folder}"
    if cfg.download:
        return f"{cfg.dataset}: {folder} lacks {len(missing)} of 4 files; the run would download them"
    raise DataMissing(f"{cfg.dataset} not found: {folder}{os.sep} lacks {', '.join(missing)} (data.download is false)")
