"""What a run and a sweep cost beyond their training and validation, from whole commands as processes.

A short and a long `mlptrain train` of the mnist-best model on synthetic digits: the per-epoch overhead is the
difference of their wall times less the difference of their training and validation seconds, over the extra
epochs, as a fraction of the long run's mean epoch. A short and a long sweep of 1-epoch smoke trials on one worker:
the per-trial overhead likewise, in seconds. The differences cancel each command's start-up (the startup section's).
The bench never imports the sweep feature: the sweep runs as a command.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mlptrain.bench.startup import SMOKE_CONFIG, CommandCost, measure

EPOCH_GOAL = 0.05  # per-epoch overhead over the mean epoch
TRIAL_GOAL_SECONDS = 0.1  # per-trial overhead of a sweep
EPOCHS = {False: (2, 12), True: (1, 2)}  # (short, long) runs, full and --quick
TRIALS = {False: (2, 8), True: (1, 2)}  # (short, long) sweeps
# The mnist-best model and recipe on synthetic digits (MNIST is not downloaded); --quick on fewer of them.
RUN_SETTINGS = {
    False: ["data.dataset=synthetic", "data.synthetic_size=3500", "data.val_size=500", "device=cpu"],
    True: ["data.dataset=synthetic", "data.synthetic_size=600", "data.val_size=100", "device=cpu"],
}


@dataclass
class Pair:
    """A short and a long command: how many units (epochs, trials) each ran, its wall seconds, its seconds of
    training and validation, and its peak resident memory (MB)."""

    units: tuple[int, int]
    wall: tuple[float, float]
    work: tuple[float, float]
    peak_mb: tuple[float, float]

    @property
    def overhead(self) -> float:
        """Seconds per extra unit beyond its own training and validation."""
        extra = self.units[1] - self.units[0]
        return ((self.wall[1] - self.wall[0]) - (self.work[1] - self.work[0])) / extra

    @property
    def mean_work(self) -> float:
        """The long command's training and validation seconds per unit."""
        return self.work[1] / self.units[1]


@dataclass
class OverheadResult:
    epochs: Pair  # train of mnist-best on synthetic digits
    trials: Pair | None  # sweeps of 1-epoch smoke trials, one worker; None without optuna (mlptrain[sweep])
    quick: bool = False

    @property
    def epoch_ratio(self) -> float:
        return self.epochs.overhead / self.epochs.mean_work

    def to_json(self) -> dict:
        """The measurements (an overhead derived from them may come out below 0 by noise, so it stays out)."""
        return {"epochs": asdict(self.epochs), "trials": asdict(self.trials) if self.trials else None}


def bench_overhead(quick: bool) -> OverheadResult:
    """Run the four commands, short before long, in a temporary folder that goes after; the sweeps only where
    optuna is installed."""
    sweeping = importlib.util.find_spec("optuna") is not None
    with tempfile.TemporaryDirectory(prefix="mlptrain-overhead-") as tmp:
        folder = Path(tmp)
        runs = [_train(folder, n, quick) for n in EPOCHS[quick]]
        sweeps = [_sweep(folder, n) for n in TRIALS[quick]] if sweeping else None
    trials = _pair(TRIALS[quick], sweeps) if sweeps else None
    return OverheadResult(epochs=_pair(EPOCHS[quick], runs), trials=trials, quick=quick)


def _pair(units: tuple[int, int], costs: list[CommandCost]) -> Pair:
    short, long = costs
    return Pair(
        units=units,
        wall=(short.seconds[0], long.seconds[0]),
        work=(short.work_seconds[0], long.work_seconds[0]),
        peak_mb=(short.peak_mb[0], long.peak_mb[0]),
    )


def _train(folder: Path, epochs: int, quick: bool) -> CommandCost:
    """`mlptrain train mnist-best` for `epochs` epochs on synthetic digits."""
    settings = [*RUN_SETTINGS[quick], f"train.epochs={epochs}"]
    argv = ["-m", "mlptrain", "train", "mnist-best", *[a for s in settings for a in ("--set", s)]]
    cost = CommandCost(f"train {epochs}")
    out = measure(cost, [*argv, "--run-dir", str(folder / f"run-{epochs}"), "--json"], folder)
    cost.work_seconds.append(sum(e["train_seconds"] + e["val_seconds"] for e in json.loads(out)["epochs"]))
    return cost


def _sweep(folder: Path, trials: int) -> CommandCost:
    """A random sweep of `trials` 1-epoch smoke trials (train.lr drawn) on one worker."""
    base = folder / "smoke-1.yaml"
    base.write_text(SMOKE_CONFIG.replace("epochs: 5", "epochs: 1"))
    spec = folder / f"sweep-{trials}.yaml"
    spec.write_text(
        f"base: {base.name}\nmethod: random\ntrials: {trials}\nseed: 0\nparams:\n  train.lr: {{low: 0.05, high: 0.2}}\n"
    )
    out = folder / f"sweep-{trials}"
    cost = CommandCost(f"sweep {trials}")
    measure(cost, ["-m", "mlptrain", "sweep", str(spec), "--dir", str(out), "--quiet", "--workers", "1"], folder)
    work = 0.0
    for metrics in out.glob("*/metrics.csv"):
        with open(metrics, newline="") as f:
            work += sum(float(row["train_seconds"]) + float(row["val_seconds"]) for row in csv.DictReader(f))
    cost.work_seconds.append(work)
    return cost
