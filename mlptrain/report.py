"""Everything a person sees: rich tables and progress bars on a terminal, plain lines when piped or in CI.

The only module that imports rich. Accuracies are fractions everywhere else; here they become percentages.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from mlptrain import __version__

if TYPE_CHECKING:  # runtime imports would pull in torch, and errors must print without it
    from mlptrain.engine import EpochStats
    from mlptrain.runner import EvalResult, RunInfo, TrainResult


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


def show_eval(console: Console, result: EvalResult) -> None:
    if console.is_terminal:
        table = Table(title=str(result.checkpoint), title_justify="left", show_header=False)
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
    else:
        console.print(
            f"{result.checkpoint}: {result.split} accuracy={pct(result.accuracy)} loss={result.loss:.4f} "
            f"samples={result.samples} epoch={result.epoch}"
        )
