"""One training step, the epoch loop around it, and evaluation: tensors in, numbers out. Nothing here prints or
touches files.

Metrics are summed on the device and read back once per epoch (the only host syncs), so the GPU never
waits for Python between batches.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlptrain.base.config import Config, TrainConfig
from mlptrain.base.metrics import EpochStats
from mlptrain.core import eager
from mlptrain.core.augment import Augmenter
from mlptrain.core.data import (
    EVAL_BATCH_SIZE,
    Split,
    TrainingData,
    batches,
    epoch_order,
    shard_order,
    steps_per_epoch,
    trained_samples,
)
from mlptrain.core.distributed import SINGLE, World
from mlptrain.core.nn import MLP
from mlptrain.core.recipe import WeightAverage, clip_grad_norm
from mlptrain.core.schedule import step_plateau


class FlatParameters:
    """A model's parameters as views into one flat tensor, and their gradients as views into another.

    The optimizer then steps one tensor instead of one per weight and bias: at MNIST sizes the per-tensor
    overhead of an optimizer step costs more than its arithmetic. SGD, Adam and AdamW work element by element,
    so the result is bitwise the same as stepping each parameter on its own (the tests check this). Backward
    accumulates into the bound gradient views in place, so zero them with zero_grad(set_to_none=False).
    Flatten after moving the model to its device.

    `weights_first` lays the weights (the tensors of two or more dimensions) out before the biases, so that
    groups() can hand the optimizer two contiguous slices: the weights, which decay, and the biases, which do not.
    Without weight decay the layout is model.parameters()' order, as checkpoints before that split hold it.
    """

    def __init__(self, model: nn.Module, weights_first: bool = False):
        params = [p for p in model.parameters() if p.requires_grad]
        if weights_first:
            params = [p for p in params if p.dim() >= 2] + [p for p in params if p.dim() < 2]
        self.decayed = sum(p.numel() for p in params if p.dim() >= 2) if weights_first else None
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

    def groups(self) -> list:
        """What build_optimizer takes: [the flat tensor]; laid out weights first, two parameter groups instead,
        leaf views of the weights' slice and the biases' slice (these without weight decay)."""
        if self.decayed is None:
            return [self.param]
        weights, biases = self._leaf(0, self.decayed), self._leaf(self.decayed, self.param.numel())
        return [{"params": [weights]}] + ([{"params": [biases], "weight_decay": 0.0}] if biases.numel() else [])

    def _leaf(self, start: int, stop: int) -> torch.Tensor:
        leaf = self.param.detach()[start:stop].requires_grad_()  # a view that the optimizer may step
        leaf.grad = self.param.grad[start:stop]
        return leaf


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over `params` (an iterable of tensors, e.g. [FlatParameters(model).param]).

    The fused implementation (one kernel for the whole step) where the device has it, else torch's default.
    """
    params = list(params)
    if cfg.optimizer == "sgd":
        cls, options = torch.optim.SGD, {"momentum": cfg.momentum}
    else:  # for Adam, train.momentum is beta1 (its default 0.9 is Adam's own)
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        options = {"betas": (cfg.momentum, 0.999)}
    try:
        return eager.make_optimizer(cls, params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, **options)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return eager.make_optimizer(cls, params, lr=cfg.lr, weight_decay=cfg.weight_decay, **options)


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
    clipped: torch.Tensor | None = None  # () int64 count of steps whose gradient train.grad_clip_norm cut

    def __post_init__(self):
        if self.clipped is None:
            self.clipped = torch.zeros((), device=self.correct.device, dtype=torch.int64)

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
            "clipped": self.clipped.cpu(),
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
            clipped=state["clipped"].to(device) if "clipped" in state else None,  # older checkpoints: none
        )


class TrainingStopped(Exception):
    """Raised out of fit() when should_stop() asked for a stop inside an epoch; carries where it stopped."""

    def __init__(self, progress: EpochProgress):
        super().__init__(f"stopped in epoch {progress.epoch} after {progress.step} batches")
        self.progress = progress


@dataclass
class TrainState:
    """What the training loop updates, and how far it has got."""

    model: nn.Module  # what validation runs and a checkpoint holds
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # stepped after every batch
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None  # stepped after every epoch's validation
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaling
    train_model: nn.Module | None = None  # what training calls, if not `model`: its compiled or DDP-wrapped form
    average: WeightAverage | None = None  # train.ema: the weights' moving average, updated after every step

    @property
    def training_model(self) -> nn.Module:
        """What the training pass calls: train_model, else model."""
        return self.model if self.train_model is None else self.train_model  # not `or`: modules may define len()

    @property
    def eval_model(self) -> nn.Module:
        """What validation runs and best.pt holds: the averaged weights under train.ema, else `model`."""
        return self.model if self.average is None else self.average.model

    epoch: int = 0  # epochs finished
    progress: EpochProgress | None = None  # the epoch under way, when one was stopped part-way


@dataclass
class Hooks:
    """What the loop tells its caller, and asks it; each may be None."""

    on_epoch_start: Callable[[int, int, int], None] | None = None  # (epoch, steps in it, steps already done)
    on_batch: Callable[[int], None] | None = None  # (steps done in this epoch)
    should_stop: Callable[[], bool] | None = None  # asked after every batch: stop at this boundary?


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    autograd: bool = False,
    label_smoothing: float = 0.0,
    clip: tuple[float, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch x (B, in), y (B,): (loss, logits (B, classes)).

    The gradients by hand where takes_step_by_hand says so (MLP.backprop overwrites them: nothing to zero);
    else, or with `autograd`, zero them, forward, backward through autograd, and step. `clip`, (max norm, a
    () int64 counter), clips the gradients' global norm before the step and counts the steps it cut.
    """
    if not autograd and takes_step_by_hand(model, precision, scaler):
        loss, logits = model.backprop(x, y, label_smoothing)
        if clip is not None:
            clip_grad_norm(optimizer, *clip)
        eager.step(optimizer)
        return loss, logits
    zero_grad(optimizer)
    loss, logits = backward(model, x, y, precision, scaler, label_smoothing)
    if clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        clip_grad_norm(optimizer, *clip)
    if scaler is None:
        eager.step(optimizer)
    else:  # fp16: skip a step whose gradients overflowed, and adapt the scale
        scaler.step(optimizer)
        scaler.update()
    return loss, logits


def takes_step_by_hand(model: nn.Module, precision: str = "fp32", scaler: torch.amp.GradScaler | None = None) -> bool:
    """Whether training computes `model`'s gradients by hand (MLP.backprop) instead of through autograd.

    The fused MLP in fp32 does: the same numbers without building a graph, which is what makes a small step fast
    on a CPU (README, Performance). Any other model (the per-layer path, a compiled or DistributedDataParallel-
    wrapped one) or precision (autocast, loss scaling) goes through autograd.
    """
    return isinstance(model, MLP) and model.fused and precision == "fp32" and scaler is None


def backward(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    scaler: torch.amp.GradScaler | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward through autograd, adding the gradients of the mean cross-entropy: (loss, logits)."""
    with autocast(x.device, precision):
        logits = model(x)  # (B, classes)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    (loss if scaler is None else scaler.scale(loss)).backward()  # fp16: scaled, so small gradients survive
    return loss, logits


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """Zero the gradients in place, which keeps FlatParameters' gradient views bound.

    One foreach call when every parameter has a gradient tensor (a fifth of optimizer.zero_grad's Python);
    before the first backward, optimizer.zero_grad leaves the missing ones missing.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    if all(g is not None for g in grads):
        torch._foreach_zero_(grads)
    else:
        optimizer.zero_grad(set_to_none=False)


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
    state: TrainState, data: TrainingData, config: Config, hooks: Hooks | None = None, world: World = SINGLE
) -> Iterator[EpochStats]:
    """Train epochs state.epoch+1 .. train.epochs, yielding each one's statistics as it finishes.

    Continues state.progress, an epoch stopped part-way, if it is the next epoch. When hooks.should_stop() turns
    true inside an epoch, the pass ends at that batch boundary and TrainingStopped carries the progress out. With
    several processes (`world`), the training metrics are summed over all of them; each validates alone.
    """
    cfg, hooks = config.train, hooks or Hooks()
    device = data.train.x.device
    n = trained_samples(len(data.train), world.size)
    steps = steps_per_epoch(len(data.train), cfg.batch_size, world.size)
    augment = Augmenter.build(config.data.augment, data, config.seed, world.rank)
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        progress = state.progress
        if progress is None or progress.epoch != epoch:
            progress = state.progress = EpochProgress.begin(epoch, data.train, config.seed, _lr(state.optimizer))
        if hooks.on_epoch_start is not None:
            hooks.on_epoch_start(epoch, steps, progress.step)
        synchronize(device)
        t0 = time.perf_counter()
        train_epoch(state, data.train, progress, cfg, hooks, world, augment)
        synchronize(device)
        progress.seconds += time.perf_counter() - t0
        if progress.step < steps:
            raise TrainingStopped(progress)
        loss_sum, correct = world.all_sum(progress.loss_sum), world.all_sum(progress.correct)
        train_loss, train_acc = loss_sum.item() / n, correct.item() / n  # the epoch's host sync
        t1 = time.perf_counter()
        val_loss, val_acc = evaluate(state.eval_model, data.val, cfg.precision)
        synchronize(device)
        step_plateau(state.plateau, cfg, epoch, steps, val_acc if cfg.monitor == "val_acc" else val_loss)
        state.epoch, state.progress = epoch, None
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
            clipped_steps=int(world.all_sum(progress.clipped).item()) if cfg.grad_clip_norm > 0 else 0,
        )


def train_epoch(
    state: TrainState,
    split: Split,
    progress: EpochProgress,
    cfg: TrainConfig,
    hooks: Hooks,
    world: World = SINGLE,
    augment: Augmenter | None = None,
) -> None:
    """Train on `split` in the order and from the step that `progress` holds, updating it as it goes, until the
    epoch's end or until hooks.should_stop() asks for a stop. In a world of several processes, this one trains
    on its share of each global batch of cfg.batch_size. `augment` distorts each batch (data.augment)."""
    model = state.training_model
    model.train()
    order, batch_size = shard_order(progress.order, cfg.batch_size, world.rank, world.size)
    clip = (cfg.grad_clip_norm, progress.clipped) if cfg.grad_clip_norm > 0 else None
    for x, y in batches(split, order, batch_size, progress.step):
        if augment is not None:
            x = augment(x, progress.epoch, progress.step)
        progress.lr = _lr(state.optimizer)
        loss, logits = train_step(
            model, state.optimizer, x, y, cfg.precision, state.scaler, label_smoothing=cfg.label_smoothing, clip=clip
        )
        if state.average is not None:
            state.average.update()
        if state.scheduler is not None:
            state.scheduler.step()
        progress.loss_sum.add_(loss.detach(), alpha=y.shape[0])
        progress.correct.add_((logits.argmax(1) == y).sum())
        progress.step += 1
        if hooks.on_batch is not None:
            hooks.on_batch(progress.step)
        if hooks.should_stop is not None and hooks.should_stop():
            break


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def compile_model(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, precision: str
) -> tuple[nn.Module, str | None]:
    """(torch.compile(model), None), compiled now on the batch (x, y); or (model, why) where compiling fails.

    The trial forward and backward run with the RNG states forked and the gradients zeroed after, and no optimizer
    step: a compiled run draws the same random numbers as an eager one, from the same weights, and resumes exactly.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        compiled = torch.compile(model)
        with torch.random.fork_rng(devices=devices):
            backward(compiled, x, y, precision)
        optimizer.zero_grad(set_to_none=False)
        return compiled, None
    except Exception as e:  # a missing compiler, an unsupported platform...: train eagerly instead
        optimizer.zero_grad(set_to_none=False)
        torch._dynamo.reset()
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return model, f"train.compile: torch.compile failed here ({type(e).__name__}: {reason}); training eagerly"
