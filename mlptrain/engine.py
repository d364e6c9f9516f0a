"""The training and evaluation loops: tensors in, numbers out. Nothing here prints or touches files.

Metrics are summed on the device and read back once per epoch (the only host syncs), so the GPU never
waits for Python between batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlptrain.config import TrainConfig
from mlptrain.data import EVAL_BATCH_SIZE, Split, TrainingData, shuffled_batches, steps_per_epoch


@dataclass
class EpochStats:
    """One finished epoch. Accuracies are fractions in [0, 1]; `lr` is the rate of the epoch's last step."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    train_seconds: float
    val_seconds: float
    samples_per_second: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


COLUMNS = tuple(EpochStats.__dataclass_fields__)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # For Adam, train.momentum is beta1 (its default 0.9 is Adam's own).
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int):
    """A per-step schedule over `steps` optimizer steps in all, or None for a constant rate."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if cfg.scheduler == "onecycle":
        # Momentum (beta1 for Adam) dips by 0.1 while the rate climbs and recovers as it falls, as in
        # Smith's one-cycle policy; a run without momentum keeps none.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=steps,
            cycle_momentum=cfg.momentum > 0,
            base_momentum=max(cfg.momentum - 0.1, 0.0),
            max_momentum=cfg.momentum,
        )
    return None


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The data order of an epoch depends on (seed, epoch) only, so a resumed run sees the same batches."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    split: Split,
    batch_size: int,
    generator: torch.Generator,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[float, float, float]:
    """One pass over `split` in shuffled batches -> (mean loss, accuracy, learning rate of the last step)."""
    model.train()
    device = split.x.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    lr = optimizer.param_groups[0]["lr"]
    for step, (x, y) in enumerate(shuffled_batches(split, batch_size, generator)):
        logits = model(x)  # (B, classes)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        if on_batch is not None:
            on_batch(step + 1)
    n = len(split)
    return loss_sum.item() / n, correct.item() / n, lr  # .item(): the epoch's one host sync


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(mean loss, accuracy) over `split`, in large fixed-size batches with dropout off."""
    return score_logits(predict_logits(model, split), split.y)


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split) -> torch.Tensor:
    """(N, classes) logits over `split`, dropout off, in the fixed-size batches every evaluation uses."""
    model.eval()
    return torch.cat(
        [model(split.x[start : start + EVAL_BATCH_SIZE]) for start in range(0, len(split), EVAL_BATCH_SIZE)]
    )


def score_logits(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) of logits (N, classes) against labels (N,).

    The loss is summed per EVAL_BATCH_SIZE rows, in order, so it is the very number the batched evaluation has
    always given (validation during training and `mlptrain eval` agree to the last digit).
    """
    loss_sum = torch.zeros((), device=logits.device)
    for start in range(0, len(y), EVAL_BATCH_SIZE):
        loss_sum += F.cross_entropy(
            logits[start : start + EVAL_BATCH_SIZE], y[start : start + EVAL_BATCH_SIZE], reduction="sum"
        )
    correct = (logits.argmax(1) == y).sum()
    n = len(y)
    return loss_sum.item() / n, correct.item() / n


def confusion_matrix(predicted: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(classes, classes) int64 counts: row = true label, column = predicted label."""
    return torch.bincount(y * num_classes + predicted, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    data: TrainingData,
    cfg: TrainConfig,
    seed: int,
    start_epoch: int = 0,
    on_batch: Callable[[int], None] | None = None,
    on_epoch_start: Callable[[int, int], None] | None = None,
) -> Iterator[EpochStats]:
    """Train epochs start_epoch+1 .. cfg.epochs, yielding each one's statistics as it finishes."""
    device = data.train.x.device
    steps = steps_per_epoch(len(data.train), cfg.batch_size)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        if on_epoch_start is not None:
            on_epoch_start(epoch, steps)
        synchronize(device)
        t0 = time.perf_counter()
        generator = epoch_generator(seed, epoch, device)
        train_loss, train_acc, lr = train_epoch(
            model, optimizer, scheduler, data.train, cfg.batch_size, generator, on_batch
        )
        synchronize(device)
        t1 = time.perf_counter()
        val_loss, val_acc = evaluate(model, data.val)
        synchronize(device)
        t2 = time.perf_counter()
        yield EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=lr,
            train_seconds=t1 - t0,
            val_seconds=t2 - t1,
            samples_per_second=len(data.train) / (t1 - t0),
        )
