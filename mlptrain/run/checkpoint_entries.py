"""What each entry of a checkpoint must hold (types, shapes and ranges, against the checkpoint's own config), checked
as a whole when it is read, before eval, predict or --resume use any of it. The format itself is checkpoint.py's."""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from mlptrain.base.config import Config, TrainConfig, quote
from mlptrain.base.errors import DataError
from mlptrain.base.metrics import COLUMNS, MONITORS, stats_from_row
from mlptrain.core.data import MIN_STD, NUM_CLASSES, class_names
from mlptrain.core.nn import MLP, build_model
from mlptrain.core.schedule import steps_the_rate

MAX_MAGNITUDE = 1e6  # of a weight or an optimizer's state: far beyond any trained MLP's, well below overflow
DATA_KEYS = ("in_features", "num_classes", "mean", "std")
MAX_CLASSES = 100_000  # model outputs: far past any folder of class folders
MAX_CLASS_NAME = 255  # characters: a class is a folder's name
# What restore and a training step read from the optimizer's state_dict (torch fills in settings it adds later).
_OPTIMIZER_GROUP_KEYS = {
    "sgd": ("params", "lr", "momentum", "dampening", "weight_decay", "nesterov"),
    "adam": ("params", "lr", "betas", "eps", "weight_decay"),
    "adamw": ("params", "lr", "betas", "eps", "weight_decay"),
}
_OPTIMIZER_STATE = {"sgd": ("momentum_buffer",), "adam": ("step", "exp_avg", "exp_avg_sq"),
                    "adamw": ("step", "exp_avg", "exp_avg_sq")}  # fmt: skip
_PROGRESS_KEYS = ("epoch", "order", "step", "loss_sum", "correct", "lr", "seconds")
_SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


class EntryProblem(Exception):
    """What is wrong with one entry of a checkpoint; load_checkpoint adds the file."""

    def __init__(self, entry: str, message: str):
        super().__init__(message)
        self.entry = entry


def _need(ok: bool, entry: str, message: str) -> None:
    if not ok:
        raise EntryProblem(entry, message)


def check_entries(ckpt: dict[str, Any]) -> None:
    """Check every entry's types, shapes and ranges against the checkpoint's own (validated) config, so that
    nothing that uses it fails half-way; raises EntryProblem naming the entry."""
    config: Config = ckpt["config"]
    epoch = ckpt["epoch"]
    _need(
        _is_int(epoch) and 0 <= epoch <= config.train.epochs,
        "epoch",
        f"must be a whole number in 0..train.epochs ({config.train.epochs}), got {quote(epoch)}",
    )
    _check_data(ckpt["data"])
    shapes = _check_model(ckpt["model"], config, ckpt["data"])
    if ckpt.get("ema") is not None:
        _check_average(ckpt["ema"], config, ckpt["data"])
    _check_history(ckpt["history"], ckpt["metrics"], ckpt["best"], epoch)
    _check_optimizer(ckpt["optimizer"], config.train, _group_sizes(shapes, config.train))
    _check_scheduler(ckpt["scheduler"], config.train, len(_group_sizes(shapes, config.train)))
    _check_plateau(ckpt.get("plateau"), config.train)
    _check_rng(ckpt["rng"])
    _check_progress(ckpt["progress"], epoch)
    _check_scaler(ckpt.get("scaler"))


def _check_data(data: Any) -> None:
    _need(
        isinstance(data, dict) and all(_is_number(data.get(key)) for key in DATA_KEYS),
        "data",
        f"incomplete checkpoint, its data section needs {', '.join(DATA_KEYS)} as numbers",
    )
    _need(_is_int(data["in_features"]) and data["in_features"] >= 1, "data.in_features",
          f"must be a whole number from 1, got {quote(data['in_features'])}")  # fmt: skip
    _check_classes(data)
    # Pixels are scaled to [0, 1] before normalising, so their mean is in [0, 1] and their std at most 1.
    _need(0 <= data["mean"] <= 1, "data.mean", f"must be a finite number in [0, 1], got {data['mean']}")
    _need(MIN_STD <= data["std"] <= 1, "data.std", f"must be above 0 (from {MIN_STD:g}) and at most 1, got "
          f"{data['std']}")  # fmt: skip
    for key in ("train_images", "val_images"):  # absent from checkpoints written before them
        if key in data:
            _need(_is_int(data[key]) and data[key] >= 1, f"data.{key}",
                  f"must be a whole number from 1, got {quote(data[key])}")  # fmt: skip


def _check_classes(data: dict) -> None:
    """data.classes names the model's outputs, one each; a checkpoint written before it has 10 outputs."""
    count = data["num_classes"]
    if "classes" not in data:
        _need(count == NUM_CLASSES, "data.num_classes", f"must be {NUM_CLASSES} (no data.classes), got {count}")
        return
    _need(_is_int(count) and 2 <= count <= MAX_CLASSES, "data.num_classes",
          f"must be a whole number in 2..{MAX_CLASSES:,}, got {quote(count)}")  # fmt: skip
    names = data["classes"]
    _need(
        isinstance(names, list)
        and len(names) == count
        and all(isinstance(n, str) and 0 < len(n) <= MAX_CLASS_NAME for n in names)
        and len(set(names)) == count,
        "data.classes",
        f"must be {count} different names (data.num_classes), each 1 to {MAX_CLASS_NAME} characters",
    )


def checkpoint_classes(ckpt: dict[str, Any]) -> list[str]:
    """What each of the model's outputs means: the names its checkpoint records, or, in one written before
    data.classes, its dataset's ('0'..'9', or Fashion-MNIST's names)."""
    data = ckpt["data"]
    if "classes" in data:
        return list(data["classes"])
    return class_names(ckpt["config"].data.dataset)[: int(data["num_classes"])]


def check_same_classes(ckpt: dict[str, Any], classes: list[str], root: str) -> None:
    """A resumed run's data (at `root`) must name the classes its model was trained on (a folder can change)."""
    trained = checkpoint_classes(ckpt)
    if classes != trained:
        raise DataError(
            f"{root}: its classes ({', '.join(classes)}) are not those the run trained on ({', '.join(trained)}); "
            "give data.root the run's dataset, or train a new run"
        )


def _check_model(weights: Any, config: Config, data: dict, entry: str = "model") -> list[tuple[int, ...]]:
    """Check the weights against the MLP the config describes (built on the meta device: shapes, no memory);
    returns its parameters' shapes."""
    with torch.device("meta"):
        model = build_model(config.model, int(data["in_features"]), int(data["num_classes"]))
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    _need(
        isinstance(weights, dict) and set(weights) == set(expected),
        entry,
        f"its weights do not match the MLP its config describes ({_sizes(model)})",
    )
    for key, shape in expected.items():
        t = weights[key]
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        _need(
            isinstance(t, torch.Tensor) and t.is_floating_point() and tuple(t.shape) == shape,
            entry,
            f"weight {key} has shape {got} but its config describes {shape} ({_sizes(model)})",
        )
        _need(bool(torch.isfinite(t).all()), entry, f"weight {key} holds values that are not finite numbers")
        _need(
            bool(t.abs().max() <= MAX_MAGNITUDE) if t.numel() else True,
            entry,
            f"weight {key} holds values beyond ±{MAX_MAGNITUDE:g}, which no trained MLP has (a damaged file?)",
        )
    return list(expected.values())


def _check_average(saved: Any, config: Config, data: dict) -> None:
    """train.ema: the weights being trained (the "model" entry holds their average), and the count of updates."""
    _need(isinstance(saved, dict) and "trained" in saved, "ema", "must hold the trained weights")
    _check_model(saved["trained"], config, data, "ema.trained")
    updates = saved.get("updates", 0)
    _need(_is_int(updates) and updates >= 0, "ema.updates", f"must be a whole number from 0, got {quote(updates)}")


def _group_sizes(shapes: list[tuple[int, ...]], train: TrainConfig) -> list[int]:
    """How many numbers each optimizer parameter holds: the one flat tensor, or with weight decay the weights'
    slice and the biases' (engine.FlatParameters.groups)."""
    total = sum(math.prod(shape) for shape in shapes)
    if train.weight_decay == 0:
        return [total]
    weights = sum(math.prod(shape) for shape in shapes if len(shape) >= 2)
    return [weights, total - weights] if total > weights else [weights]


def _check_history(history: Any, metrics: Any, best: Any, epoch: int) -> None:
    _need(isinstance(history, list) and len(history) == epoch, "history", f"must hold the {epoch} finished epochs")
    for i, row in enumerate(history):
        try:
            stats = stats_from_row(row)
        except (ValueError, TypeError, OverflowError) as e:
            raise EntryProblem(f"history[{i}]", str(e)) from None
        _need(stats.epoch == i + 1, f"history[{i}]", f"must be epoch {i + 1}, got {stats.epoch}")
    _need(isinstance(metrics, dict) and (set(metrics) == set(COLUMNS) if epoch else not metrics), "metrics",
          "must be the last finished epoch's row")  # fmt: skip
    _need(
        isinstance(best, dict)
        and _is_int(best.get("epoch"))
        and 0 <= best["epoch"] <= epoch
        and best.get("monitor") in MONITORS
        and (best.get("value") is None or _is_number(best["value"])),
        "best",
        "must name an epoch, the monitored metric and its value",
    )


def _check_optimizer(saved: Any, train: TrainConfig, sizes: list[int]) -> None:
    optimizer = train.optimizer
    _need(isinstance(saved, dict) and isinstance(saved.get("state"), dict), "optimizer", "must hold a state")
    groups = saved.get("param_groups")
    _need(isinstance(groups, list) and all(isinstance(g, dict) for g in groups), "optimizer.param_groups",
          "must be a list of groups of settings")  # fmt: skip
    _need(
        not (len(groups) == 1 and len(sizes) == 2),
        "optimizer",
        "the checkpoint's optimizer state predates weight decay on weights only (train.weight_decay > 0); "
        "this mlptrain cannot resume it: train it afresh",
    )
    _need(len(groups) == len(sizes), "optimizer.param_groups", f"must be {len(sizes)} group(s), got {len(groups)}")
    for index, group in enumerate(groups):
        for key in _OPTIMIZER_GROUP_KEYS[optimizer]:
            _need(key in group, "optimizer.param_groups", f"lacks {key}, which a {optimizer} optimizer needs")
        _need(group["params"] == [index], "optimizer.param_groups",
              f"group {index} must hold parameter {index}, got {quote(group['params'])}")  # fmt: skip
        for key, value in group.items():
            _need(key == "params" or _is_setting(value), f"optimizer.param_groups.{key}",
                  f"must be a finite number or true/false, got {quote(value)}")  # fmt: skip
            _check_rate(key, value, train)
    state = saved["state"]
    _need(set(state) <= set(range(len(sizes))) and all(isinstance(v, dict) for v in state.values()),
          "optimizer.state", "must hold the state of the optimizer's parameters only")  # fmt: skip
    for index, entries in state.items():
        for key, value in entries.items():
            _check_state(optimizer, key, value, sizes[index])


def _check_state(optimizer: str, key: Any, value: Any, size: int) -> None:
    where = f"optimizer.state.{quote(key)}"
    _need(key in _OPTIMIZER_STATE[optimizer], where, f"is not part of a {optimizer} optimizer's state")
    ok = value is None or (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and (value.numel() == 1 if key == "step" else tuple(value.shape) == (size,))
        and bool(torch.isfinite(value).all())
        and (key == "step" or value.numel() == 0 or bool(value.abs().max() <= MAX_MAGNITUDE))
        and (key not in ("step", "exp_avg_sq") or bool((value >= 0).all()))  # a count, and squares
    )
    _need(ok, where, f"must be finite numbers within ±{MAX_MAGNITUDE:g}, one per parameter ({size:,})")


def _check_rate(key: str, value: Any, train: TrainConfig) -> None:
    """The schedules keep every rate in [0, train.lr] and every momentum (Adam's betas too) in [0, 1), and a
    group's weight decay is train.weight_decay or (the biases') 0: a value outside is a damaged file, and would make
    the run diverge."""
    values, lr = (value if isinstance(value, tuple) else (value,)), train.lr
    where = f"optimizer.param_groups.{key}"
    if key == "weight_decay":
        _need(value in (0, train.weight_decay), where, f"must be 0 or train.weight_decay ({train.weight_decay}), "
              f"got {value}")  # fmt: skip
    elif key.endswith("lr"):
        _need(all(0 <= v <= lr * (1 + 1e-6) for v in values), where, f"must be in [0, train.lr = {lr}], got {value}")
    elif key.endswith("momentum") or key == "betas":
        _need(all(0 <= v < 1 for v in values), where, f"must be in [0, 1), got {value}")


def _check_scheduler(saved: Any, train: TrainConfig, groups: int) -> None:
    if not steps_the_rate(train):
        return  # restore does not read it
    _need(isinstance(saved, dict), "scheduler", f"a {train.scheduler} schedule's state is missing")
    for key in ("last_epoch", "_step_count"):
        _need(_is_int(saved.get(key)) and saved[key] >= 0, f"scheduler.{key}", "must be a whole number from 0")
    last_lr = saved.get("_last_lr", [0.0] * groups)
    finite = isinstance(last_lr, list) and all(_is_number(r) and math.isfinite(r) for r in last_lr)
    _need(finite and len(last_lr) == groups, "scheduler._last_lr", f"must be {groups} finite rate(s), one per group")
    for key in ("_get_lr_called_within_step", "_is_initial"):
        _need(isinstance(saved.get(key, False), bool), f"scheduler.{key}", "must be true or false")


def _check_plateau(saved: Any, train: TrainConfig) -> None:
    """plateau's count: what ReduceLROnPlateau.step reads (its settings are the config's, which cannot change)."""
    if train.scheduler != "plateau":
        return  # restore does not read it
    _need(isinstance(saved, dict), "plateau", "the plateau schedule's state is missing")
    for key in ("last_epoch", "num_bad_epochs", "cooldown_counter"):
        _need(_is_int(saved.get(key)) and saved[key] >= 0, f"plateau.{key}", "must be a whole number from 0")
    _need(_is_number(saved.get("best")) and not math.isnan(saved["best"]), "plateau.best", "must be a number")
    _need(saved.get("mode") in ("min", "max"), "plateau.mode", f"must be min or max, got {quote(saved.get('mode'))}")
    _need(saved.get("threshold_mode") == "abs", "plateau.threshold_mode", "must be abs")


def _check_rng(saved: Any) -> None:
    """Put each saved state into a throwaway generator of its kind: what restore does, touching nothing."""
    import numpy as np

    _need(isinstance(saved, dict) and {"torch", "python", "numpy"} <= set(saved), "rng", "must hold torch, python "
          "and numpy generator states")  # fmt: skip
    for key in ("torch", "python", "numpy"):
        try:
            if key == "torch":
                torch.Generator().set_state(saved["torch"])
            elif key == "python":
                version, internal, gauss = saved["python"]
                random.Random().setstate((version, tuple(internal), gauss))
            else:
                n = saved["numpy"]
                keys = n["keys"].numpy().astype(np.uint32)
                np.random.RandomState().set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        except Exception as e:  # any way a mangled state can be refused
            raise EntryProblem(f"rng.{key}", f"not a generator state ({type(e).__name__})") from None
    for key in ("cuda", "mps"):
        value = saved.get(key)
        _need(value is None or (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1),
              f"rng.{key}", "not a generator state")  # fmt: skip


def _check_progress(saved: Any, epoch: int) -> None:
    """A run stopped inside an epoch: where, and its partial sums."""
    if saved is None:
        return
    _need(
        isinstance(saved, dict) and set(_PROGRESS_KEYS) <= set(saved), "progress", f"needs {', '.join(_PROGRESS_KEYS)}"
    )
    _need(saved["epoch"] == epoch + 1 and _is_int(saved["epoch"]), "progress.epoch", f"must be {epoch + 1}")
    order = saved["order"]
    _need(
        isinstance(order, torch.Tensor)
        and order.dtype == torch.int64
        and order.dim() == 1
        and torch.equal(order.sort().values, torch.arange(len(order))),
        "progress.order",
        "must be a permutation of the training images",
    )
    _need(_is_int(saved["step"]) and saved["step"] >= 0, "progress.step", "must be a whole number from 0")
    for key, dtype in (("loss_sum", torch.float32), ("correct", torch.int64)):
        value = saved[key]
        _need(isinstance(value, torch.Tensor) and value.dtype == dtype and value.dim() == 0, f"progress.{key}",
              f"must be a single {dtype} number")  # fmt: skip
    for key in ("lr", "seconds"):
        _need(_is_number(saved[key]) and math.isfinite(saved[key]), f"progress.{key}", "must be a finite number")
    clipped = saved.get("clipped")  # train.grad_clip_norm's count; checkpoints before it have none
    _need(clipped is None or (isinstance(clipped, torch.Tensor) and clipped.dtype == torch.int64 and clipped.dim() == 0
          and int(clipped) >= 0), "progress.clipped", "must be a single count from 0")  # fmt: skip


def _check_scaler(saved: Any) -> None:
    if not saved:
        return  # restore loads a scaler's state only where there is one
    _need(
        isinstance(saved, dict)
        and all(_is_number(saved.get(key)) and math.isfinite(saved[key]) for key in _SCALER_KEYS)
        and saved["scale"] > 0,
        "scaler",
        f"needs {', '.join(_SCALER_KEYS)} as finite numbers",
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_setting(x: Any) -> bool:
    """An optimizer setting: a finite number, true/false, none, or a tuple of numbers (Adam's betas)."""
    if isinstance(x, tuple):
        return all(_is_number(v) and math.isfinite(v) for v in x)
    return x is None or isinstance(x, bool) or (_is_number(x) and math.isfinite(x))


def _sizes(model: MLP) -> str:
    return "layer sizes " + "-".join(map(str, model.sizes))
