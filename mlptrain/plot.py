"""Figures as image files: a run's training curves, runs' scores against their settings, a grid of the test
images a model got most wrong, and the bench's cost growth.

matplotlib draws them headless (the Agg canvas, no pyplot and no display), imported inside each function:
it takes about a second to load and only these figures need it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlptrain.errors import ConfigError, DataError
from mlptrain.files import atomic_write
from mlptrain.metrics import UNITS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mlptrain.bench.suite import BenchResult
    from mlptrain.metrics import History
    from mlptrain.runs import RunSummary

TRAIN_COLOR, VAL_COLOR, BEST_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c"


def plot_run(run: RunSummary, out: Path | None = None) -> Path:
    """Draw a run's curves into `out` (default RUN_DIR/curves.png); returns the path."""
    from mlptrain.runs import CURVES_FILE, METRICS_FILE

    if not run.history:
        more = f", and {len(run.problems) - 1} more problems" if len(run.problems) > 1 else ""
        why = run.problems[0] + more if run.problems else f"{METRICS_FILE} is missing or empty"
        raise DataError(f"{run.path}: no finished epoch to plot ({why})")
    path = Path(out) if out is not None else run.path / CURVES_FILE
    data = run.config.get("data")
    dataset = data.get("dataset") if isinstance(data, dict) else None
    save_curves(path, run.history, f"{run.path.name} ({dataset})" if dataset else run.path.name)
    return path


def save_curves(path: Path, history: History, title: str) -> None:
    """Loss and accuracy per epoch, train and validation, with the best epoch (on the history's monitor) marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    rows, best_epoch = [s.as_dict() for s in history.epochs], history.best_epoch
    epochs = [int(r["epoch"]) for r in rows]
    marker = "o" if len(rows) <= 30 else None  # dots help read a short run; on a long one they are clutter
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, key, label, scale in ((loss_ax, "loss", "loss (cross-entropy)", 1), (acc_ax, "acc", "accuracy", 100)):
        ax.plot(
            epochs, [r[f"train_{key}"] * scale for r in rows], color=TRAIN_COLOR, marker=marker, ms=3, label="train"
        )
        ax.plot(epochs, [r[f"val_{key}"] * scale for r in rows], color=VAL_COLOR, marker=marker, ms=3, label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if best_epoch:
            best = rows[epochs.index(best_epoch)]
            ax.axvline(best_epoch, color=BEST_COLOR, linestyle=":", linewidth=1.5)
            ax.plot([best_epoch], [best[f"val_{key}"] * scale], marker="*", ms=14, color=BEST_COLOR, zorder=3)
    acc_ax.yaxis.set_major_formatter(PercentFormatter(decimals=0 if len(rows) < 2 else None))
    if best_epoch:
        best = rows[epochs.index(best_epoch)]
        acc_ax.plot([], [], marker="*", ms=10, color=BEST_COLOR, linestyle=":", label=f"best (epoch {best_epoch})")
        fig.suptitle(
            f"{title}  ·  best epoch {best_epoch} on {history.monitor}: val acc {100 * best['val_acc']:.2f}%, "
            f"val loss {best['val_loss']:.4f}",
            fontsize=11,
        )
    else:
        fig.suptitle(title, fontsize=11)
    loss_ax.legend(loc="upper right")
    acc_ax.legend(loc="lower right")
    _save(fig, path)


def save_metric_plot(
    path: Path,
    points: Sequence[tuple[dict[str, Any], float]],
    keys: Sequence[str],
    metric: str,
    title: str,
    best: int | None = None,
) -> None:
    """A panel per key: each run's best `metric` (val_acc or val_loss) against its value of that key.

    `points` are (a run's settings as dotted keys, its metric); `points[best]` is starred. Numbers sit on a
    numeric axis (logarithmic where they span 20× or more, as learning rates do), anything else on categories.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    if not points or not keys:
        why = "no run has a finished epoch" if not points else "no setting differs between the runs"
        raise DataError(f"{title}: nothing to draw: {why}")
    fraction = UNITS[metric] == "fraction"
    scale = 100 if fraction else 1
    fig = Figure(figsize=(min(4.2 * len(keys), 16), 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        xs = [settings.get(key) for settings, _ in points]
        ys = [value * scale for _, value in points]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            if min(xs) > 0 and max(xs) >= 20 * min(xs):
                ax.set_xscale("log")
        else:  # lists (model.hidden), strings, booleans: one slot per distinct value, in order of first sight
            labels = list(dict.fromkeys(json.dumps(x) for x in xs))
            xs = [labels.index(json.dumps(x)) for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.scatter(xs, ys, color=TRAIN_COLOR, alpha=0.8, zorder=2)
        if best is not None:
            ax.plot([xs[best]], [ys[best]], marker="*", ms=16, color=BEST_COLOR, linestyle="", zorder=3, label="best")
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {metric.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        if fraction:
            ax.yaxis.set_major_formatter(PercentFormatter())
    if best is not None:
        axes[0].legend(loc="best")
    fig.suptitle(title, fontsize=11)
    _save(fig, path)


def save_error_grid(
    path: Path,
    images: Sequence,
    true: Sequence[int],
    predicted: Sequence[int],
    confidence: Sequence[float],
    class_names: Sequence[str],
    title: str,
    columns: int = 8,
) -> None:
    """A grid of images (K, H, W) in [0, 255], each captioned with its true and predicted label and confidence.

    One montage in one axes: a subplot per image would take many times longer to draw.
    """
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    count = len(images)
    side = len(images[0]) if count else 28
    rows = max(1, -(-count // columns))
    cell_w, cell_h = side + 14, side + 22  # pixels of the montage: a margin, and room above for the caption
    montage = np.zeros((rows * cell_h, columns * cell_w))
    fig = Figure(figsize=(1.45 * columns, 1.45 * rows + 0.4), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    for i in range(count):
        top, left = (i // columns) * cell_h + 18, (i % columns) * cell_w + 7
        montage[top : top + side, left : left + side] = images[i]
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="#cccccc", linewidth=0.8))
        ax.text(
            left + side / 2,
            top - 2,
            f"true {class_names[true[i]]}\npred {class_names[predicted[i]]} {100 * confidence[i]:.0f}%",
            ha="center",
            va="bottom",
            fontsize=8,
            color="#b00020",
        )
    # Dark ink on white reads more easily than MNIST's white on black.
    ax.imshow(montage, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    if count == 0:
        ax.text(0.5, 0.5, "no misclassified images", ha="center", fontsize=12, transform=ax.transAxes)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def save_bench_plot(path: Path, result: BenchResult) -> None:
    """Samples/s of the bench's training step against batch size and against width (log axes), at all threads
    and at one."""
    from matplotlib.figure import Figure

    by_batch, by_width = result.growth.by_batch, result.growth.by_width
    fig = Figure(figsize=(10, 4), dpi=110, layout="constrained")
    panels = (
        (by_batch, [r.batch_size for r in by_batch], "batch size", "MLP " + "-".join(map(str, by_batch[0].sizes))),
        (by_width, [r.sizes[1] for r in by_width], "width w (hidden [w, w/2])", f"batch {by_width[0].batch_size}"),
    )
    all_threads = "1 thread" if result.threads == 1 else f"{result.threads} threads"
    for ax, (rows, xs, xlabel, title) in zip(fig.subplots(1, 2), panels, strict=True):
        ax.plot(xs, [r.samples_per_second for r in rows], "o-", label=all_threads)
        ax.plot(xs, [r.samples_per_second_1_thread for r in rows], "s--", label="1 thread")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples/s (training step)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"mlptrain bench: {result.device} ({result.device_name}), torch {result.torch_version}")
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    """Write the figure atomically, in the format the file name asks for (png if it names none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in canvas.get_supported_filetypes():
        known = ", ".join(sorted(canvas.get_supported_filetypes()))
        raise ConfigError(f"{path}: cannot write a .{fmt} image; use one of {known}")
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=fmt))
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
