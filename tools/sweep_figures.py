"""The sweep figures the README quotes: TPE against random with the same budget, and median pruning against none.

    .venv/bin/python tools/sweep_figures.py [SEEDS] [--only tpe|pruning] [--out DIR]

1. TPE against random: for each seed 0 … SEEDS-1 (default 5), a 16-trial sweep of `train.lr` (log range) and
   `model.hidden` (5 widths) over a small synthetic base (1,500 digits, 300 validate, 2 epochs, batch 64), once
   with `method: random` and once with `method: tpe`; prints each best validation accuracy and the tally.
2. Median pruning: a grid of 8 learning rates over 6,000 digits (1,000 validate), hidden [128], 6 epochs each,
   four of them hopeless (1e-6 … 2e-5), once with `pruner: none` and once with `pruner: {name: median,
   startup_trials: 2}`; prints trials pruned, epochs trained, wall seconds and the best trial of each.

Each sweep runs as a user would run it (`mlptrain sweep FILE --dir D --json`), one at a time, on synthetic digits:
the numbers say how the samplers and the pruner behave, not what they reach on MNIST.
Exits 1 if a sweep fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BASE = {
    "name": "fig",
    "device": "cpu",
    "data": {"dataset": "synthetic", "synthetic_size": 1500, "val_size": 300},
    "model": {"hidden": [64]},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.1},
}
SEARCH = {
    "train.lr": {"low": 0.0001, "high": 3.0, "log": True},
    "model.hidden": [[8], [16], [32], [64], [128]],
}
PRUNE_LRS = [1e-6, 3e-6, 1e-5, 2e-5, 0.03, 0.1, 0.3, 1.0]
# Trials long enough (about a second each) that the time pruning saves is not lost in each trial's set-up.
PRUNE_BASE = {**BASE, "data": {**BASE["data"], "synthetic_size": 6000, "val_size": 1000}, "model": {"hidden": [128]},
              "train": {**BASE["train"], "epochs": 6}}  # fmt: skip


def sweep(folder: Path, spec: dict, base: dict) -> tuple[list[dict], float]:
    """Run one sweep in `folder` through the CLI; its trials as `sweep --json` gives them, and its wall seconds."""
    folder.mkdir(parents=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"base": "base.yaml", **spec}))
    command = [sys.executable, "-m", "mlptrain", "sweep", str(folder / "sweep.yaml"), "--dir", str(folder / "sw")]
    t0 = time.perf_counter()
    done = subprocess.run([*command, "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"sweep in {folder} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout), seconds


def best(trials: list[dict]) -> dict:
    return next(t for t in trials if t["best"])


def tpe_against_random(root: Path, seeds: int) -> None:
    print("TPE against random: 16 trials, lr log-uniform 1e-4 … 3, hidden [8] … [128]; best val accuracy %")
    tally = {"better": 0, "equal": 0, "worse": 0}
    means = {"random": [], "tpe": []}
    for seed in range(seeds):
        accs = {}
        for method in ("random", "tpe"):
            spec = {"method": method, "trials": 16, "seed": seed, "params": SEARCH}
            trials, _ = sweep(root / f"{method}-{seed}", spec, BASE)
            accs[method] = 100 * best(trials)["best_val_acc"]
            means[method].append(accs[method])
        diff = accs["tpe"] - accs["random"]
        tally["better" if diff > 1e-9 else "worse" if diff < -1e-9 else "equal"] += 1
        print(f"  seed {seed}: random {accs['random']:.2f}  tpe {accs['tpe']:.2f}", flush=True)
    mean = {m: sum(v) / len(v) for m, v in means.items()}
    print(
        f"  TPE better in {tally['better']} of {seeds}, equal in {tally['equal']}, worse in {tally['worse']}; "
        f"means random {mean['random']:.1f}, tpe {mean['tpe']:.1f}"
    )


def pruning(root: Path) -> None:
    epochs, size = PRUNE_BASE["train"]["epochs"], PRUNE_BASE["data"]["synthetic_size"]
    print(f"Median pruning: grid of {len(PRUNE_LRS)} learning rates, {epochs} epochs each, {size:,} digits, [128]")
    base = PRUNE_BASE
    for name, pruner in (("none", "none"), ("median", {"name": "median", "startup_trials": 2})):
        spec = {"method": "grid", "seed": 0, "params": {"train.lr": PRUNE_LRS}, "pruner": pruner}
        trials, seconds = sweep(root / f"prune-{name}", spec, base)
        pruned = [t for t in trials if t["state"] == "pruned"]
        top = best(trials)
        lrs = ", ".join(f"{t['values']['train.lr']:g}" for t in pruned)
        print(
            f"  pruner {name}: {len(pruned)} pruned (lr {lrs}), "
            f"{sum(t['epochs'] for t in trials)} epochs trained, {seconds:.1f} s in all, "
            f"best lr {top['values']['train.lr']:g} at {100 * top['best_val_acc']:.1f}%",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="?", type=int, default=5, help="seeds of the TPE/random comparison")
    parser.add_argument("--only", choices=["tpe", "pruning"], help="run one of the two measurements")
    parser.add_argument("--out", type=Path, help="keep the sweep folders here (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        if args.only != "pruning":
            tpe_against_random(root, args.seeds)
        if args.only != "tpe":
            pruning(root)


if __name__ == "__main__":
    main()
