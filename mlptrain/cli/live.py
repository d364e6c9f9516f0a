"""What a person sees while a command runs: a run's header, its progress bar and a line per epoch, a sweep's trials
as they start, the bench's spinner. report.py is the other half (the answers); only these two import rich.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from mlptrain import __version__
from mlptrain.cli.report import epochs_table, pct

if TYPE_CHECKING:
    from mlptrain.base.metrics import EpochStats
    from mlptrain.run.callbacks import RunInfo
    from mlptrain.run.trainer import TrainResult
    from mlptrain.sweep.folder import Sweep, Trial


class TrainReporter:
    """Shows a run as it trains: header, a progress bar per epoch, a line per epoch, the final table.

    Implements trainer.Callbacks by its method names.
    """

    header = True  # the lines about the run (device, model, data) before its first epoch

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.task = None
        self.epochs = 0
        self._last_refresh = 0.0
        self._unsaved = False  # an epoch done whose files are still being written
        self._held: list[str] = []  # lines that come after that epoch's

    # --- trainer.Callbacks -------------------------------------------------------------------------------------

    def run_started(self, info: RunInfo) -> None:
        self.epochs = info.config.train.epochs
        if self.quiet:
            return
        t = info.config.train
        arch = "→".join(map(str, info.sizes)) if self.live else "-".join(map(str, info.sizes))
        device = f"{info.device} · threads {info.threads} ({info.threads_why})" if info.device == "cpu" else info.device
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
            if self.header:
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
        elif self.header:
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
        self._unsaved = True  # its line waits for epoch_saved: once shown, the epoch is on disk

    def epoch_saved(self, stats: EpochStats, is_best: bool) -> None:
        self._unsaved, held, self._held = False, self._held, []
        if self.quiet:
            return
        self._epoch_line(stats, is_best)
        for line in held:
            self.console.print(line)

    def _epoch_line(self, stats: EpochStats, is_best: bool) -> None:
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

    def threads_changed(self, epoch: int, threads: int, why: str) -> None:
        if not self.quiet:
            line = f"threads {threads} ({why}) from epoch {epoch}"
            line = f"[dim]{line}[/]" if self.live else line
            if self._unsaved:
                self._held.append(line)
            else:
                self.console.print(line)

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
            by = f" by more than {result.min_delta:g} (train.min_delta)" if result.min_delta else ""
            epochs = f"{result.stalled} epoch{'s' if result.stalled != 1 else ''}"
            self.console.print(f"stopped early: no {result.monitor} improvement{by} for {epochs} (train.patience)")
        best = result.best
        if self.console.is_terminal:
            if not self.quiet:
                self.console.print(epochs_table(result, self.console.width))
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


class SweepReporter(TrainReporter):
    """Shows a sweep as it runs: a line as each trial starts (or fails), and its epochs as `train` shows them.

    Implements sweep.SweepCallbacks, and trainer.Callbacks for each trial's run.
    """

    header = False

    def sweep_started(self, sweep: Sweep, todo: int) -> None:
        if not self.quiet:
            keys = ", ".join(sweep.spec.params)
            self.console.print(
                f"sweep {sweep.folder}: {len(sweep.trials)} trials ({sweep.spec.method} over {keys}), {todo} to run",
                markup=False,
            )

    def trial_started(self, trial: Trial, total: int, resuming: bool) -> SweepReporter:
        self.close()
        self.task = None  # the bar of the next trial's run is a new one
        if not self.quiet:
            how = " (resuming from its last.pt)" if resuming else ""
            self.console.print(f"trial {trial.index}/{total} {trial.dir}{how}", markup=False)
        return self

    def trial_done(self, trial: Trial, total: int) -> None:
        self.close()
        if trial.state == "failed" and not self.quiet:
            self.console.print(f"trial {trial.index}/{total} failed: {trial.reason}", markup=False)


class BenchProgress:
    """Says which part of the bench is running: a spinner on a terminal, a line per stage on stderr otherwise."""

    def __init__(self, console: Console):
        self.console = console
        self.status = console.status("bench") if console.is_terminal else None

    def __enter__(self) -> BenchProgress:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.status is not None:
            self.status.stop()

    def __call__(self, stage: str) -> None:
        if self.status is not None:
            self.status.update(Text(f"bench: {stage}"))
        else:
            self.console.print(f"bench: {stage}", markup=False)
