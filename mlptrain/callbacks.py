"""What a run reports as it goes (Callbacks), and the base of the callbacks that wrap another (Relay). No torch:
a sweep worker's pruning reporter is built on it before the worker's first trial imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlptrain.metrics import EpochStats
    from mlptrain.trainer import RunInfo


class Callbacks:
    """What a run reports as it goes. The defaults do nothing; the CLI's reporter overrides them."""

    def run_started(self, info: RunInfo) -> None:
        pass

    def epoch_started(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        """`done` batches of this epoch were trained before (a resumed epoch), `steps` in all."""

    def batch_done(self, step: int) -> None:
        pass

    def epoch_done(self, stats: EpochStats, is_best: bool) -> None:
        pass

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

    def threads_changed(self, epoch: int, threads: int, why: str) -> None:
        self.inner.threads_changed(epoch, threads, why)
