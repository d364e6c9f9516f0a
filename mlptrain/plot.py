"""Figures as image files: a run's training curves, and a grid of the test images a model got most wrong.

matplotlib draws them headless (the Agg canvas, no pyplot and no display), imported inside each function:
it takes about a second to load and only these two figures need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlptrain.errors import ConfigError, DataError
from mlptrain.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TRAIN_COLOR, VAL_COLOR, BEST_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c"


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draw a run folder's curves from its metrics.csv into `out` (default RUN_DIR/curves.png); returns the path."""
    from mlptrain.runs import read_run

    run = read_run(run_dir)
    if not run.history:
        raise DataError(f"{run_dir}: no finished epoch to plot yet (metrics.csv is missing or empty)")
    path = Path(out) if out is not None else run.path / "curves.png"
    save_curves(path, run.history, run.best_epoch, run.monitor, run.path.name)
    return path


def save_curves(path: Path, rows: Sequence[dict[str, float]], best_epoch: int, monitor: str, title: str) -> None:
    """Loss and accuracy per epoch, train and validation, with the best epoch (on `monitor`) marked.

    `rows` are metrics.csv's rows (epoch, train_loss, train_acc, val_loss, val_acc, ...), accuracies as fractions.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

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
            f"{title}  ·  best epoch {best_epoch} on {monitor}: val acc {100 * best['val_acc']:.2f}%, "
            f"val loss {best['val_loss']:.4f}",
            fontsize=11,
        )
    else:
        fig.suptitle(title, fontsize=11)
    loss_ax.legend(loc="upper right")
    acc_ax.legend(loc="lower right")
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
    """A grid of images (K, H, W) in [0, 255], each captioned with its true and predicted label and confidence."""
    from matplotlib.figure import Figure

    count = len(images)
    rows = max(1, -(-count // columns))
    fig = Figure(figsize=(1.35 * columns, 1.6 * rows + 0.5), dpi=100, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i >= count:
            ax.set_axis_off()
            continue
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#cccccc")
        # Dark ink on white reads more easily than MNIST's white on black.
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(
            f"true {class_names[true[i]]}\npred {class_names[predicted[i]]} {100 * confidence[i]:.0f}%",
            fontsize=8,
            color="#b00020",
        )
    if count == 0:
        axes[0].text(0, 0.5, "no misclassified images", fontsize=12, transform=axes[0].transAxes)
    fig.suptitle(title, fontsize=10)
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
