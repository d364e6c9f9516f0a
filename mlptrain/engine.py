"""The training and evaluation loops: tensors in, numbers out. Nothing here prints or touches files.

Metrics are summed on the device and read back once per epoch (the only host syncs), so the GPU never
waits for Python between batches.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlptrain.config import TrainConfig
from mlptrain.data import EVAL_BATCH_SIZE, Split, TrainingData, batches, epoch_order, steps_per_epoch, trained_samples
from mlptrain.distributed import SINGLE, World
from mlptrain.nn import MLP


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


class FlatParameters:
    """A model's parameters as views into one flat tensor, and their gradients as views into another.

    The optimizer then steps one tensor instead of one per weight and bias: at MNIST sizes the per-tensor
    overhead of an optimizer step costs more than its arithmetic. SGD, Adam and AdamW work element by element,
    so the result is bitwise the same as stepping each parameter on its own (the tests check this). Backward
    accumulates into the bound gradient views in place, so zero them with zero_grad(set_to_none=False).
    Flatten after moving the model to its device.
    """

    def __init__(self, model: nn.Module):
        params = [p for p in model.parameters() if p.requires_grad]
        first = params[0]
        total = sum(p.numel() for p in params)
        self.param = torch.empty(total, device=first.device, dtype=first.dtype, requires_grad=True)
        self.param.grad = torch.zeros_like(self.param)
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                self.param[offset : offset + n].copy_(p.reshape(-1))
                p.data = self.param.data[offset : offset + n].view_as(p)
                p.grad = self.param.grad[offset : offset + n].view_as(p)
                offset += n


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over `params` (an iterable of tensors, e.g. [FlatParameters(model).param]).

    The fused implementation (one kernel per step) where the device has it: on this project's CPU it steps
    SGD 20% and Adam 25% faster than the default loop.
    """
    params = list(params)
    if cfg.optimizer == "sgd":
        cls, options = torch.optim.SGD, {"momentum": cfg.momentum}
    else:  # for Adam, train.momentum is beta1 (its default 0.9 is Adam's own)
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        options = {"betas": (cfg.momentum, 0.999)}
    try:
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, **options)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **options)


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


@dataclass
class EpochProgress:
    """How far a training pass has got: enough to continue it bit for bit after an interruption."""

    epoch: int
    order: torch.Tensor  # (N,) the epoch's permutation of the training split
    step: int  # batches done
    loss_sum: torch.Tensor  # () sum of per-sample losses so far, on the device
    correct: torch.Tensor  # () int64 count of right answers so far, on the device
    lr: float  # the rate of the last step taken
    seconds: float = 0.0  # training time spent in this epoch so far

    @classmethod
    def begin(cls, epoch: int, split: Split, seed: int, lr: float) -> EpochProgress:
        device = split.x.device
        return cls(
            epoch=epoch,
            order=epoch_order(len(split), seed, epoch, device),
            step=0,
            loss_sum=torch.zeros((), device=device),
            correct=torch.zeros((), device=device, dtype=torch.int64),
            lr=lr,
        )

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "order": self.order.cpu(),
            "step": self.step,
            "loss_sum": self.loss_sum.cpu(),
            "correct": self.correct.cpu(),
            "lr": self.lr,
            "seconds": self.seconds,
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device) -> EpochProgress:
        return cls(
            epoch=int(state["epoch"]),
            order=state["order"].to(device),
            step=int(state["step"]),
            loss_sum=state["loss_sum"].to(device),
            correct=state["correct"].to(device),
            lr=float(state["lr"]),
            seconds=float(state["seconds"]),
        )


class TrainingStopped(Exception):
    """Raised out of fit() when should_stop() asked for a stop inside an epoch; carries where it stopped."""

    def __init__(self, progress: EpochProgress):
        super().__init__(f"stopped in epoch {progress.epoch} after {progress.step} batches")
        self.progress = progress


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    split: Split,
    batch_size: int,
    progress: EpochProgress,
    on_batch: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    world: World = SINGLE,
) -> bool:
    """Train on `split` in the order and from the step that `progress` holds, updating it as it goes.

    Returns True when the pass is complete, False when should_stop() ended it early at a batch boundary. In a
    world of several processes, this one trains on its share of each global batch of `batch_size`.
    """
    model.train()
    by_hand = takes_step_by_hand(model, precision, scaler)  # overwrites the gradients: nothing to zero
    # Zeroing in place keeps FlatParameters' gradient views bound. One foreach call on the gradients found
    # here costs a fifth of optimizer.zero_grad's Python; gradients that do not exist yet are left to it.
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    all_bound = len(grads) == sum(len(group["params"]) for group in optimizer.param_groups)
    order, batch_size = world.shard(progress.order, batch_size)
    for x, y in batches(split, order, batch_size, progress.step):
        progress.lr = optimizer.param_groups[0]["lr"]
        if by_hand:
            loss, logits = model.backprop(x, y)  # (), (B, classes)
            optimizer.step()
        else:
            loss, logits = _autograd_step(model, optimizer, x, y, grads if all_bound else None, precision, scaler)
        if scheduler is not None:
            scheduler.step()
        progress.loss_sum.add_(loss.detach(), alpha=y.shape[0])
        progress.correct.add_((logits.argmax(1) == y).sum())
        progress.step += 1
        if on_batch is not None:
            on_batch(progress.step)
        if should_stop is not None and should_stop():
            break
    return progress.step == steps_per_epoch(len(order), batch_size)


def takes_step_by_hand(model: nn.Module, precision: str = "fp32", scaler: torch.amp.GradScaler | None = None) -> bool:
    """Whether training computes `model`'s gradients by hand (MLP.backprop) instead of through autograd.

    The fused MLP in fp32 does: the same numbers without building a graph, a third less time per small step on
    a CPU. Any other model (the per-layer path, a compiled or DistributedDataParallel-wrapped one) or precision
    (autocast, loss scaling) goes through autograd.
    """
    return isinstance(model, MLP) and model.fused and precision == "fp32" and scaler is None


def _autograd_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    grads: list[torch.Tensor] | None,
    precision: str,
    scaler: torch.amp.GradScaler | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the gradients (`grads` in place when given), forward, backward, optimizer step: (loss, logits)."""
    if grads is not None:
        torch._foreach_zero_(grads)
    else:
        optimizer.zero_grad(set_to_none=False)
    with autocast(x.device, precision):
        logits = model(x)  # (B, classes)
        loss = F.cross_entropy(logits, y)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:  # fp16: scale the loss so small gradients survive, skip steps whose gradients overflowed
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss, logits


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (its range is narrow); bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def autocast(device: torch.device, precision: str):
    """The autocast region for `precision` ('fp32' turns it off): matmuls in bf16/fp16, reductions in fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, precision: str = "fp32") -> tuple[float, float]:
    """(mean loss, accuracy) over `split`, in large fixed-size batches with dropout off."""
    return score_logits(predict_logits(model, split, precision), split.y)


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, precision: str = "fp32") -> torch.Tensor:
    """(N, classes) float32 logits over `split`, dropout off, in the fixed-size batches every evaluation uses."""
    model.eval()
    chunks = []
    for start in range(0, len(split), EVAL_BATCH_SIZE):
        x = split.x[start : start + EVAL_BATCH_SIZE]
        with autocast(x.device, precision):
            logits = model(x)
        chunks.append(logits.float())  # exact from bf16/fp16, so the argmax is the same; a no-op for fp32
    return torch.cat(chunks)


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
    progress: EpochProgress | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_epoch_start: Callable[[int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    eval_model: nn.Module | None = None,
    world: World = SINGLE,
) -> Iterator[EpochStats]:
    """Train epochs start_epoch+1 .. cfg.epochs, yielding each one's statistics as it finishes.

    `progress` continues an interrupted epoch (its epoch must be start_epoch+1). `eval_model` (default: `model`)
    runs validation, e.g. the eager model when `model` is its compiled form. If should_stop() turns true
    inside an epoch, the pass ends at the next batch boundary and TrainingStopped carries the progress out.
    With several processes (`world`), the training metrics are summed over all of them; each validates alone.
    """
    device = data.train.x.device
    n = trained_samples(len(data.train), world.size)
    steps = steps_per_epoch(n, cfg.batch_size)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        if progress is None or progress.epoch != epoch:
            progress = EpochProgress.begin(epoch, data.train, seed, optimizer.param_groups[0]["lr"])
        if on_epoch_start is not None:
            on_epoch_start(epoch, steps, progress.step)
        synchronize(device)
        t0 = time.perf_counter()
        finished = train_epoch(
            model, optimizer, scheduler, data.train, cfg.batch_size, progress, on_batch, should_stop,
            cfg.precision, scaler, world,
        )  # fmt: skip
        synchronize(device)
        progress.seconds += time.perf_counter() - t0
        if not finished:
            raise TrainingStopped(progress)
        loss_sum, correct = world.all_sum(progress.loss_sum), world.all_sum(progress.correct)
        train_loss, train_acc = loss_sum.item() / n, correct.item() / n  # the epoch's host sync
        t1 = time.perf_counter()
        val_loss, val_acc = evaluate(eval_model or model, data.val, cfg.precision)
        synchronize(device)
        yield EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=progress.lr,
            train_seconds=progress.seconds,
            val_seconds=time.perf_counter() - t1,
            samples_per_second=n / progress.seconds,
        )
