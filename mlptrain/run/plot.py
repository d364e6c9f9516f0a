"""Figures as image files: a run's training curves, runs' scores against their settings, a sweep's history and
parameter importance, a grid of the test images a model got most wrong, the bench's cost growth, the learning-rate
range test and augmented images.

matplotlib draws them headless (the Agg canvas, no pyplot and no display), imported inside each function:
it takes about a second to load and only these figures need it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mlptrain.base.errors import ConfigError, DataError, WriteFailed
from mlptrain.base.files import atomic_write
from mlptrain.base.metrics import UNITS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mlptrain.base.metrics import History
    from mlptrain.run.runs import RunSummary, Scores

TRAIN_COLOR, VAL_COLOR, BEST_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c"


def plot_run(run: RunSummary, out: Path | None = None) -> Path:
    """Draw a run's curves into `out` (default RUN_DIR/curves.png); returns the path."""
    from mlptrain.run.runs import CURVES_FILE, METRICS_FILE

    if not run.history:
        more = f", and {len(run.problems) - 1} more problems" if len(run.problems) > 1 else ""
        why = run.problems[0] + more if run.problems else f"{METRICS_FILE} is missing or empty"
        raise DataError(f"{run.path}: no finished epoch to plot ({why})")
    path = Path(out) if out is not None else run.path / CURVES_FILE
    data = run.config.get("data")
    dataset = data.get("dataset") if isinstance(data, dict) else None
    title = f"{run.path.name} ({dataset})" if dataset else run.path.name
    save_curves(path, run.history, title, _training_note(run.settings))
    return path


def _training_note(settings: dict[str, Any]) -> str:
    """Why the training curves sit where they do (below the validation accuracy, above its loss) when the run
    trained on something other than the plain images and labels: '' when it did not."""
    kind, smoothing = settings.get("data.augment.kind"), settings.get("train.label_smoothing")
    parts = [f"{kind}-augmented images"] if isinstance(kind, str) and kind != "none" else []
    if isinstance(smoothing, (int, float)) and not isinstance(smoothing, bool) and smoothing > 0:
        parts.append(f"label smoothing {smoothing:g} in the loss")
    if not parts:
        return ""
    why = "so they sit below the validation accuracy and above its loss"
    return f"train loss and accuracy: measured on the training batches, with {' and '.join(parts)}, {why}"


def save_curves(path: Path, history: History, title: str, note: str = "") -> None:
    """Loss (log axis), accuracy and learning rate per epoch, train and validation, the best epoch (on the
    history's monitor) marked, and `note` (what the training numbers include) over the loss and accuracy. The
    accuracy axis fits the validation curve, where the choice is made, up to the best training accuracy: epoch
    1's low train accuracy would otherwise squash the plateau that matters into a line."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

    rows, best_epoch = [s.as_dict() for s in history.epochs], history.best_epoch
    epochs = [int(r["epoch"]) for r in rows]
    marker = "o" if len(rows) <= 30 else None  # dots help read a short run; on a long one they are clutter
    fig = Figure(figsize=(14, 4), dpi=100, layout="constrained")
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    for ax, key, label, scale in ((loss_ax, "loss", "loss (cross-entropy)", 1), (acc_ax, "acc", "accuracy", 100)):
        for split, color in (("train", TRAIN_COLOR), ("val", VAL_COLOR)):
            values = [r[f"{split}_{key}"] * scale for r in rows]
            ax.plot(epochs, values, color=color, marker=marker, ms=3, label=split)
        ax.set_ylabel(label)
        if best_epoch:
            best = rows[epochs.index(best_epoch)]
            ax.plot([best_epoch], [best[f"val_{key}"] * scale], marker="*", ms=14, color=BEST_COLOR, zorder=3)
    losses = [r[k] for r in rows for k in ("train_loss", "val_loss")]
    if all(math.isfinite(v) and v > 0 for v in losses):
        loss_ax.set_yscale("log")
        loss_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.4, not 4×10⁻¹
        # Label some ticks between the powers of ten too: 2, 3, 4, 6 × 10ⁿ within a decade or so, 2 and 5 × 10ⁿ
        # over a few; past that the powers alone.
        decades = math.log10(max(losses) / min(losses))
        shown = (2, 3, 4, 6) if decades < 1.5 else (2, 5) if decades < 3 else ()
        loss_ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _mantissa_label(v, shown)))
    top = max((100 * r["train_acc"] for r in rows if math.isfinite(r["train_acc"])), default=math.nan)
    acc_ax.set_ylim(*_fit([*(100 * r["val_acc"] for r in rows), top], ceiling=100))
    if note:  # a footnote across the figure, under the epoch axes
        fig.supxlabel(note, fontsize=9, color="#444444")
    acc_ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))
    lr_ax.plot(epochs, [r["lr"] for r in rows], color="#7f7f7f", marker=marker, ms=3)
    lr_ax.set_ylabel("learning rate (at the epoch's last step)")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both" if ax is loss_ax else "major")
        if best_epoch:
            ax.axvline(best_epoch, color=BEST_COLOR, linestyle=":", linewidth=1.5)
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


def _mantissa_label(value: float, shown: Sequence[int]) -> str:
    """`value` written plainly if it is one of `shown` × 10ⁿ, else nothing."""
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if mantissa in shown else ""


def _fit(values: Sequence[float], ceiling: float) -> tuple[float, float]:
    """Axis limits around `values` with a margin, never above `ceiling`: a 92–94% plateau fills the panel."""
    finite = [v for v in values if math.isfinite(v)] or [0.0, ceiling]
    low, high = min(finite), max(finite)
    margin = max((high - low) * 0.15, 0.5)
    return max(low - margin, 0.0), min(high + margin, ceiling)


def save_scores_plot(path: Path, scores: Scores, folder: str) -> None:
    """`mlptrain runs --out`: each run's (or trial's) best score against the settings that differ, best starred."""
    what = f"the best {scores.metric.replace('_', ' ')} of {len(scores.points)} {scores.what}"
    save_metric_plot(path, scores.points, scores.keys, scores.metric, f"{folder}: {what}", scores.best, scores.ranges)


def save_metric_plot(
    path: Path,
    points: Sequence[tuple[dict[str, Any], float]],
    keys: Sequence[str],
    metric: str,
    title: str,
    best: int | None = None,
    ranges: dict[str, bool] | None = None,
) -> None:
    """A panel per group of keys that vary together: each run's best `metric` against its value of them.

    `points` are (a run's settings as dotted keys, its metric); `points[best]` is starred. Keys whose values split
    the runs the same way share a panel (three runs that differ in eight keys make one panel, not eight of the
    same three points), except the keys drawn from a continuous range (`ranges`: key -> is the range log), which
    split every run from every other: each has a panel of its own, its axis logarithmic where its range is.
    A lone numeric key gets a numeric axis (logarithmic where it spans 20× or more, as learning rates do);
    anything else one slot per distinct value, labelled without quotes, numbers to 4 significant digits.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    if not points or not keys:
        why = "no run has a finished epoch" if not points else "no setting differs between the runs"
        raise DataError(f"{title}: nothing to draw: {why}")
    fraction = UNITS[metric] == "fraction"
    scale = 100 if fraction else 1
    ranges = ranges or {}
    groups = _key_groups(points, [key for key in keys if key not in ranges])
    groups = [[key] for key in keys if key in ranges] + groups
    fig = Figure(figsize=(min(max(4.6 * len(groups), 6), 16), 4.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)[0]
    ys = [value * scale for _, value in points]
    for ax, group in zip(axes, groups, strict=True):
        xs = _place(ax, [[settings.get(key) for key in group] for settings, _ in points], group, ranges.get(group[0]))
        ax.scatter(xs, ys, color=TRAIN_COLOR, alpha=0.8, zorder=2)
        if best is not None:
            ax.plot([xs[best]], [ys[best]], marker="*", ms=18, color=BEST_COLOR, linestyle="", zorder=3, label="best")
            ax.annotate(f"best {ys[best]:.2f}{'%' if fraction else ''}", (xs[best], ys[best]), xytext=(0, 11),
                        textcoords="offset points", ha="center", fontsize=9, color=BEST_COLOR)  # fmt: skip
        ax.set_xlabel(" / ".join(group) if len(group) <= 3 else f"{' / '.join(group[:3])} / +{len(group) - 3} more")
        ax.grid(alpha=0.3)
        ax.margins(y=0.15)
    axes[0].set_ylabel(f"best {metric.replace('_', ' ')}")
    if fraction:
        axes[0].yaxis.set_major_formatter(PercentFormatter())
    axes[0].legend(loc="best", fontsize=9)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)


def _key_groups(points: Sequence[tuple[dict[str, Any], float]], keys: Sequence[str]) -> list[list[str]]:
    """The keys, grouped by how their values split the runs (keys that vary together share a group), in order."""
    groups: dict[tuple, list[str]] = {}
    for key in keys:
        values = [json.dumps(settings.get(key), sort_keys=True) for settings, _ in points]
        first_seen = [values.index(v) for v in values]  # the partition, whatever the values are
        groups.setdefault(tuple(first_seen), []).append(key)
    return list(groups.values())


def _place(ax, values: list[list[Any]], group: list[str], log: bool | None = None) -> list[float]:
    """The x of each run on `ax` for its values of the `group`'s keys; sets the axis's scale or its tick labels.
    `log`: the group is one key drawn from a range, logarithmic or not (None: not drawn from a range)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    if len(group) == 1 and all(isinstance(v[0], (int, float)) and not isinstance(v[0], bool) for v in values):
        xs = [v[0] for v in values]
        if log or (log is None and min(xs) > 0 and max(xs) >= 20 * min(xs)):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if max(xs) < 1000 * min(xs) else (1,)))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))  # 0.002, 0.05, 0.1: no 2×10⁻³
        return xs
    # The group's keys split the runs alike, so the first three values (as in the axis label) tell the slots apart.
    texts = ["\n".join(_value_text(x) for x in v[:3]) for v in values]
    labels = list(dict.fromkeys(texts))
    xs = [labels.index(text) for text in texts]
    long = len(labels) > 4 or max(len(line) for label in labels for line in label.split("\n")) > 12
    ax.set_xticks(range(len(labels)), labels, rotation=30 if long else 0, ha="right" if long else "center")
    ax.set_xlim(-0.5, len(labels) - 0.5)
    return xs


def _value_text(value: Any) -> str:
    """A setting as a person writes it: relu, 0.05, [256, 128], true (no JSON quotes)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4g}"  # a drawn 0.07264183744487 as 0.07264
    return "-" if value is None else str(value)


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


def save_study_plot(
    path: Path, history: Sequence[tuple[int, float]], importance: dict[str, float], metric: str, title: str
) -> None:
    """`mlptrain runs SWEEP_DIR --out`: each finished trial's value and the best so far against the trial number,
    and (where the study could compute them) each swept key's importance to the value."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from mlptrain.base.metrics import is_better

    fig = Figure(figsize=(12 if importance else 7, 4.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2 if importance else 1, squeeze=False)[0]
    scale = 100 if UNITS[metric] == "fraction" else 1
    xs, ys = [n for n, _ in history], [v * scale for _, v in history]
    best, running = None, []
    for y in ys:
        best = y if best is None or is_better(metric, y / scale, best / scale) else best
        running.append(best)
    ax = axes[0]
    ax.scatter(xs, ys, color=TRAIN_COLOR, alpha=0.8, zorder=2, label="trial")
    ax.step(xs, running, where="post", color=BEST_COLOR, label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric.replace("_", " ") + (" (%)" if scale == 100 else ""))
    ax.set_title("history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    if importance:
        keys = sorted(importance, key=importance.get)
        bars = axes[1].barh(keys, [importance[k] for k in keys], color=TRAIN_COLOR)
        axes[1].bar_label(bars, fmt="%.2f", padding=3)  # a key of importance 0 has no bar: its 0.00 says so
        axes[1].set_xlim(0, max(1.0, max(importance.values())) * 1.1)
        axes[1].set_xlabel("importance (fANOVA, sums to 1)")
        axes[1].set_title("parameter importance")
        axes[1].grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)


class SpeedPoint(Protocol):
    """One measured size of the bench's training step (bench/cases.py's GrowthRow)."""

    sizes: list[int]
    batch_size: int
    samples_per_second: float  # at all threads
    samples_per_second_1_thread: float


class SpeedGrowth(Protocol):
    """The step's speed as the batch grows and as the width grows (bench/cases.py's GrowthResult)."""

    by_batch: list[SpeedPoint]
    by_width: list[SpeedPoint]


class SpeedReport(Protocol):
    """What save_bench_plot reads of a bench's result (bench/suite.py's BenchResult): figures depend on results, so
    they name only the fields they draw, never the feature that measured them."""

    growth: SpeedGrowth
    threads: int
    device: str
    device_name: str
    torch_version: str


class RangeCurve(Protocol):
    """What save_lr_plot reads of a learning-rate range test (tune/lrfind.py's RangeTest)."""

    lrs: list[float]
    losses: list[float]  # smoothed
    steepest: float | None
    valley: float | None
    stopped: str | None


def save_bench_plot(path: Path, result: SpeedReport) -> None:
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


def save_lr_plot(path: Path, test: RangeCurve, title: str) -> None:
    """The smoothed loss against the learning rate (log axis), with the two suggested rates marked on it."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    ax.plot(test.lrs, test.losses, color=TRAIN_COLOR, label="smoothed training loss")
    marks = (("steepest descent", test.steepest, BEST_COLOR, "o"), ("minimum / 10", test.valley, VAL_COLOR, "s"))
    for label, lr, color, marker in marks:
        if lr is not None:
            # On the curve where the rate falls between two steps (minimum / 10 always does): read on the log axis.
            logs = [math.log(x) for x in test.lrs]
            loss = float(np.interp(math.log(lr), logs, test.losses)) if test.lrs else math.nan
            drawn = math.isfinite(loss) and test.lrs[0] <= lr <= test.lrs[-1]
            ax.axvline(lr, color=color, linestyle="--", linewidth=1)
            if drawn:
                ax.plot([lr], [loss], marker=marker, color=color, ms=7)
            ax.plot([], [], color=color, linestyle="--", marker=marker if drawn else None, label=f"{label}: {lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    if test.losses:  # the part before the minimum, where a rate is chosen: the blow-up after it runs off the top
        lowest = test.losses.index(min(test.losses))
        low, high = test.losses[lowest], max(test.losses[: lowest + 1])
        margin = 0.08 * (high - low) or 0.1
        ax.set_ylim(low - margin, high + 2 * margin)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ended = f"; {test.stopped}" if test.stopped else ""
    ax.set_title(f"{title}: {len(test.lrs)} steps{ended}", fontsize=9)
    _save(fig, path)


def save_augment_grid(path: Path, originals: Sequence, copies: Sequence, labels: Sequence[str], title: str) -> None:
    """Each original image (K, H, W) in [0, 1] in the first column, its augmented copies (K, C, H, W) beside it."""
    import numpy as np
    from matplotlib.figure import Figure

    count, per_row = len(originals), 1 + (len(copies[0]) if len(copies) else 0)
    side, gap = len(originals[0]), 4
    montage = np.ones((count * (side + gap), per_row * (side + gap) + gap))  # white gaps between the images
    for i in range(count):
        row = [originals[i], *copies[i]]
        for j, image in enumerate(row):
            top, left = i * (side + gap), j * (side + gap) + (gap if j else 0)
            montage[top : top + side, left : left + side] = 1 - np.asarray(image)  # dark ink on white
    fig = Figure(figsize=(0.75 * per_row + 0.8, 0.75 * count + 0.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.imshow(montage, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([side / 2 + (j * (side + gap) + (gap if j else 0)) for j in range(per_row)])
    ax.set_xticklabels(["original"] + [f"copy {j}" for j in range(1, per_row)], fontsize=8)
    ax.set_yticks([i * (side + gap) + side / 2 for i in range(count)])
    ax.set_yticklabels(labels, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=9)
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
    except WriteFailed as e:
        if e.reason.startswith("no space"):
            raise  # a failure (exit 1), not a bad path
        raise ConfigError(str(e)) from None


def confusion_image(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str):
    """The confusion matrix (rows true label, columns prediction) drawn as an RGB image: a uint8 array (H, W, 3),
    each cell shaded by its share of its row and labelled with its count, for TensorBoard's image view."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.int64)  # (classes, classes)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # of each true class
    n = len(counts)
    fig = Figure(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(counts):
        if count:
            ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                    color="white" if share[row, col] > 0.5 else ("#b00020" if row != col else "black"))  # fmt: skip
    ticks = list(range(n))
    slanted = max(map(len, class_names)) > 2  # Fashion-MNIST's names
    ax.set_xticks(ticks, class_names, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
