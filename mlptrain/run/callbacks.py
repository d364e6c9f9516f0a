"""What a run reports as it goes (Callbacks, and the RunInfo its first report carries), and the base of the
callbacks that wrap another (Relay). The contract between the trainer and whoever listens (the CLI's reporter,
TensorBoard, a sweep's pruning), below all of them. No torch: a sweep worker's pruning reporter is built on it before
the worker's first trial imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlptrain.base.config import Config
    from mlptrain.base.metrics import EpochStats


@dataclass
class RunInfo:
    """What is known once a run has its data and model, before the first epoch: what a reporter's header shows."""

    run_dir: Path
    device: str
    threads: int
    threads_why: str  # how auto chose, or that the count was set: `2 cores, 1 busy`, `as set`
    dataset: str
    sizes: list[int]
    parameters: int
    train_samples: int
    val_samples: int
    config: Config
    resumed_at: str | None = None  # where a continued run picks up, in words
    notes: list[str] = field(default_factory=list)  # warnings worth showing, e.g. a compile that fell back


class Callbacks:
    """What a run reports as it goes. The defaults do nothing; the CLI's reporter overrides them."""

    def run_started(self, info: RunInfo) -> None:
        pass

    def epoch_started(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        """`done` batches of this epoch were trained before (a resumed epoch), `steps` in all."""

    def batch_done(self, step: int) -> None:
        pass

    def epoch_done(self, stats: EpochStats, is_best: bool) -> None:
        """The epoch is trained and validated, at its boundary (a stop asked for here stops there); its files are
        being written."""

    def epoch_saved(self, stats: EpochStats, is_best: bool) -> None:
        """The epoch's files (last.pt, best.pt if `is_best`, its metrics.csv row) are on disk: a kill from here on
        resumes after it. After epoch_done, from the next epoch's batches, the next boundary or the run's end."""

    def threads_changed(self, epoch: int, threads: int, why: str) -> None:
        """`threads: auto` measured the load again after epoch - 1 and trains epoch `epoch` at `threads`."""


class Relay(Callbacks):
    """Callbacks that pass every report on to `inner` (the CLI's reporter); a subclass adds its own work to the
    hooks it cares about and calls super(). A hook added to Callbacks is relayed here, once, for every wrapper."""

    def __init__(self, inner: Callbacks):
        self.inner = inner

    def run_started(self, info: RunInfo) -> None:
        self.inner.run_started(info)

    def epoch_started(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.inner.epoch_started(epoch, epochs, steps, done)

    def batch_done(self, step: int) -> None:
        self.inner.batch_done(step)

    def epoch_done(self, stats: EpochStats, is_best: bool) -> None:
        self.inner.epoch_done(stats, is_best)

    def epoch_saved(self, stats: EpochStats, is_best: bool) -> None:
        self.inner.epoch_saved(stats, is_best)

    def threads_changed(self, epoch: int, threads: int, why: str) -> None:
        self.inner.threads_changed(epoch, threads, why)
