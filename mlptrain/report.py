"""Everything a person sees: rich tables and progress bars on a terminal, plain lines when piped or in CI.

The only module that imports rich. Accuracies are fractions everywhere else; here they become percentages.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from mlptrain import __version__

if TYPE_CHECKING:  # runtime imports would pull in torch, and errors must print without it
    from mlptrain.engine import EpochStats
    from mlptrain.predict import PredictResult
    from mlptrain.runner import EvalResult, RunInfo, TrainResult
    from mlptrain.runs import RunSummary


def make_console(stderr: bool = False) -> Console:
    """A console that is rich on a terminal and plain otherwise (pipes, files, CI=true)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return Console(stderr=stderr, highlight=False, force_terminal=False, no_color=True, soft_wrap=True)
    console = Console(stderr=stderr, highlight=False)
    # Piped lines are for grep and logs: never wrap them at an imagined 80 columns.
    console.soft_wrap = not console.is_terminal
    return console


def pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def error(message: str) -> None:
    """One line on stderr: 'mlptrain: error: ...' (red on a terminal)."""
    console = make_console(stderr=True)
    console.print(Text("mlptrain: error: ", style="bold red") + Text(message), soft_wrap=True)


class TrainReporter:
    """Shows a run as it trains: header, a progress bar per epoch, a line per epoch, the final table.

    Implements runner.Callbacks by its method names.
    """

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.task = None
        self.epochs = 0
        self._last_refresh = 0.0

    # --- runner.Callbacks --------------------------------------------------------------------------------------

    def run_started(self, info: RunInfo) -> None:
        self.epochs = info.config.train.epochs
        if self.quiet:
            return
        t = info.config.train
        arch = "→".join(map(str, info.sizes)) if self.live else "-".join(map(str, info.sizes))
        device = f"{info.device} ({info.threads} threads)" if info.device == "cpu" else info.device
        lines = [
            ("run", str(info.run_dir)),
            ("device", device),
            ("model", f"MLP {arch} · {info.config.model.activation} · {info.parameters:,} parameters"),
            ("data", f"{info.dataset} · {info.train_samples:,} train · {info.val_samples:,} val"),
            ("training", f"{t.epochs} epochs · batch {t.batch_size} · {t.optimizer} lr {t.lr:g} · {t.scheduler}"),
        ]
        if info.resumed_at is not None:
            lines.insert(1, ("resumed", f"at {info.resumed_at}"))
        lines += [("note", note) for note in info.notes]
        if self.live:
            self.console.print(f"[bold]mlptrain {__version__}[/]")
            for key, value in lines:
                self.console.print(f"  [dim]{key:<9}[/]{value}")
            self.progress = Progress(
                TextColumn("[bold blue]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("batches"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
        else:
            for key, value in lines:
                self.console.print(f"{key}: {value}")

    def epoch_started(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        if self.progress is None:
            return
        description = f"epoch {epoch}/{epochs}"
        if self.task is None:
            self.task = self.progress.add_task(description, total=steps, completed=done)
        else:
            self.progress.reset(self.task, total=steps, completed=done, description=description)

    def batch_done(self, step: int) -> None:
        # Called every batch; redraw at most ~20 times a second so the bar costs nothing measurable.
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self._last_refresh >= 0.05:
            self._last_refresh = now
            self.progress.update(self.task, completed=step)

    def epoch_done(self, stats: EpochStats, is_best: bool) -> None:
        if self.quiet:
            return
        width = len(str(self.epochs))
        if self.live:
            mark = " [bold green]★ best[/]" if is_best else ""
            self.console.print(
                f"epoch {stats.epoch:>{width}}/{self.epochs}  "
                f"train loss {stats.train_loss:.4f} acc {pct(stats.train_acc):>7}  [dim]│[/]  "
                f"val loss {stats.val_loss:.4f} acc {pct(stats.val_acc):>7}  [dim]│[/]  "
                f"lr {stats.lr:.4g}  {stats.train_seconds:.2f}s  {stats.samples_per_second:,.0f} samples/s{mark}"
            )
        else:
            self.console.print(
                f"epoch {stats.epoch}/{self.epochs} train_loss={stats.train_loss:.4f} "
                f"train_acc={pct(stats.train_acc)} val_loss={stats.val_loss:.4f} val_acc={pct(stats.val_acc)} "
                f"lr={stats.lr:.4g} time={stats.train_seconds:.2f}s samples/s={stats.samples_per_second:.0f}"
                + (" best" if is_best else "")
            )

    # --- the end ----------------------------------------------------------------------------------------

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def summary(self, result: TrainResult) -> None:
        self.close()
        if result.already_finished:
            self.console.print(
                f"{result.run_dir} already finished {len(result.history)} epochs: nothing to do "
                f"(extend it with: mlptrain train --resume {result.run_dir} --set train.epochs=N)"
            )
            return
        if result.stopped_early:
            self.console.print(
                f"stopped early: no {result.monitor} improvement for {result.history[-1].epoch - result.best_epoch} "
                "epochs (train.patience)"
            )
        best = result.best
        if self.console.is_terminal:
            if not self.quiet:
                self.console.print(epochs_table(result))
            self.console.print(
                f"[bold green]best[/] epoch {best.epoch}: val acc {pct(best.val_acc)}, val loss {best.val_loss:.4f}"
                f" (monitor {result.monitor})"
            )
            self.console.print(f"  [dim]checkpoints[/] {result.run_dir / 'best.pt'}, {result.run_dir / 'last.pt'}")
            self.console.print(f"  [dim]metrics[/]     {result.run_dir / 'metrics.csv'}")
            self.console.print(f"  [dim]evaluate[/]    mlptrain eval {result.run_dir / 'best.pt'}")
        else:
            self.console.print(
                f"best epoch {best.epoch}: val_acc={pct(best.val_acc)} val_loss={best.val_loss:.4f} "
                f"-> {result.run_dir / 'best.pt'}"
            )


def interrupted(message: str, resume_command: str) -> None:
    """What a stopped run says on stderr: where it stopped, and the command that carries on."""
    console = make_console(stderr=True)
    console.print(Text("mlptrain: ", style="bold yellow") + Text(message), soft_wrap=True)
    console.print(Text("resume with: ", style="bold") + Text(resume_command), soft_wrap=True)


def epochs_table(result: TrainResult) -> Table:
    table = Table(title=f"{result.run_dir}", title_justify="left", header_style="bold")
    for name in ("epoch", "train loss", "train acc", "val loss", "val acc", "lr", "time", "samples/s"):
        table.add_column(name, justify="right")
    table.add_column("")
    for s in result.history:
        best = s.epoch == result.best_epoch
        table.add_row(
            str(s.epoch),
            f"{s.train_loss:.4f}",
            pct(s.train_acc),
            f"{s.val_loss:.4f}",
            pct(s.val_acc),
            f"{s.lr:.4g}",
            f"{s.train_seconds:.2f}s",
            f"{s.samples_per_second:,.0f}",
            "★ best" if best else "",
            style="bold green" if best else None,
        )
    return table


def warning(message: str) -> None:
    """One line on stderr for something that went wrong but did not stop the command."""
    console = make_console(stderr=True)
    console.print(Text("mlptrain: warning: ", style="bold yellow") + Text(message), soft_wrap=True)


def show_eval(console: Console, result: EvalResult) -> None:
    """The scores, then the confusion matrix with each class's accuracy: tables on a terminal, else aligned text."""
    if console.is_terminal:
        console.print(f"[bold]{result.checkpoint}[/]")  # as a title it would wrap at the narrow table's width
        table = Table(show_header=False)
        table.add_column(style="dim")
        table.add_column(justify="right")
        for key, value in (
            ("split", f"{result.split} ({result.dataset})"),
            ("samples", f"{result.samples:,}"),
            ("accuracy", pct(result.accuracy)),
            ("loss", f"{result.loss:.4f}"),
            ("epoch", str(result.epoch)),
            ("device", result.device),
        ):
            table.add_row(key, value)
        console.print(table)
        console.print(confusion_table(result, rgb=console.color_system in ("256", "truecolor")))
    else:
        console.print(
            f"{result.checkpoint}: {result.split} accuracy={pct(result.accuracy)} loss={result.loss:.4f} "
            f"samples={result.samples} epoch={result.epoch}"
        )
        labels = [str(label) for label in range(len(result.confusion))]
        per_class = result.per_class
        console.print(
            "per-class accuracy: "
            + "  ".join(f"{label}={_pct_or_dash(a)}" for label, a in zip(labels, per_class, strict=True))
        )
        console.print("confusion matrix (rows: true label, columns: predicted):")
        body = [
            [_label(label, name), *map(str, counts), str(sum(counts)), _pct_or_dash(a)]
            for label, name, counts, a in zip(labels, result.classes, result.confusion, per_class, strict=True)
        ]
        console.print(plain_table(["true", *labels, "n", "accuracy"], body))
    if result.errors_image is not None:
        console.print(f"errors: the {result.errors_shown} most confident mistakes -> {result.errors_image}")
    if result.record is not None:
        console.print(f"recorded: {result.record}", style="dim")


def confusion_table(result: EvalResult, rgb: bool = True) -> Table:
    """Rows are true labels, columns predictions; a cell's shade grows with its count, right answers in green.

    `rgb`: the terminal shows graded colours; on a 16-colour one the shades are two steps each.
    """
    table = Table(
        title="confusion matrix: rows are the true label, columns the prediction",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("true", style="bold")
    for label in range(len(result.confusion)):
        table.add_column(str(label), justify="right")
    table.add_column("n", justify="right", style="dim")
    table.add_column("accuracy", justify="right")
    off_diagonal = [c for t, row in enumerate(result.confusion) for p, c in enumerate(row) if p != t]
    worst = max(off_diagonal, default=0) or 1
    for label, (row, accuracy) in enumerate(zip(result.confusion, result.per_class, strict=True)):
        total = sum(row) or 1
        cells = []
        for predicted, count in enumerate(row):
            if predicted == label:
                cells.append(Text(str(count), style=_shade(count / total, True, rgb)))
            elif count:
                # Square root: the few big confusions stand out, and a single mistake is still visible.
                cells.append(Text(str(count), style=_shade((count / worst) ** 0.5, False, rgb)))
            else:
                cells.append(Text("·", style="dim"))
        table.add_row(_label(str(label), result.classes[label]), *cells, f"{sum(row):,}", _pct_or_dash(accuracy))
    return table


def _shade(strength: float, right: bool, rgb: bool) -> str:
    """A background from pale to deep (green for right answers, red for mistakes), with text that reads on it."""
    if not rgb:  # rich would map a graded colour to the nearest of 16, often grey: pick from those 16 instead
        if right:
            return "black on green" if strength > 0.5 else "black on bright_green"
        return "bold white on red" if strength > 0.5 else "red"
    pale, deep = ((225, 245, 225), (25, 120, 45)) if right else ((255, 228, 225), (190, 25, 25))
    r, g, b = (round(p + (d - p) * strength) for p, d in zip(pale, deep, strict=True))
    return f"{'#ffffff' if strength > 0.45 else '#000000'} on rgb({r},{g},{b})"


def _label(label: str, name: str) -> str:
    return label if name == label else f"{label} {name}"


def _pct_or_dash(fraction: float | None) -> str:
    return "-" if fraction is None else pct(fraction)


def plain_table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Columns aligned with spaces, the first `left` to the left and the rest to the right: for pipes and logs."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join(line(row).rstrip() for row in [header, *rows])


def show_predictions(console: Console, result: PredictResult) -> None:
    """One row per classified file: its top classes, most probable first."""
    if not result.predictions:
        return
    k = len(result.predictions[0].top)
    if console.is_terminal:
        table = Table(title=f"{result.checkpoint} ({result.dataset})", title_justify="left", header_style="bold")
        table.add_column("file")
        for rank in range(1, k + 1):
            table.add_column(_ordinal(rank), justify="right")
        for p in result.predictions:
            cells = [f"{name} {pct(prob)}" for _, name, prob in p.top]
            # A first guess under 50% is a guess: say so by colour rather than hide it.
            cells[0] = Text(cells[0], style="bold green" if p.confidence >= 0.5 else "bold yellow")
            table.add_row(str(p.file), *cells)
        console.print(table)
    else:
        for p in result.predictions:
            console.print(f"{p.file}: " + "  ".join(f"{name} {pct(prob)}" for _, name, prob in p.top))


def _ordinal(n: int) -> str:
    return f"{n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def show_runs(console: Console, folder: Path, runs: list[RunSummary], keys: list[str]) -> None:
    """The runs, newest first, with the config keys that differ between them."""
    if not runs:
        console.print(f"no runs in {folder}")
        return
    header = ["run", "started", "epochs", "best val acc", "test acc", "time", *keys]
    rows = []
    for run in runs:
        flat = run.settings
        planned = run.epochs_planned
        rows.append(
            [
                run.path.name,
                run.started.strftime("%Y-%m-%d %H:%M"),
                f"{len(run.history)}/{planned}" if planned is not None else str(len(run.history)),
                _pct_or_dash(run.best_val_acc),
                _pct_or_dash(run.test_acc),
                duration(run.seconds),
                *(_setting(flat[key]) if key in flat else "-" for key in keys),
            ]
        )
    if not console.is_terminal:
        console.print(plain_table(header, rows, left=2))
        return
    # Short headers where they are unambiguous ('lr' for train.lr); and if a column per key would still not fit
    # the terminal, one wrapping column of key=value pairs, since squeezed columns would cut the values short.
    leaves = [key.rsplit(".", 1)[-1] for key in keys]
    header[6:] = [leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves, strict=True)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    merged = sum(widths) + 3 * len(widths) + 1 > console.width  # cell padding and borders: 3 per column
    if merged:
        rows = [[*row[:6], "  ".join(f"{h}={v}" for h, v in zip(header[6:], row[6:], strict=True))] for row in rows]
        header = [*header[:6], "settings that differ"]
    table = Table(title=str(folder), title_justify="left", header_style="bold")
    for i, name in enumerate(header):
        fixed = i < 6
        justify = "left" if i < 2 or (merged and not fixed) else "right"
        table.add_column(name, justify=justify, style=None if fixed else "cyan", no_wrap=fixed)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _setting(value) -> str:
    """A config value as YAML would write it inline: 0.1, [256, 128], true, onecycle."""
    return value if isinstance(value, str) else json.dumps(value)


def duration(seconds: float) -> str:
    """12.3s, 4m05s, 2h03m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def saved(console: Console, what: str, path: Path) -> None:
    console.print(f"{what}: {path}")
