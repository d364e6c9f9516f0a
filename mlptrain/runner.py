"""A training run and a checkpoint evaluation, end to end: config -> data -> model -> loop -> files.

The CLI calls `train` and `evaluate_checkpoint`; progress reaches it through a Callbacks object.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from mlptrain.checkpoint import build_model, load_checkpoint, model_from_checkpoint, save_checkpoint
from mlptrain.config import Config, resolve_device
from mlptrain.data import NUM_CLASSES, Split, class_names, load_eval_split, load_training_data, steps_per_epoch
from mlptrain.engine import (
    COLUMNS,
    EpochStats,
    build_optimizer,
    build_scheduler,
    confusion_matrix,
    fit,
    predict_logits,
    score_logits,
)
from mlptrain.errors import ConfigError, DataError, RunFailed
from mlptrain.files import atomic_write_text, make_dirs, new_run_dir
from mlptrain.plot import plot_run, save_error_grid
from mlptrain.runs import eval_record_path


@dataclass
class RunInfo:
    """What is known once a run has its data and model, before the first epoch."""

    run_dir: Path
    device: str
    threads: int
    dataset: str
    sizes: list[int]
    parameters: int
    train_samples: int
    val_samples: int
    config: Config


class Callbacks:
    """What a run reports as it goes. The defaults do nothing; the CLI's reporter overrides them."""

    def run_started(self, info: RunInfo) -> None:
        pass

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def batch_done(self, step: int) -> None:
        pass

    def epoch_done(self, stats: EpochStats, is_best: bool) -> None:
        pass


@dataclass
class TrainResult:
    run_dir: Path
    monitor: str
    best_epoch: int
    history: list[EpochStats] = field(default_factory=list)

    @property
    def best(self) -> EpochStats:
        return self.history[self.best_epoch - 1]

    def to_json(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "monitor": self.monitor,
            "best_epoch": self.best_epoch,
            "best": self.best.as_dict(),
            "epochs": [s.as_dict() for s in self.history],
            "best_checkpoint": str(self.run_dir / "best.pt"),
            "last_checkpoint": str(self.run_dir / "last.pt"),
        }


def is_better(monitor: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if monitor == "val_acc" else value < best


def prepare_run_dir(config: Config, run_dir: Path | None, force: bool) -> Path:
    """The run's folder, created now, before any data is loaded, so a bad place fails fast."""
    if run_dir is None:
        return new_run_dir(Path(config.output.dir), config.name)
    run_dir = Path(run_dir)
    if (run_dir / "last.pt").exists() and not force:
        raise ConfigError(
            f"{run_dir} already holds a run (last.pt); pass --force to overwrite it, or pick another --run-dir"
        )
    make_dirs(run_dir)
    return run_dir


def train(
    config: Config, run_dir: Path | None = None, force: bool = False, callbacks: Callbacks | None = None
) -> TrainResult:
    """Train `config` from scratch into a run folder; checkpoints and metrics are written after every epoch."""
    cb = callbacks or Callbacks()
    device = resolve_device(config.device)
    fresh = run_dir is None or not Path(run_dir).exists()
    run_dir = prepare_run_dir(config, run_dir, force)
    try:
        data = load_training_data(config.data, config.seed, device)
    except BaseException:
        if fresh:  # nothing was trained: leave no empty run folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    torch.manual_seed(config.seed)  # the weights depend on the seed alone, whatever the device
    model = build_model(config, data.in_features, NUM_CLASSES).to(device)
    optimizer = build_optimizer(model, config.train)
    steps = steps_per_epoch(len(data.train), config.train.batch_size)
    scheduler = build_scheduler(optimizer, config.train, steps * config.train.epochs)
    cb.run_started(
        RunInfo(
            run_dir=run_dir,
            device=str(device),
            threads=torch.get_num_threads(),
            dataset=config.data.dataset,
            sizes=model.sizes,
            parameters=sum(p.numel() for p in model.parameters()),
            train_samples=len(data.train),
            val_samples=len(data.val),
            config=config,
        )
    )

    monitor = config.train.monitor
    result = TrainResult(run_dir=run_dir, monitor=monitor, best_epoch=0)
    best_value: float | None = None
    checkpoint_fields = {
        "config": config.to_dict(),
        "data": {"in_features": data.in_features, "num_classes": NUM_CLASSES, "mean": data.mean, "std": data.std},
    }
    epochs = fit(
        model,
        optimizer,
        scheduler,
        data,
        config.train,
        config.seed,
        on_batch=cb.batch_done,
        on_epoch_start=lambda epoch, n: cb.epoch_started(epoch, config.train.epochs, n),
    )
    for stats in epochs:
        result.history.append(stats)
        write_metrics(run_dir / "metrics.csv", result.history)
        if not (math.isfinite(stats.train_loss) and math.isfinite(stats.val_loss)):
            cb.epoch_done(stats, False)
            raise RunFailed(
                f"the loss diverged in epoch {stats.epoch} (train_loss={stats.train_loss}); try a lower "
                f"train.lr (now {config.train.lr}). best.pt and last.pt keep the last finite epoch"
            )
        value = getattr(stats, monitor)
        improved = is_better(monitor, value, best_value)
        if improved:
            best_value, result.best_epoch = value, stats.epoch
        ckpt = {
            **checkpoint_fields,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": stats.epoch,
            "metrics": stats.as_dict(),
            "best": {"epoch": result.best_epoch, "monitor": monitor, "value": best_value},
        }
        save_checkpoint(run_dir / "last.pt", **ckpt)
        if improved:
            save_checkpoint(run_dir / "best.pt", **ckpt)
        cb.epoch_done(stats, improved)
    plot_run(run_dir)  # curves.png, drawn from the metrics.csv just written
    return result


def write_metrics(path: Path, history: list[EpochStats]) -> None:
    """metrics.csv, rewritten whole and atomically; floats at full precision so they can be compared exactly."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for stats in history:
        writer.writerow([repr(v) if isinstance(v, float) else v for v in stats.as_dict().values()])
    atomic_write_text(path, buf.getvalue())


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# `eval --errors` shows this many of the most confidently wrong images (four rows of eight).
ERROR_GRID_SIZE = 32


@dataclass
class EvalResult:
    checkpoint: Path
    split: str
    samples: int
    loss: float
    accuracy: float
    epoch: int
    dataset: str
    device: str
    classes: list[str] = field(default_factory=list)  # what each label means: '0'..'9', or Fashion-MNIST's names
    confusion: list[list[int]] = field(default_factory=list)  # (classes, classes): row = true, column = predicted
    record: Path | None = None  # where this result was recorded for `mlptrain runs`
    record_problem: str = ""  # why it could not be, if it could not
    errors_image: Path | None = None
    errors_shown: int = 0

    @property
    def per_class(self) -> list[float | None]:
        """Accuracy on each true class (None for a class the split lacks)."""
        return [row[label] / sum(row) if sum(row) else None for label, row in enumerate(self.confusion)]

    def to_json(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint),
            "split": self.split,
            "samples": self.samples,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "epoch": self.epoch,
            "dataset": self.dataset,
            "device": self.device,
            "classes": self.classes,
            "per_class": self.per_class,
            "confusion": self.confusion,
        }


def evaluate_checkpoint(
    path: Path,
    split: str = "test",
    data_root: Path | None = None,
    device: str = "auto",
    errors_image: Path | None = None,
    record: bool = True,
) -> EvalResult:
    """Score a checkpoint on the test split, or on the validation images its run held out.

    Also counts the confusion matrix; draws the most confidently wrong images into `errors_image` if given; and
    records the result next to the checkpoint (see runs.eval_record_path) unless `record` is false.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    config: Config = ckpt["config"]
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt, path, dev)
    data_cfg = replace(config.data, root=str(data_root)) if data_root is not None else config.data
    norm = ckpt["data"]
    mean, std = float(norm["mean"]), float(norm["std"])
    split_data = load_eval_split(data_cfg, split, config.seed, mean, std, dev)
    if split_data.x.shape[1] != model.sizes[0]:
        raise DataError(
            f"{data_cfg.dataset} images have {split_data.x.shape[1]} pixels but the model expects {model.sizes[0]}"
        )
    logits = predict_logits(model, split_data)  # (N, classes)
    loss, accuracy = score_logits(logits, split_data.y)
    predicted = logits.argmax(1)  # as score_logits counts it, so the confusion's diagonal sums to its accuracy
    num_classes = logits.shape[1]
    result = EvalResult(
        checkpoint=path,
        split=split,
        samples=len(split_data),
        loss=loss,
        accuracy=accuracy,
        epoch=int(ckpt["epoch"]),
        dataset=data_cfg.dataset,
        device=str(dev),
        classes=class_names(data_cfg.dataset)[:num_classes],
        confusion=confusion_matrix(predicted, split_data.y, num_classes).tolist(),
    )
    if errors_image is not None:
        confidence = logits.softmax(1).gather(1, predicted[:, None]).squeeze(1)  # (N,)
        result.errors_image = Path(errors_image)
        result.errors_shown = save_mistakes(result, split_data, predicted, confidence, mean, std)
    if record:
        target = eval_record_path(path, split)
        try:
            atomic_write_text(target, json.dumps(result.to_json(), indent=1) + "\n")
            result.record = target
        except OSError as e:
            result.record_problem = f"cannot record the result in {target}: {e.strerror or e}"
    return result


def save_mistakes(
    result: EvalResult, split: Split, predicted: torch.Tensor, confidence: torch.Tensor, mean: float, std: float
) -> int:
    """Draw the most confidently wrong images of `split` into result.errors_image; returns how many it shows."""
    wrong = (predicted != split.y).nonzero().squeeze(1)
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices[:ERROR_GRID_SIZE]
    shown = wrong[order]
    side = math.isqrt(split.x.shape[1])
    # Undo the normalisation: back to the 0..255 pixels the dataset holds.
    pixels = (split.x[shown] * std + mean).mul_(255).round_().clamp_(0, 255).view(-1, side, side).cpu().numpy()
    save_error_grid(
        result.errors_image,
        pixels,
        split.y[shown].tolist(),
        predicted[shown].tolist(),
        confidence[shown].tolist(),
        result.classes,
        title=f"{result.checkpoint} on {result.split} ({result.dataset}): the {len(shown)} most confident of "
        f"{len(wrong):,} mistakes in {result.samples:,} images",
    )
    return len(shown)
