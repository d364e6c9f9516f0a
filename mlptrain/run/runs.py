"""Run folders: the files a run folder holds, and the runs read back from them.

Plain files only, no torch, so listing a folder of runs is instant. `mlptrain eval CKPT` records its result as
`<checkpoint stem>.<split>.json` next to the checkpoint (`best.test.json` for `best.pt` on the test split);
that record is where a listing finds a run's test accuracy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mlptrain.base.config import read_yaml
from mlptrain.base.errors import ConfigError, DataError, RunFailed
from mlptrain.base.files import file_problem, folder_lock, make_dirs, new_run_dir, not_there
from mlptrain.base.keys import applies
from mlptrain.base.metrics import MONITORS, History, best_index, read_metrics
from mlptrain.base.yamlfile import kind_of

# What a run folder holds.
CONFIG_FILE = "config.yaml"  # the resolved config the run trains (train.epochs grows when a run is extended)
METRICS_FILE = "metrics.csv"  # a row per finished epoch (metrics.py)
LAST_FILE = "last.pt"  # the latest checkpoint: what --resume continues
BEST_FILE = "best.pt"  # the checkpoint of the best epoch on train.monitor
CURVES_FILE = "curves.png"  # the training curves, drawn when the run ends and by `mlptrain plot`
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files, with output.tensorboard: true (tblog.py)
MLFLOW_FILE = "mlflow.json"  # its MLflow run's id, with output.mlflow (mlflowlog.py); a sweep folder's: the parent's
# What a run writes.
RUN_FILES = (CONFIG_FILE, METRICS_FILE, LAST_FILE, BEST_FILE, CURVES_FILE, TENSORBOARD_DIR, MLFLOW_FILE)
# `mlptrain train` names folders <name>-<YYYYmmdd-HHMMSS>, with -2, -3... for runs started in the same second.
_STAMP_RE = re.compile(r"-(\d{8}-\d{6})(?:-(\d+))?$")
# Keys that say where a run lives rather than how it trained; they differ without making runs different.
_PLACE_KEYS = ("name", "output.dir")
MAX_RECORD_BYTES = 1_000_000  # an eval record is a few kilobytes


@dataclass
class RunSummary:
    """One run folder. Accuracies are fractions; None where the run has no such number (yet)."""

    path: Path
    started: datetime
    config: dict[str, Any]  # as config.yaml holds it, unvalidated: an old run still lists
    history: History
    test_acc: float | None = None  # from best.test.json, once `mlptrain eval best.pt` has run
    problems: list[str] = field(default_factory=list)  # what could not be read, e.g. a damaged metrics.csv row

    @property
    def settings(self) -> dict[str, Any]:
        """The config as dotted keys: {'train.lr': 0.1, ...}."""
        return flatten(self.config)

    @property
    def epochs_planned(self) -> int | None:
        train = self.config.get("train")
        epochs = train.get("epochs") if isinstance(train, dict) else None
        return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None

    @property
    def best_epoch(self) -> int:
        """The epoch best.pt holds (0 before any); see metrics.History."""
        return self.history.best_epoch

    @property
    def best_val_acc(self) -> float | None:
        best = self.history.best
        return None if best is None else best.val_acc

    @property
    def best_value(self) -> float | None:
        """The monitored metric (val_acc or val_loss) at the best epoch."""
        return self.history.best_value

    @property
    def seconds(self) -> float:
        """Training and validation time over all epochs (loading data and writing files excluded)."""
        return sum(s.train_seconds + s.val_seconds for s in self.history.epochs)

    def to_json(self, keys: list[str]) -> dict[str, Any]:
        flat = self.settings
        return {
            "run": self.path.name,
            "path": str(self.path),
            "started": self.started.isoformat(timespec="seconds"),
            "epochs": len(self.history),
            "epochs_planned": self.epochs_planned,
            "best_epoch": self.best_epoch or None,
            "best_val_acc": self.best_val_acc,
            "test_acc": self.test_acc,
            "seconds": self.seconds,
            "differs": {key: flat.get(key) for key in keys},
            "config": self.config,
        }


@contextlib.contextmanager
def claimed_run_dir(run_dir: Path | None, output_dir: Path, name: str, force: bool) -> Iterator[Path]:
    """The folder of a new run, held by this process (files.folder_lock) while the block runs: `run_dir`, or a
    new `output_dir/<name>-<timestamp>`, created now (before any data is loaded, so a bad place fails fast).

    A folder that holds any of the files a run writes (RUN_FILES) is refused unless `force`, naming them. If the
    block stops or fails (other than by a diverged loss) before the run has a last.pt to resume from, what it made
    goes again: a folder it created is removed (and the output folder, if it was made for this run alone), and from
    a folder that existed the files it created; every file that was there before stays.
    """
    if run_dir is None:
        made_output = not Path(output_dir).exists()
        folder, created = new_run_dir(output_dir, name), True
    else:
        made_output = False
        folder = Path(run_dir)
        created = make_dirs(folder)
    try:
        with folder_lock(folder):
            found = [] if created else run_files(folder)
            if found and not force:
                raise ConfigError(_held_files(folder, found))
            try:
                yield folder
            except RunFailed:
                raise  # a run whose loss diverged keeps its folder: its metrics.csv says when
            except BaseException:
                if not (folder / LAST_FILE).exists():  # nothing to resume: leave nothing behind
                    _remove_run(folder, created, found)
                raise
    except BaseException:
        for made in [folder] * created + [Path(output_dir)] * made_output:  # made for this run alone, and empty
            with contextlib.suppress(OSError):
                made.rmdir()
        raise


def run_files(folder: Path) -> list[str]:
    """The names of RUN_FILES that `folder` holds now (a folder listed with a slash)."""
    return [f"{name}/" if (folder / name).is_dir() else name for name in RUN_FILES if os.path.lexists(folder / name)]


def _held_files(folder: Path, found: list[str]) -> str:
    if LAST_FILE in found:
        return (
            f"{folder} already holds a run ({LAST_FILE}); continue it with --resume {folder}, "
            "overwrite it with --force, or pick another --run-dir"
        )
    return (
        f"{folder} holds {', '.join(found)}, which a new run would write over; overwrite them with --force, "
        "or pick another --run-dir"
    )


def _remove_run(folder: Path, created: bool, found: list[str]) -> None:
    """What a run that failed before its first checkpoint made: the folder it created, else the files of
    RUN_FILES it created (not those it `found` there)."""
    if created:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for name in RUN_FILES:
        if name in found or f"{name}/" in found:
            continue
        if (folder / name).is_dir() and not (folder / name).is_symlink():
            shutil.rmtree(folder / name, ignore_errors=True)
        else:
            (folder / name).unlink(missing_ok=True)


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier run left in `run_dir` (--force): none of it belongs to the new one."""
    for stale in (METRICS_FILE, BEST_FILE, LAST_FILE, MLFLOW_FILE):  # (a new MLflow run's id is written after)
        (run_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)  # else its steps would stand for the new run's


def is_run(folder: Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def eval_record_path(checkpoint: Path, split: str) -> Path:
    """Where `mlptrain eval` records a checkpoint's score: runs/x/best.pt, test -> runs/x/best.test.json."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.{split}.json")


def read_run(folder: Path) -> RunSummary:
    """Summarise one run folder; a folder without config.yaml is not a run."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not os.path.lexists(config_path):  # one that is there but no file (a FIFO, a folder) is said by read_yaml
        what = not_there(folder, "folder") if not folder.exists() else f"not a run folder (it holds no {CONFIG_FILE})"
        raise DataError(f"{folder}: {what}")
    try:
        config = read_yaml(config_path, CONFIG_FILE)
    except ConfigError as e:
        raise DataError(str(e)) from None
    if not isinstance(config, dict):
        raise DataError(f"{config_path}: the top level must be a mapping of keys to values, got {kind_of(config)}")
    epochs, problems = read_metrics(folder / METRICS_FILE)
    run = RunSummary(folder, _started(folder, config_path), config, History(_monitor(config), epochs), None, problems)
    record = eval_record_path(folder / BEST_FILE, "test")
    try:
        if file_problem(record, "record", MAX_RECORD_BYTES) is None:  # not a pipe, nothing huge
            run.test_acc = float(json.loads(record.read_text(encoding="utf-8"))["accuracy"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # not evaluated yet, or unreadable
        run.test_acc = None
    return run


def _monitor(config: dict[str, Any]) -> str:
    train = config.get("train")
    monitor = train.get("monitor") if isinstance(train, dict) else None
    return monitor if monitor in MONITORS else "val_acc"


def list_runs(folder: Path) -> list[RunSummary]:
    """Every readable run in `folder` (or `folder` itself if it is one), newest first."""
    return scan_runs(folder)[0]


def scan_runs(folder: Path) -> tuple[list[RunSummary], list[str]]:
    """(every run in `folder`, newest first, or `folder` itself if it is one; why each run folder left out could
    not be read). A run folder is one that holds a config.yaml, readable or not: a broken one must not hide the
    others, nor be left out unsaid."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: {not_there(folder, 'folder')} (mlptrain train writes runs into output.dir, 'runs' by default)"
            if not folder.exists()
            else f"{folder} is a file, not a folder of runs"
        )
    if os.path.lexists(folder / CONFIG_FILE):  # a run folder: one that cannot be read is refused, not listed empty
        return [read_run(folder)], []
    runs, unreadable = [], []
    for child in sorted(folder.iterdir()):
        if child.is_dir() and os.path.lexists(child / CONFIG_FILE):
            try:
                runs.append(read_run(child))
            except DataError as e:
                unreadable.append(str(e))
    return sorted(runs, key=lambda r: (r.started, _suffix(r.path)), reverse=True), unreadable


def left_out(unreadable: list[str]) -> list[str]:
    """The warnings for run folders a listing leaves out: one line each, then how many."""
    if not unreadable:
        return []
    count = f"{len(unreadable)} run folder{'s' if len(unreadable) > 1 else ''}"
    return [f"left out: {why}" for why in unreadable] + [f"{count} left out of the listing (unreadable, above)"]


@dataclass
class Scores:
    """Runs' (or a sweep's trials') best scores against their settings: what `mlptrain runs --out` draws."""

    metric: str  # val_acc or val_loss
    keys: list[str]  # the settings that differ
    points: list[tuple[dict[str, Any], float]]  # (settings as dotted keys, best score), for those with a score
    best: int | None  # the position in `points` of the best
    what: str  # 'runs' or 'trials'
    ranges: dict[str, bool] = field(default_factory=dict)  # keys drawn from a range (a sweep's): is the range log


def scores(runs: list[RunSummary], keys: list[str]) -> Scores:
    """Each run's best val_acc against its settings, the best run (the first of equals) marked."""
    scored = [run for run in runs if run.best_val_acc is not None]
    best = best_index((run.best_val_acc for run in scored), "val_acc")
    return Scores("val_acc", keys, [(run.settings, run.best_val_acc) for run in scored], best, "runs")


def differing_keys(runs: list[RunSummary]) -> list[str]:
    """The config keys (dotted, in schema order) whose values are not the same in every run they apply to (the
    augmentation's settings do not differ between runs without one, see keys.applies)."""
    flats = [r.settings for r in runs]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    return [
        key
        for key in keys
        if key not in _PLACE_KEYS
        and len({json.dumps(flat.get(key), sort_keys=True) for flat in flats if applies(key, flat)}) > 1
    ]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 0.1}} -> {'train.lr': 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _started(folder: Path, config_path: Path) -> datetime:
    """The start time in the folder's name, or config.yaml's mtime for a folder named with --run-dir."""
    found = _STAMP_RE.search(folder.name)
    if found:
        try:
            return datetime.strptime(found.group(1), "%Y%m%d-%H%M%S")
        except ValueError:
            pass
    return datetime.fromtimestamp(config_path.stat().st_mtime)


def _suffix(folder: Path) -> int:
    found = _STAMP_RE.search(folder.name)
    return int(found.group(2)) if found and found.group(2) else 1
