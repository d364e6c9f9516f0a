"""TensorBoard logging of a run (output.tensorboard: true) into RUN/tensorboard/: every metrics.csv column per
epoch, the learning rate per step, the config as hyper-parameters with the best validation metric (TensorBoard's
HParams view), and at the end the best epoch's validation confusion matrix as an image.

The tensorboard package (the `tensorboard` extra) is imported only here, only when the key is on. The rates are
kept as the optimizer holds them (Python floats) and written at each epoch's end: nothing here syncs the device
per batch. A resumed run appends to the same folder: steps already in its event files are not written again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError
from mlptrain.base.metrics import COLUMNS, EpochStats, History
from mlptrain.core.data import Split
from mlptrain.core.engine import confusion_matrix, predict_logits
from mlptrain.run.callbacks import Callbacks, Relay, RunInfo
from mlptrain.run.checkpoint import load_checkpoint, model_from_checkpoint
from mlptrain.run.checkpoint_entries import checkpoint_classes
from mlptrain.run.runs import BEST_FILE, TENSORBOARD_DIR, flatten

HPARAMS_TAG = "_hparams_/session_start_info"  # what TensorBoard's HParams view reads for a run
BEST_METRICS = ("val_acc", "val_loss")  # logged as best/<name>: the best epoch's, the HParams view's metrics


class TensorBoardLog(Relay):
    """Passes every report on to `inner` (the CLI's reporter), and logs it to RUN/tensorboard/. Around the run's
    epochs it is a context: closed however they end, it draws the confusion matrix only if they finished."""

    def __init__(self, inner: Callbacks, run_dir: Path, optimizer, history: History, val: Split, steps: int):
        from torch.utils.tensorboard import SummaryWriter

        super().__init__(inner)
        self.run_dir, self.optimizer, self.history, self.val = run_dir, optimizer, history, val
        self.steps = steps  # optimizer steps per epoch: the learning rate's step is (epoch - 1) * steps + batch
        folder = run_dir / TENSORBOARD_DIR
        if os.path.lexists(folder) and not folder.is_dir():  # the writer would fail on it mid-set-up
            raise ConfigError(
                f"{folder} is not a folder; TensorBoard's event files go there: move it away, or set "
                "output.tensorboard: false"
            )
        self.logged = logged_steps(folder)  # tag -> the last step its event files hold (a resumed run)
        self.writer = SummaryWriter(str(folder))
        self.epoch, self.first, self.done = 0, 1, 0
        self.rates: list = []  # the rate of each step from `first` on, as the optimizer holds it (no sync)

    def run_started(self, info: RunInfo) -> None:
        super().run_started(info)
        if HPARAMS_TAG not in self.logged:
            self._hparams(info.config)
        history = History(self.history.monitor)
        for stats in self.history.epochs:  # epochs a killed run finished but never logged
            history.epochs.append(stats)
            self._epoch(stats, history)
        self.writer.flush()

    def epoch_started(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        super().epoch_started(epoch, epochs, steps, done)
        self.epoch, self.first, self.done, self.rates = epoch, done + 1, done, [self._rate()]

    def batch_done(self, step: int) -> None:
        super().batch_done(step)
        self.done = step
        self.rates.append(self._rate())  # after the scheduler's step: the rate of the next batch

    def epoch_done(self, stats: EpochStats, is_best: bool) -> None:
        super().epoch_done(stats, is_best)
        self._write_rates()
        self._epoch(stats, self.history)
        self.writer.flush()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self.finish()
        finally:
            self.close()

    def finish(self) -> None:
        """At the run's end: the confusion matrix of best.pt (the best epoch) on the validation images."""
        best = self.history.best
        if best is None or not (self.run_dir / BEST_FILE).is_file():
            return
        ckpt = load_checkpoint(self.run_dir / BEST_FILE)
        model = model_from_checkpoint(ckpt, self.run_dir / BEST_FILE, self.val.x.device)
        logits = predict_logits(model, self.val, ckpt["config"].train.precision)  # (N, classes), as validation ran
        counts = confusion_matrix(logits.argmax(1), self.val.y, logits.shape[1]).tolist()
        from mlptrain.run.plot import confusion_image

        names = checkpoint_classes(ckpt)
        title = f"{self.run_dir.name}: validation, epoch {best.epoch} (val acc {100 * best.val_acc:.2f}%)"
        self.writer.add_image(
            "confusion/val_best", confusion_image(counts, names, title), best.epoch, dataformats="HWC"
        )

    def close(self) -> None:
        """Write the rates of a stopped epoch's finished batches (the resumed run logs the rest), and close."""
        self._write_rates()
        self.writer.close()

    def _rate(self):
        return self.optimizer.param_groups[0]["lr"]

    def _write_rates(self) -> None:
        start = (self.epoch - 1) * self.steps
        for i, rate in enumerate(self.rates[: self.done - self.first + 1]):
            self._scalar("step/lr", float(rate), start + self.first + i)
        self.rates = []

    def _epoch(self, stats: EpochStats, history: History) -> None:
        values = stats.as_dict()
        for column in COLUMNS[1:]:
            self._scalar(f"epoch/{column}", float(values[column]), stats.epoch)
        best = history.best
        if best is not None:
            for name in BEST_METRICS:
                self._scalar(f"best/{name}", float(getattr(best, name)), stats.epoch)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        if step > self.logged.get(tag, 0):
            self.writer.add_scalar(tag, value, step)

    def _hparams(self, config: Config) -> None:
        from torch.utils.tensorboard.summary import hparams

        settings = {key: _hparam(value) for key, value in flatten(config.to_dict()).items()}
        experiment, start, _ = hparams(settings, {f"best/{name}": 0.0 for name in BEST_METRICS})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)


def _hparam(value):
    """A config value as TensorBoard's hyper-parameters take it: a bool, a number, or text ([256, 128])."""
    return (
        value if isinstance(value, (bool, int, float)) else json.dumps(value) if isinstance(value, list) else str(value)
    )


def logged_steps(folder: Path) -> dict[str, int]:
    """tag -> the largest step that the event files in `folder` hold for it (none: an empty dict)."""
    if not folder.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: dict[str, int] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                steps[value.tag] = max(steps.get(value.tag, 0), int(event.step))
    return steps
