"""Warm-up, plateau and min_delta in whole runs: what metrics.csv shows, and a stopped run resumed bit for bit."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
import test_trainer
import torch
from conftest import StopAt

from mlptrain.base.config import Config
from mlptrain.base.errors import CheckpointError, Interrupted
from mlptrain.run import trainer
from mlptrain.run.checkpoint import load_checkpoint
from mlptrain.run.interrupt import StopRequest

TINY = {**test_trainer.TINY, "train": {**test_trainer.TINY["train"], "scheduler": "cosine"}}
# Each stops somewhere its schedule has state to lose: inside the warm-up, after plateau has counted bad epochs.
WARMUP = {"epochs": 4, "scheduler": "cosine", "warmup_epochs": 1.5}
PLATEAU = {"epochs": 6, "scheduler": "plateau", "warmup_epochs": 0.5, "plateau_patience": 1, "plateau_factor": 0.5}
MIN_DELTA = {"epochs": 5, "scheduler": "none", "patience": 1, "min_delta": 0.02}


def tiny(**train) -> Config:
    return Config.from_dict({**TINY, "train": {**TINY["train"], **train}})


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.endswith("seconds") and k != "samples_per_second"}
                for row in csv.DictReader(f)]  # fmt: skip


def rates(run_dir: Path) -> list[float]:
    return [float(row["lr"]) for row in rows(run_dir)]


def assert_same_checkpoints(a: Path, b: Path) -> None:
    for name in ("last.pt", "best.pt"):
        ca, cb = (torch.load(d / name, weights_only=True) for d in (a, b))
        assert ca["epoch"] == cb["epoch"]
        assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in cb["model"]), name
        assert ca["scheduler"] == cb["scheduler"] and ca.get("plateau") == cb.get("plateau"), name


@pytest.fixture(scope="module", params=["warmup", "plateau", "min_delta"])
def reference(request, tmp_path_factory) -> tuple[dict, Path]:
    """An uninterrupted run of each schedule, which every stopped and resumed one must match."""
    train = {"warmup": WARMUP, "plateau": PLATEAU, "min_delta": MIN_DELTA}[request.param]
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    trainer.train(tiny(**train), run_dir=run_dir, curves=False)
    return train, run_dir


@pytest.mark.parametrize(("epoch", "batch"), [(1, 7), (2, 0), (2, 20), (3, 0)])
def test_stopped_and_resumed_is_the_uninterrupted_run(reference, tmp_path, epoch, batch):
    train, ref = reference
    if epoch > len(rows(ref)):
        pytest.skip("the reference stopped early before this place")
    run_dir, stop = tmp_path / "run", StopRequest()
    with pytest.raises(Interrupted):
        trainer.train(tiny(**train), run_dir=run_dir, callbacks=StopAt(stop, epoch, batch), stop=stop, curves=False)
    result = trainer.resume(run_dir, curves=False)
    assert rows(run_dir) == rows(ref)
    assert_same_checkpoints(run_dir, ref)
    stopped_early = len(rows(ref)) < train["epochs"]
    assert (result.stopped_early or result.already_finished) == stopped_early  # stopped after its last epoch: done


def test_the_references_show_what_each_schedule_does(reference):
    train, ref = reference
    lr = rates(ref)
    if train is WARMUP:  # 1.5 epochs of warm-up: the rate climbs through the first, then falls
        assert lr[0] < lr[1] > lr[2] > lr[3]
    elif train is PLATEAU:  # cut by half at least once, never raised again
        assert lr[0] == 0.1 and lr[-1] < 0.1 and all(a >= b for a, b in itertools.pairwise(lr))
        assert set(lr) <= {0.1 * 0.5**k for k in range(len(lr))}
    else:  # patience 1 with min_delta: it stopped before its 5 epochs
        assert len(lr) < 5


def test_warm_up_makes_the_rate_rise_over_its_epochs(tmp_path):
    result = trainer.train(tiny(epochs=4, warmup_epochs=2), run_dir=tmp_path / "r", curves=False)
    lr = [s.lr for s in result.history]
    assert lr[0] < lr[1] and lr[1] > lr[2] > lr[3]
    assert lr[0] == pytest.approx(0.05, rel=0.05)  # the last batch of epoch 1 of 2: about half the rate


def test_plateau_cuts_the_rate_after_its_patience_of_bad_epochs(tmp_path):
    # A rate so small that nothing changes: epoch 1 is the only improvement, so the rate is cut after epochs 3 and 5.
    config = tiny(epochs=6, lr=1e-12, scheduler="plateau", plateau_patience=2, plateau_factor=0.1)
    result = trainer.train(config, run_dir=tmp_path / "r", curves=False)
    assert [s.lr for s in result.history] == pytest.approx([1e-12, 1e-12, 1e-12, 1e-13, 1e-13, 1e-14])
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ckpt["plateau"]["num_bad_epochs"] == 1 and ckpt["scheduler"] is None


def test_min_delta_stops_a_run_whose_improvements_are_too_small(tmp_path):
    result = trainer.train(tiny(epochs=5, patience=1, min_delta=0.5), run_dir=tmp_path / "r", curves=False)
    assert result.stopped_early and [s.epoch for s in result.history] == [1, 2]
    # best.pt still follows any improvement: the rule that picks the best epoch has no min_delta
    values = [s.val_acc for s in result.history]
    assert result.best_epoch == (2 if values[1] > values[0] else 1)
    assert load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == result.best_epoch
    assert trainer.resume(tmp_path / "r").already_finished


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda p: p.pop("num_bad_epochs"), "plateau.num_bad_epochs"),
        (lambda p: p.update(best=float("nan")), "plateau.best"),
        (lambda p: p.update(mode="up"), "plateau.mode"),
    ],
)
def test_a_damaged_plateau_state_is_refused(tmp_path, change, needle):
    trainer.train(tiny(epochs=2, scheduler="plateau"), run_dir=tmp_path / "r", curves=False)
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    change(ckpt["plateau"])
    torch.save(ckpt, tmp_path / "r" / "last.pt")
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(tmp_path / "r" / "last.pt")
