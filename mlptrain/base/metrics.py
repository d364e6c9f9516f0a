"""The epoch record, metrics.csv, and the one rule for which epoch (or run) is best.

Everything that writes, reads, ranks or labels epoch numbers asks this module. Plain Python, no torch, so reading
a folder of runs back stays instant.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TypeVar

from mlptrain.base.files import atomic_write_text, file_problem

T = TypeVar("T")


def _column(label: str, unit: str, **default):
    return field(metadata={"label": label, "unit": unit}, **default)


@dataclass
class EpochStats:
    """One finished epoch: a row of metrics.csv. Accuracies are fractions in [0, 1]; `lr` is the rate of the
    epoch's last step. Each field's metadata says how a person reads it: its label and its unit."""

    epoch: int = _column("epoch", "count")
    train_loss: float = _column("train loss", "loss")
    train_acc: float = _column("train acc", "fraction")
    val_loss: float = _column("val loss", "loss")
    val_acc: float = _column("val acc", "fraction")
    lr: float = _column("lr", "rate")
    train_seconds: float = _column("time", "seconds")
    val_seconds: float = _column("val time", "seconds")
    samples_per_second: float = _column("samples/s", "throughput")
    clipped_steps: int = _column("clipped", "count", default=0)  # steps train.grad_clip_norm cut; older files: 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def diverged(self) -> bool:
        """A loss that is not a finite number: the run cannot go on, and this epoch is never the best."""
        return not (math.isfinite(self.train_loss) and math.isfinite(self.val_loss))


COLUMNS = tuple(f.name for f in fields(EpochStats))  # metrics.csv's header, in order
LABELS = {f.name: f.metadata["label"] for f in fields(EpochStats)}
UNITS = {f.name: f.metadata["unit"] for f in fields(EpochStats)}
_OPTIONAL = {f.name: f.default for f in fields(EpochStats) if f.default is not MISSING}  # columns added later
MONITORS = ("val_acc", "val_loss")  # what train.monitor may name
_HIGHER_IS_BETTER = {"val_acc": True, "val_loss": False}
_MAY_DIVERGE = ("train_loss", "val_loss")  # the columns a diverged epoch records as NaN or inf


def metric_text(unit: str, value: float) -> str:
    """A metrics.csv value as a person reads it, by its unit (UNITS): fractions as percentages."""
    if unit == "fraction":
        return f"{100 * value:.2f}%"
    if unit == "loss":
        return f"{value:.4f}"
    if unit == "rate":
        return f"{value:.4g}"
    if unit == "seconds":
        return f"{value:.2f}s"
    if unit == "throughput":
        return f"{value:,.0f}"
    return str(value)


def is_better(monitor: str, value: float, best: float | None) -> bool:
    """Whether `value` of `monitor` beats `best` (None: nothing to beat yet).

    Higher is better for val_acc, lower for val_loss. A tie is not better, so the earlier of two equal epochs (or
    runs) stays the best; a NaN or infinite value never is.
    """
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if _HIGHER_IS_BETTER[monitor] else value < best


def improves(monitor: str, value: float, reference: float | None, min_delta: float = 0.0) -> bool:
    """Whether `value` of `monitor` is an improvement on `reference` (the last improvement's value; None: nothing
    yet) for train.patience and plateau: better by more than `min_delta`, as Keras's EarlyStopping has it. With
    min_delta 0 it is is_better; best.pt follows is_better alone."""
    if not math.isfinite(value):
        return False
    if reference is None:
        return True
    return value > reference + min_delta if _HIGHER_IS_BETTER[monitor] else value < reference - min_delta


def direction(monitor: str) -> str:
    """Which way `monitor` improves, in the words of an optimiser: 'maximize' (val_acc) or 'minimize' (val_loss)."""
    return "maximize" if _HIGHER_IS_BETTER[monitor] else "minimize"


def best_index(values: Iterable[float | None], monitor: str) -> int | None:
    """The position of the best of `values` by is_better (the first of equals); None if none counts."""
    best, found = None, None
    for i, value in enumerate(values):
        if value is not None and is_better(monitor, value, best):
            best, found = value, i
    return found


def ranked(items: Sequence[T], value: Callable[[T], float | None], monitor: str) -> list[T]:
    """`items` best first on `monitor`; equals keep their order, and items without a finite value go last."""

    def key(item: T) -> tuple[bool, float]:
        v = value(item)
        if v is None or not math.isfinite(v):
            return True, 0.0
        return False, -v if _HIGHER_IS_BETTER[monitor] else v

    return sorted(items, key=key)


@dataclass
class History:
    """A run's finished epochs, in order, and which of them is best on `monitor` (derived, never stored)."""

    monitor: str
    epochs: list[EpochStats] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epochs)

    def __iter__(self) -> Iterator[EpochStats]:
        return iter(self.epochs)

    @property
    def best_epoch(self) -> int:
        """The epoch best.pt holds: the first best on the monitor among epochs that did not diverge; 0 before any."""
        usable = [s for s in self.epochs if not s.diverged]
        index = best_index((getattr(s, self.monitor) for s in usable), self.monitor)
        return 0 if index is None else usable[index].epoch

    def last_improvement(self, min_delta: float = 0.0) -> int:
        """The last epoch that improved on the one before it that did (by more than `min_delta`, see improves),
        the first counting; 0 before any. What train.patience counts from; with min_delta 0, best_epoch."""
        reference, found = None, 0
        for s in self.epochs:
            value = getattr(s, self.monitor)
            if not s.diverged and improves(self.monitor, value, reference, min_delta):
                reference, found = value, s.epoch
        return found

    @property
    def best(self) -> EpochStats | None:
        best = self.best_epoch
        return next((s for s in self.epochs if s.epoch == best), None)

    @property
    def best_value(self) -> float | None:
        """The monitored metric of the best epoch."""
        best = self.best
        return None if best is None else getattr(best, self.monitor)


def write_metrics(path: Path, epochs: Sequence[EpochStats]) -> None:
    """metrics.csv, rewritten whole and atomically; floats at full precision so they can be compared exactly."""
    atomic_write_text(path, metrics_text(epochs))


def metrics_text(epochs: Sequence[EpochStats]) -> str:
    """What metrics.csv holds for `epochs`: its header, then a row per epoch."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for stats in epochs:
        writer.writerow([repr(v) if isinstance(v, float) else v for v in stats.as_dict().values()])
    return buf.getvalue()


def read_metrics(path: Path) -> tuple[list[EpochStats], list[str]]:
    """(metrics.csv's rows, what was wrong with it): a missing file is no rows and no problem (a run that has not
    finished an epoch); a row that cannot be read is skipped and said, and the others are kept."""
    problem = file_problem(path, "metrics file")
    if problem and Path(path).exists():
        return [], [problem]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return [], [f"{path}: unreadable ({type(e).__name__})"]
    if not lines:
        return [], []
    header, rows = lines[0], lines[1:]
    missing = [c for c in COLUMNS if c not in header and c not in _OPTIONAL]
    if missing:
        return [], [f"{path}: not a metrics file (no column {', '.join(missing)})"]
    epochs, problems = [], []
    for number, cells in enumerate(rows, 2):
        try:
            epochs.append(_stats(dict(zip(header, cells, strict=True))))
        except (ValueError, TypeError):
            problems.append(f"{path}, line {number}: skipped an unreadable row")
    return epochs, problems


def _stats(row: dict[str, str]) -> EpochStats:
    return stats_from_row({name: float(row[name]) for name in COLUMNS if name in row})


def stats_from_row(row: dict) -> EpochStats:
    """The EpochStats of a row of numbers (from metrics.csv or a checkpoint), or ValueError saying what is wrong:
    other columns, an epoch that is not a whole number from 1, or a number that is not finite outside the losses
    (only a diverged epoch's losses may be NaN or infinite). A column added since (clipped_steps) may be missing:
    rows written before it read as its default."""
    if not isinstance(row, dict) or not set(COLUMNS) - set(_OPTIONAL) <= set(row) <= set(COLUMNS):
        raise ValueError(f"its columns must be {', '.join(COLUMNS)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values()):
        raise ValueError("every value must be a number")
    epoch = row["epoch"]
    if not float(epoch).is_integer() or epoch < 1:
        raise ValueError(f"epoch must be a whole number from 1, got {epoch}")
    if not all(math.isfinite(v) for name, v in row.items() if name not in _MAY_DIVERGE):
        raise ValueError("a number that is not finite outside the losses")
    values = {name: float(v) for name, v in row.items() if name != "epoch" and name not in _OPTIONAL}
    counts = {name: int(row.get(name, _OPTIONAL[name])) for name in _OPTIONAL}
    return EpochStats(epoch=int(epoch), **values, **counts)
