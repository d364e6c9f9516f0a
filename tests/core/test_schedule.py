"""The rate's schedules: warm-up's climb, cosine after it, and plateau's cuts, step by step."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mlptrain.base.config import TrainConfig
from mlptrain.core.schedule import WarmUp, build_plateau, build_scheduler, step_plateau, warmup_steps


def optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=lr)


def rates(opt: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    """The rate of each of `steps` batches, stepping the schedule after each as train_epoch does."""
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return seen


def test_warm_up_climbs_linearly_then_cosine_falls_to_zero():
    opt = optimizer()
    got = rates(opt, build_scheduler(opt, TrainConfig(epochs=3, scheduler="cosine", warmup_epochs=1), 12), 12)
    assert got[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # 4 steps an epoch: one epoch of warm-up
    assert got[4] == 0.1 and all(a > b for a, b in itertools.pairwise(got[4:]))
    assert got[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_warm_up_before_a_constant_rate_or_plateau_leaves_the_rate_alone_after():
    for scheduler in ("none", "plateau"):
        opt = optimizer()
        schedule = build_scheduler(opt, TrainConfig(epochs=4, scheduler=scheduler, warmup_epochs=0.5), 16)
        assert isinstance(schedule, WarmUp) and schedule.warmup == 2  # half an epoch of 4 steps
        assert rates(opt, schedule, 4) == [0.05, 0.1, 0.1, 0.1]
        opt.param_groups[0]["lr"] = 0.01  # a plateau's cut
        assert rates(opt, schedule, 3) == [0.01, 0.01, 0.01]


def test_without_warm_up_the_schedules_are_the_ones_runs_have_always_had():
    opt = optimizer()
    assert isinstance(
        build_scheduler(opt, TrainConfig(scheduler="cosine"), 10), torch.optim.lr_scheduler.CosineAnnealingLR
    )
    assert build_scheduler(opt, TrainConfig(scheduler="none"), 10) is None
    assert build_scheduler(opt, TrainConfig(scheduler="plateau"), 10) is None  # plateau steps per epoch alone
    assert build_plateau(opt, TrainConfig(scheduler="cosine")) is None


def test_a_fraction_of_an_epoch_warms_up_over_at_least_one_step():
    assert warmup_steps(TrainConfig(epochs=2, scheduler="none", warmup_epochs=0.01), 10) == 1
    assert warmup_steps(TrainConfig(epochs=2, scheduler="none", warmup_epochs=1.5), 10) == 15
    assert warmup_steps(TrainConfig(epochs=2, scheduler="none"), 10) == 0


@pytest.mark.parametrize(("monitor", "stalled", "better"), [("val_acc", 0.5, 0.6), ("val_loss", 0.5, 0.4)])
def test_plateau_cuts_the_rate_after_plateau_patience_epochs_without_improvement(monitor, stalled, better):
    opt = optimizer()
    cfg = TrainConfig(scheduler="plateau", monitor=monitor, plateau_patience=2, plateau_factor=0.5)
    plateau = build_plateau(opt, cfg)
    seen = []
    for epoch, value in enumerate([stalled, stalled, stalled, better, stalled, stalled, stalled], 1):
        step_plateau(plateau, cfg, epoch, 10, value)
        seen.append(opt.param_groups[0]["lr"])
    # epoch 1 improves on nothing; 2 and 3 do not: cut; 4 improves; 5 and 6 do not: cut; 7 counts afresh
    assert seen == [0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]


def test_plateau_counts_only_improvements_by_more_than_min_delta():
    opt = optimizer()
    cfg = TrainConfig(scheduler="plateau", plateau_patience=1, min_delta=0.05)
    plateau = build_plateau(opt, cfg)
    for epoch, value in enumerate([0.5, 0.54, 0.6], 1):  # 0.54 is not 0.05 past 0.5; 0.6 is
        step_plateau(plateau, cfg, epoch, 10, value)
        if epoch == 2:
            assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    assert plateau.num_bad_epochs == 0 and plateau.best == 0.6


def test_plateau_does_not_judge_epochs_that_end_inside_the_warm_up():
    opt = optimizer()
    cfg = TrainConfig(epochs=5, scheduler="plateau", plateau_patience=1, warmup_epochs=1.5)
    plateau = build_plateau(opt, cfg)
    step_plateau(plateau, cfg, 1, 10, 0.5)  # ends at step 10 of a 15-step warm-up
    assert plateau.last_epoch == 0
    step_plateau(plateau, cfg, 2, 10, 0.5)
    assert plateau.last_epoch == 1 and plateau.best == 0.5
