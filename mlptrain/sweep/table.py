"""Reading a sweep back: its trials ranked on the monitored metric (`mlptrain sweep`'s closing table), what
`mlptrain runs DIR` lists (a folder of runs, or a sweep's trials), and the study's own picture for `runs --out`.
No torch; optuna only for the study's picture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlptrain.base.errors import DataError
from mlptrain.base.metrics import ranked
from mlptrain.run.runs import RunSummary, Scores, differing_keys, is_run, left_out, read_run, scan_runs, scores
from mlptrain.sweep.folder import Trial, is_sweep, load


@dataclass
class TrialRow:
    trial: Trial
    run: RunSummary | None  # None until the trial has a run folder
    best: bool = False  # the best finished trial

    @property
    def value(self) -> float | None:
        """The monitored metric at the trial's best epoch (None before its first finished epoch)."""
        return self.run.best_value if self.run else None

    def to_json(self, monitor: str, keys: list[str]) -> dict[str, Any]:
        run = self.run
        return {
            "trial": self.trial.index,
            "run": self.trial.dir,
            "state": self.trial.state,
            "reason": self.trial.reason or None,
            "number": self.trial.number,
            "best": self.best,
            "monitor": monitor,
            "value": self.value,
            "best_epoch": (run.best_epoch or None) if run else None,
            "best_val_acc": run.best_val_acc if run else None,
            "test_acc": run.test_acc if run else None,
            "epochs": len(run.history) if run else 0,
            "seconds": run.seconds if run else 0.0,
            "differs": {key: self.trial.values.get(key) for key in keys},
            "values": self.trial.values,
        }


@dataclass
class SweepTable:
    folder: Path
    method: str  # grid, random or tpe: how the trials' values were picked
    monitor: str
    keys: list[str]  # the swept keys whose values differ between trials
    rows: list[TrialRow]  # best first on `monitor`; trials without a number yet last, in order
    unreadable: list[str] = field(default_factory=list)  # why each trial's run folder that could not be read
    ranges: dict[str, bool] = field(default_factory=dict)  # the keys swept over a range: is the range log

    def to_json(self) -> list[dict[str, Any]]:
        return [row.to_json(self.monitor, self.keys) for row in self.rows]

    def scores(self) -> Scores:
        """Each trial's best score on the monitor against its swept values, the best finished trial marked."""
        scored = [row for row in self.rows if row.value is not None]
        best = next((i for i, row in enumerate(scored) if row.best), None)
        points = [(row.trial.values, row.value) for row in scored]
        ranges = {key: log for key, log in self.ranges.items() if key in self.keys}
        return Scores(self.monitor, self.keys, points, best, "trials", ranges)

    @property
    def problems(self) -> list[str]:
        """What could not be read in the trials' run folders."""
        return [problem for row in self.rows if row.run for problem in row.run.problems] + left_out(self.unreadable)


def table(folder: Path) -> SweepTable:
    """The sweep's trials, sorted by the base config's monitored metric, with the best finished one marked."""
    sweep = load(folder)
    monitor = sweep.monitor
    rows, unreadable = [], []
    for trial in sweep.trials:
        run = None
        try:
            run = read_run(sweep.folder / trial.dir) if is_run(sweep.folder / trial.dir) else None
        except DataError as e:  # listed without its scores, and said
            unreadable.append(str(e))
        rows.append(TrialRow(trial, run))
    rows = ranked(rows, lambda row: row.value, monitor)  # trials in order, so equals stay in trial order
    done = [r for r in rows if r.trial.state == "done" and r.value is not None]
    if done:
        done[0].best = True
    varied = [k for k in sweep.spec.params if len({json.dumps(t.values[k]) for t in sweep.trials}) > 1]
    ranges = {key: bool(how.get("log")) for key, how in sweep.spec.params.items() if isinstance(how, dict)}
    return SweepTable(sweep.folder, sweep.spec.method, monitor, varied, rows, unreadable, ranges)


def draw_study(folder: Path, out: Path) -> list[Path]:
    """`runs SWEEP_DIR --out FILE.png` also draws FILE-study.png (study.progress, plot.save_study_plot); nothing for
    a folder that is not a sweep, or a version-1 sweep with no study yet."""
    sweep = load(folder) if is_sweep(folder) else None
    if sweep is None or (sweep.version == 1 and sweep.storage is None):
        return []
    from mlptrain.run.plot import save_study_plot
    from mlptrain.sweep import start

    history, importance = start.engine().progress(sweep)
    path = Path(out).with_name(f"{Path(out).stem}-study.png")
    what = f"{sweep.spec.method}, {len(history)} of {sweep.total} trials done"
    save_study_plot(path, history, importance, sweep.monitor, f"{folder}: {what}")
    return [path]


@dataclass
class Listing:
    """What `mlptrain runs DIR` shows: the runs in a folder, newest first, or a sweep's trials, best first."""

    folder: Path
    runs: list[RunSummary]
    keys: list[str]  # the settings that differ
    sweep: SweepTable | None = None
    unreadable: list[str] = field(default_factory=list)  # why each run folder left out could not be read

    @property
    def problems(self) -> list[str]:
        """What the listing warns of: damaged rows in the runs it shows, and each run it leaves out, counted."""
        if self.sweep:
            return self.sweep.problems
        return [p for run in self.runs for p in run.problems] + left_out(self.unreadable)

    def to_json(self) -> list[dict[str, Any]]:
        return self.sweep.to_json() if self.sweep else [run.to_json(self.keys) for run in self.runs]

    def scores(self) -> Scores:
        return self.sweep.scores() if self.sweep else scores(self.runs, self.keys)


def listing(folder: Path) -> Listing:
    """The runs in `folder` (or `folder` itself if it is one), or the trials if it is a sweep's folder."""
    if is_sweep(folder):
        found = table(folder)
        return Listing(Path(folder), [], found.keys, found)
    found, unreadable = scan_runs(folder)
    return Listing(Path(folder), found, differing_keys(found), unreadable=unreadable)
