"""Run folders read back from their files: config.yaml, metrics.csv and the eval records beside the checkpoints.

Plain files only, no torch, so listing a folder of runs is instant. `mlptrain eval CKPT` records its result as
`<checkpoint stem>.<split>.json` next to the checkpoint (`best.test.json` for `best.pt` on the test split);
that record is where a listing finds a run's test accuracy.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from mlptrain.errors import ConfigError, DataError

# `mlptrain train` names folders <name>-<YYYYmmdd-HHMMSS>, with -2, -3... for runs started in the same second.
_STAMP_RE = re.compile(r"-(\d{8}-\d{6})(?:-(\d+))?$")
# Keys that say where a run lives rather than how it trained; they differ without making runs different.
_PLACE_KEYS = ("name", "output.dir")


@dataclass
class RunSummary:
    """One run folder. Accuracies are fractions; None where the run has no such number (yet)."""

    path: Path
    started: datetime
    config: dict[str, Any]  # as config.yaml holds it, unvalidated: an old run still lists
    history: list[dict[str, float]] = field(default_factory=list)  # metrics.csv's rows
    test_acc: float | None = None  # from best.test.json, once `mlptrain eval best.pt` has run

    @property
    def settings(self) -> dict[str, Any]:
        """The config as dotted keys: {'train.lr': 0.1, ...}."""
        return flatten(self.config)

    @property
    def monitor(self) -> str:
        return str(self.config.get("train", {}).get("monitor", "val_acc"))

    @property
    def epochs_planned(self) -> int | None:
        epochs = self.config.get("train", {}).get("epochs")
        return epochs if isinstance(epochs, int) else None

    @property
    def best_epoch(self) -> int:
        """The epoch best.pt holds: the first with the highest val_acc (or lowest val_loss); 0 before any.

        An epoch whose loss diverged (not finite) never becomes best.pt, whatever its accuracy.
        """
        columns = ("train_loss", "val_loss", self.monitor)
        finite = [r for r in self.history if all(math.isfinite(r[c]) for c in columns)]
        if not finite:
            return 0
        pick = max if self.monitor == "val_acc" else min
        return int(pick(finite, key=lambda r: r[self.monitor])["epoch"])

    @property
    def best_val_acc(self) -> float | None:
        return self._at_best_epoch("val_acc")

    @property
    def best_value(self) -> float | None:
        """The monitored metric (val_acc or val_loss) at the best epoch."""
        return self._at_best_epoch(self.monitor)

    def _at_best_epoch(self, column: str) -> float | None:
        best = self.best_epoch
        return next((r[column] for r in self.history if int(r["epoch"]) == best), None)

    @property
    def seconds(self) -> float:
        """Training and validation time over all epochs (loading data and writing files excluded)."""
        return sum(r["train_seconds"] + r["val_seconds"] for r in self.history)

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


def eval_record_path(checkpoint: Path, split: str) -> Path:
    """Where `mlptrain eval` records a checkpoint's score: runs/x/best.pt, test -> runs/x/best.test.json."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.{split}.json")


def read_run(folder: Path) -> RunSummary:
    """Summarise one run folder; a folder without config.yaml is not a run."""
    folder = Path(folder)
    config_path = folder / "config.yaml"
    if not config_path.is_file():
        what = "no such folder" if not folder.exists() else "not a run folder (it holds no config.yaml)"
        raise DataError(f"{folder}: {what}")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{config_path}: unreadable ({type(e).__name__})") from None
    run = RunSummary(
        path=folder, started=_started(folder, config_path), config=config if isinstance(config, dict) else {}
    )
    run.history = read_metrics(folder / "metrics.csv")
    record = eval_record_path(folder / "best.pt", "test")
    try:
        run.test_acc = float(json.loads(record.read_text(encoding="utf-8"))["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):  # not evaluated yet, or a record we cannot read
        run.test_acc = None
    return run


def read_metrics(path: Path) -> list[dict[str, float]]:
    """metrics.csv's rows as numbers; none if the file is missing or unreadable (a run that has not begun)."""
    try:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError, TypeError):
        return []


def list_runs(folder: Path) -> list[RunSummary]:
    """Every run in `folder` (or `folder` itself if it is one), newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: no such folder (mlptrain train writes runs into output.dir, 'runs' by default)"
            if not folder.exists()
            else f"{folder} is a file, not a folder of runs"
        )
    if (folder / "config.yaml").is_file():
        return [read_run(folder)]
    runs = []
    for child in folder.iterdir():
        if child.is_dir() and (child / "config.yaml").is_file():
            try:
                runs.append(read_run(child))
            except DataError:  # one broken folder must not hide the others
                continue
    return sorted(runs, key=lambda r: (r.started, _suffix(r.path)), reverse=True)


def differing_keys(runs: list[RunSummary]) -> list[str]:
    """The config keys (dotted, in schema order) whose values are not the same in every run."""
    flats = [r.settings for r in runs]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    return [
        key
        for key in keys
        if key not in _PLACE_KEYS and len({json.dumps(flat.get(key), sort_keys=True) for flat in flats}) > 1
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
