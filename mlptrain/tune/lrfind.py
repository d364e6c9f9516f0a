"""Smith's learning-rate range test (fastai's lr_find, Lightning's Tuner.lr_find): train a config's model for a
few hundred steps with the rate growing exponentially, record the smoothed loss, and suggest a rate. It trains a
throwaway copy: nothing is written to disk.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError
from mlptrain.core.augment import Augmenter
from mlptrain.core.data import batches, epoch_order, load_training_data
from mlptrain.core.device import resolve_device
from mlptrain.core.engine import FlatParameters, build_optimizer, grad_scaler, train_step
from mlptrain.core.memory import check_run_fits
from mlptrain.core.nn import build_model
from mlptrain.core.rng import seed_everything
from mlptrain.core.threads import configure_threads

SMOOTHING = 0.98  # of the loss's exponential moving average, as fastai
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum
SKIP_START, SKIP_END = 10, 5  # points left out of the suggestions: the noisy start, the blow-up at the end


@dataclass
class RangeTest:
    """What the range test saw: each step's rate and smoothed loss, where it stopped, and the suggested rates."""

    min_lr: float
    max_lr: float
    steps: int
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed, bias-corrected
    stopped: str | None = None  # why it ended before `steps`, if it did
    steepest: float | None = None  # the rate where the smoothed loss falls fastest (per log-rate)
    valley: float | None = None  # the rate of the lowest smoothed loss, divided by ten
    notes: list[str] = field(default_factory=list)  # warnings from reading the data (files passed over)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def run(config: Config, out: Path) -> RangeTest:
    """The range test of `config` (see lr_range_test), drawn into `out` with its suggestions marked."""
    from mlptrain.run.plot import save_lr_plot

    result = lr_range_test(config)
    save_lr_plot(out, result, f"lr-find: {config.name} ({config.data.dataset}, {config.train.optimizer})")
    return result


def lr_range_test(config: Config, min_lr: float = 1e-5, max_lr: float = 10.0, steps: int = 200) -> RangeTest:
    """Train config's model from its seed for up to `steps` steps at rates min_lr · (max_lr/min_lr)^(i/(steps-1)),
    with the config's optimizer, precision, label smoothing, clipping and augmentation (no schedule, no EMA)."""
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"--min-lr {min_lr} and --max-lr {max_lr}: need 0 < min-lr < max-lr")
    if steps < 2 * (SKIP_START + SKIP_END):
        raise ConfigError(f"--steps {steps}: give at least {2 * (SKIP_START + SKIP_END)}")
    device = resolve_device(config.device)
    check_run_fits(config, device)  # as train refuses it: at once, not at the first allocation
    configure_threads(config, device)
    data = load_training_data(config.data, config.seed, device)
    seed_everything(config.seed)
    model = build_model(config.model, data.in_features, len(data.classes)).to(device)
    cfg = dataclasses.replace(config.train, lr=min_lr)
    optimizer = build_optimizer(FlatParameters(model, weights_first=cfg.weight_decay > 0).groups(), cfg)
    scaler, augment = grad_scaler(device, cfg.precision), Augmenter.build(config.data.augment, data, config.seed)
    clip = (cfg.grad_clip_norm, torch.zeros((), dtype=torch.int64, device=device)) if cfg.grad_clip_norm else None
    result, average, best = RangeTest(min_lr, max_lr, steps, notes=list(data.notes)), 0.0, math.inf
    model.train()
    for i, (epoch, step, x, y) in enumerate(itertools.islice(_batches(data, config, cfg.batch_size), steps)):
        lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if augment is not None:
            x = augment(x, epoch, step)
        loss, _ = train_step(
            model, optimizer, x, y, cfg.precision, scaler, label_smoothing=cfg.label_smoothing, clip=clip
        )
        value = loss.item()  # a host sync every step: this is a short probe, and it must see a blow-up at once
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (i + 1))
        if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
            result.stopped = f"the loss exploded at lr {lr:.3g} (step {i + 1})"
            break
        best = min(best, smoothed)
        result.lrs.append(lr)
        result.losses.append(smoothed)
    result.steepest, result.valley = suggest(result.lrs, result.losses)
    return result


def _batches(data, config: Config, batch_size: int):
    """(epoch, batch index, x, y) over as many epochs of the training split as it takes."""
    for epoch in itertools.count(1):
        order = epoch_order(len(data.train), config.seed, epoch, data.train.x.device)
        for step, (x, y) in enumerate(batches(data.train, order, batch_size)):
            yield epoch, step, x, y


def suggest(lrs: list[float], losses: list[float]) -> tuple[float | None, float | None]:
    """(steepest descent, minimum / 10) of the smoothed loss against log rate, the ends left out as fastai does;
    (None, None) with too few points to judge."""
    kept = slice(SKIP_START, len(lrs) - SKIP_END)
    xs, ys = [math.log(lr) for lr in lrs[kept]], losses[kept]
    if len(xs) < 3:
        return None, None
    slopes = torch.gradient(torch.tensor(ys, dtype=torch.float64), spacing=(torch.tensor(xs, dtype=torch.float64),))
    steepest = lrs[kept][int(torch.argmin(slopes[0]))]
    valley = lrs[kept][min(range(len(ys)), key=ys.__getitem__)] / 10
    return steepest, valley
