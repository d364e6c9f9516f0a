"""An epoch's files written while the next epoch trains: last.pt, then best.pt (a copy of that file, when the epoch
improved), then metrics.csv, on one thread of their own. One epoch in flight at most; every end of a run waits.

On the training thread: the state copied out (checkpoint.Snapshot, buffers reused from epoch to epoch: one
checkpoint's size in memory) and each file's space reserved, so a full disk is said at the epoch's boundary as
before, and a disk that fills up while the files are written cannot cut them short. On the writer's thread: the
checkpoint serialised straight into its file (no copy in memory), best.pt copied from it rather than serialised
again (not a hard link: a write into one name in place, as torch.save(ckpt, "last.pt") does, would change the
other), the row, each fsynced and renamed into place. A write that fails there anyway is raised on the training
thread by the next wait. Python runs signal handlers on the main thread only, so a Ctrl-C never cuts the writer's
thread: it reaches the training loop as ever, and the loop waits for the write in flight, signals held, before it
saves its place or leaves.

The files an epoch's write replaces stay open (pinned) until the next epoch's space is reserved, so the space they
held comes back on the training thread's time, not whenever the writer renames over them: whether a disk that
another process fills up stops the run, and at which epoch, does not hang on how far the writer had got. It costs
one more epoch's files on disk for a moment (three sets at most, against two when the files were written on the
training thread).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from mlptrain.base.files import Reserved, copy_into, held_signals
from mlptrain.base.metrics import EpochStats
from mlptrain.run.callbacks import Callbacks
from mlptrain.run.checkpoint import Snapshot, save_into, size_bound

_GROWTH = 8192  # bytes: a checkpoint's growth from one epoch to the next (a history row: a few hundred bytes)


class EpochWriter:
    """Writes each epoch's files on a thread of its own, one epoch at a time, and tells `cb` (epoch_saved) of each
    on the training thread once they are on disk: from poll (every batch), wait, or close."""

    def __init__(self, cb: Callbacks) -> None:
        self.cb = cb
        self.epoch = 0  # the epoch in flight, or the last one submitted
        self._snapshot = Snapshot()
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future | None = None
        self._saved: tuple[EpochStats, bool] | None = None  # epoch_saved's arguments, once the write ends
        self._pinned: list[BinaryIO] = []  # the files the write in flight replaces, held open (see above)

    def submit(self, stats: EpochStats, improved: bool, fields: dict[str, Any], files: tuple[Path, Path, Path],
               rows: str) -> None:  # fmt: skip
        """Copy checkpoint `fields` out and reserve the files (last.pt, best.pt if `improved`, metrics.csv), then
        write them while the caller goes on. The epoch before must have been waited for. A reservation that fails
        raises here, before any of the epoch's files is written."""
        assert self._future is None, "one epoch in flight at most"
        last, best, metrics = files
        self.epoch = stats.epoch
        fields = self._snapshot.take(fields)
        size, text = _reservation(fields, last), rows.encode("utf-8")
        reserved: list[Reserved] = []
        try:
            for path, space in ((last, size), (best if improved else None, size), (metrics, len(text))):
                if path is not None:
                    reserved.append(Reserved(path, space))
        except BaseException:
            _discard(reserved)
            raise
        self._unpin()
        self._pinned = _pin(files)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlptrain-checkpoint")
        self._saved = (stats, improved)
        self._future = self._pool.submit(_write, reserved, fields, text)

    def poll(self) -> None:
        """Tell of the epoch in flight if its write has ended well; a failed one is left to wait to raise."""
        if self._future is not None and self._future.done() and self._future.exception() is None:
            self.wait()

    def wait(self) -> None:
        """Wait for the epoch in flight (signals held meanwhile), then tell of it, or raise what its write raised."""
        if self._future is None:
            return
        with held_signals():
            error = self._future.exception()
        self._future, saved, self._saved = None, self._saved, None
        if error is not None:
            raise error
        self.cb.epoch_saved(*saved)

    def close(self) -> None:
        """Wait for the epoch in flight, then let the writer's thread go."""
        try:
            self.wait()
        finally:
            self._unpin()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def _unpin(self) -> None:
        for file in self._pinned:
            file.close()
        self._pinned = []


def _reservation(fields: dict[str, Any], last: Path) -> int:
    """The bytes to reserve for an epoch's checkpoint: the last one's size and a little more (an epoch adds a row
    to the history) where there is one, else the bound. Tight, so that what the file hands back when it is cut to
    its length is little: a disk filled meanwhile stays full for the next epoch, as when the files were written on
    the training thread. A checkpoint that outgrows its reservation still writes; only the guarantee is gone."""
    bound = size_bound(fields)
    try:
        return min(bound, last.stat().st_size + _GROWTH)
    except OSError:
        return bound


def _pin(paths: tuple[Path, ...]) -> list[BinaryIO]:
    """The files at `paths` that are there, opened: their space stays taken after a rename over them until closed."""
    pinned = []
    for path in paths:
        with contextlib.suppress(OSError):  # not there yet (the first epoch, a first best.pt)
            pinned.append(open(path, "rb"))  # noqa: SIM115 (closed by EpochWriter._unpin)
    return pinned


def _write(reserved: list[Reserved], fields: dict[str, Any], text: bytes) -> None:
    """On the writer's thread: last.pt, best.pt (when reserved) a copy of it, then metrics.csv, in that order."""
    last, *copies, metrics = reserved
    try:
        last.commit(lambda f: save_into(f, fields))
        for best in copies:
            best.commit(lambda f: copy_into(last.path, f))
        metrics.commit(lambda f: f.write(text))
    except BaseException:
        _discard(reserved)
        raise


def _discard(reserved: list[Reserved]) -> None:
    for file in reserved:
        file.discard()
