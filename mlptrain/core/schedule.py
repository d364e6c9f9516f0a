"""The learning rate's schedule: one stepped after every batch (cosine, onecycle, a linear warm-up before cosine or
a constant rate), and plateau's, stepped after every epoch's validation (torch's ReduceLROnPlateau on train.monitor).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from mlptrain.base.config import TrainConfig
from mlptrain.base.metrics import direction


class WarmUp(LRScheduler):
    """The rate climbs linearly to train.lr over the first `warmup` steps (lr·k/warmup at the k-th), then falls
    along a cosine to 0 at step `total` (`cosine`), or is left as it stands (none, plateau: plateau's cuts hold).

    Closed form, a function of the step alone, so a resumed run and a longer one continue it exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int, total: int, cosine: bool):
        self.warmup, self.total, self.cosine = warmup, total, cosine
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        step = self.last_epoch  # steps taken: this rate is the next batch's
        if step < self.warmup:
            return [base * (step + 1) / self.warmup for base in self.base_lrs]
        if not self.cosine:
            return [group["lr"] for group in self.optimizer.param_groups]
        span = max(1, self.total - self.warmup)
        factor = 0.5 * (1.0 + math.cos(math.pi * min(step - self.warmup, span) / span))
        return [base * factor for base in self.base_lrs]


def warmup_steps(cfg: TrainConfig, steps: int) -> int:
    """The optimizer steps that train.warmup_epochs covers at `steps` per epoch (at least one where it is on)."""
    return max(1, int(cfg.warmup_epochs * steps)) if cfg.warmup_epochs > 0 else 0


def steps_the_rate(cfg: TrainConfig) -> bool:
    """Whether a run of `cfg` has a schedule stepped every batch (so its checkpoint holds that schedule's state)."""
    return cfg.scheduler in ("cosine", "onecycle") or cfg.warmup_epochs > 0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int) -> LRScheduler | None:
    """The schedule stepped after every batch, over `steps` optimizer steps in all; None for a rate that only
    plateau (or nothing) changes."""
    if cfg.warmup_epochs > 0:  # config refuses it with onecycle, which warms up by itself
        warmup = warmup_steps(cfg, steps // cfg.epochs)
        return WarmUp(optimizer, warmup, steps, cosine=cfg.scheduler == "cosine")
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if cfg.scheduler == "onecycle":
        # Momentum (beta1 for Adam) dips by 0.1 while the rate climbs and recovers as it falls, as in
        # Smith's one-cycle policy; a run without momentum keeps none.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=steps,
            cycle_momentum=cfg.momentum > 0,
            base_momentum=max(cfg.momentum - 0.1, 0.0),
            max_momentum=cfg.momentum,
        )
    return None


def build_plateau(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> ReduceLROnPlateau | None:
    """Under `scheduler: plateau`, the rate times train.plateau_factor once train.plateau_patience epochs in a row
    have not improved on train.monitor (by more than train.min_delta, as metrics.improves says), counted afresh after
    each cut, as Keras's ReduceLROnPlateau does; else None."""
    if cfg.scheduler != "plateau":
        return None
    mode = "max" if direction(cfg.monitor) == "maximize" else "min"
    return ReduceLROnPlateau(
        optimizer,
        mode=mode,
        factor=cfg.plateau_factor,
        patience=cfg.plateau_patience - 1,  # torch cuts at the bad epoch after its patience; Keras, at its patience
        threshold=cfg.min_delta,  # torch's "abs" test is metrics.improves: value beyond best ± min_delta
        threshold_mode="abs",
    )


def step_plateau(plateau: ReduceLROnPlateau | None, cfg: TrainConfig, epoch: int, steps: int, value: float) -> None:
    """After epoch `epoch`'s validation, `value` of train.monitor to plateau's count; an epoch that ends inside the
    warm-up does not count (the rising rate is not the one to judge)."""
    if plateau is not None and epoch * steps >= warmup_steps(cfg, steps):
        plateau.step(value)
