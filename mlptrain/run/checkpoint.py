"""Self-contained checkpoints, the whole format in one place: what goes in, writing it atomically, reading and
checking it (weights_only=True), and restoring a run's training state from it.

A checkpoint holds everything needed to rebuild, score or resume the model without the original config file:
the weights, the resolved config, the data's size, class names and normalisation, the epoch, its metrics and the
history, the optimizer, scheduler, plateau and loss-scaler state, every RNG's state, the place inside an epoch
where a run was stopped, and the versions that wrote it.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mlptrain import __version__
from mlptrain.base.config import Config, quote
from mlptrain.base.errors import CheckpointError, ConfigError
from mlptrain.base.files import atomic_write, copy_into, file_problem, held_signals
from mlptrain.base.metrics import EpochStats, History, stats_from_row
from mlptrain.core.data import TrainingData
from mlptrain.core.engine import EpochProgress, TrainState
from mlptrain.core.memory import check_fits
from mlptrain.core.nn import MLP, build_model
from mlptrain.core.rng import rng_state, set_rng_state
from mlptrain.core.schedule import steps_the_rate
from mlptrain.run.checkpoint_entries import EntryProblem, check_entries

FORMAT = "mlptrain-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = (
    "config",
    "data",
    "model",
    "epoch",
    "metrics",
    "history",
    "best",
    "optimizer",
    "scheduler",
    "rng",
    "progress",
)  # and "scaler", which checkpoints of runs without loss scaling may lack, and "plateau", under that scheduler
MAX_UNPACK_RATIO = 2  # a checkpoint's parts may unpack to at most twice the file's size (plus 1 MiB)
# What a learning-rate scheduler's state_dict holds about how far it has got; the rest describes the schedule.
_SCHEDULER_PROGRESS = ("last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial")


def save_checkpoint(
    paths: Sequence[Path], config: Config, data: TrainingData, state: TrainState, history: History
) -> None:
    """Write the run's checkpoint at state.epoch (and state.progress, if stopped inside an epoch) to each of
    `paths` in turn, each atomically."""
    fields = checkpoint_fields(config, data, state, history)
    for path in paths:
        write_checkpoint(path, fields)


def write_checkpoint(path: Path, fields: dict[str, Any]) -> None:
    """Atomically write a checkpoint holding `fields` (see _REQUIRED) plus the format and versions."""
    with held_signals():  # a second Ctrl-C waits until the file is whole
        atomic_write(path, lambda f: save_into(f, fields))


def save_into(f: BinaryIO, fields: dict[str, Any]) -> None:
    """Serialise a checkpoint holding `fields` straight into the open file `f` (no copy of it in memory); a failed
    write (a full disk) is the OSError it was, not the RuntimeError torch makes of it."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": {"mlptrain": __version__, "torch": str(torch.__version__)},  # TorchVersion is not plain data
        **fields,
    }
    out = _Writes(f)
    try:
        torch.save(payload, out)
    except Exception:
        if out.error is not None:
            raise out.error from None
        raise


class _Writes:
    """A file as torch.save writes into it, keeping the OSError that a write raised."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def copy_checkpoint(source: Path, target: Path) -> None:
    """Atomically make `target` a copy of checkpoint `source` (best.pt of the last.pt just written, or rebuilt by
    resume): the file copied, not serialised again."""
    atomic_write(target, lambda f: copy_into(source, f))


class Snapshot:
    """The checkpoint's tensors copied out of the training state, into buffers kept from one epoch to the next, so
    that another thread can write them while training goes on: one checkpoint's size in memory, allocated once.

    A storage that several tensors share (FlatParameters' views) is copied once and shared alike, so the file
    written from a snapshot is byte for byte the one written from the state itself. A snapshot's tensors are
    overwritten by the next take: the write of one must end before the next is taken.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.UntypedStorage] = {}

    def take(self, fields: Any) -> Any:
        """`fields` with every tensor copied and every container (dict, list, tuple) made anew."""
        used: dict[tuple, torch.UntypedStorage] = {}
        taken = self._copy(fields, used)
        self._buffers = used  # kept for the next take; a storage no longer in the state is let go
        return taken

    def _copy(self, value: Any, used: dict[tuple, torch.UntypedStorage]) -> Any:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            key = (storage.device, storage.data_ptr(), storage.nbytes())
            if key not in used:
                buffer = self._buffers.get(key)
                if buffer is None:
                    buffer = torch.UntypedStorage(storage.nbytes(), device=storage.device)
                used[key] = buffer.copy_(storage)
            copy = torch.empty(0, dtype=value.dtype, device=value.device)
            return copy.set_(used[key], value.storage_offset(), value.size(), value.stride())
        if isinstance(value, dict):
            copied = type(value)((key, self._copy(v, used)) for key, v in value.items())
            if hasattr(value, "_metadata"):  # a state_dict's versions, which torch.save keeps
                copied._metadata = value._metadata
            return copied
        if isinstance(value, (list, tuple)):
            return type(value)(self._copy(v, used) for v in value)
        return value


def size_bound(fields: dict[str, Any]) -> int:
    """An upper bound on the bytes of the checkpoint save_into writes of `fields`: each storage's bytes once, the
    zip archive's headers and padding for each record, and the pickled rest, twice over."""
    storages: dict[tuple, int] = {}
    tensors = 0

    def skeleton(value: Any) -> Any:
        nonlocal tensors
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[(storage.device, storage.data_ptr(), storage.nbytes())] = storage.nbytes()
            tensors += 1
            return None
        if isinstance(value, dict):
            return {key: skeleton(v) for key, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [skeleton(v) for v in value]
        return value

    rest = len(pickle.dumps(skeleton(fields), protocol=2))
    return sum(storages.values()) + 512 * (len(storages) + tensors) + 2 * rest + 65536


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch that the checkpoint at `path` holds; None if it is missing or unreadable."""
    try:
        return int(load_checkpoint(path)["epoch"])
    except (CheckpointError, TypeError, ValueError):
        return None


def checkpoint_fields(config: Config, data: TrainingData, state: TrainState, history: History) -> dict[str, Any]:
    """What a checkpoint of the run holds (see the module's docstring), as plain data and tensors."""
    epoch, kept = state.epoch, History(history.monitor, history.epochs[: state.epoch])
    return {
        "config": config.to_dict(),
        "data": {
            "in_features": data.in_features,
            "num_classes": len(data.classes),
            "classes": list(data.classes),
            "mean": data.mean,
            "std": data.std,
            "train_images": len(data.train),
            "val_images": len(data.val),  # data.val_size resolved to a count
        },
        "model": state.eval_model.state_dict(),  # under train.ema the averaged weights, which eval uses
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        **({"plateau": state.plateau.state_dict()} if state.plateau is not None else {}),
        "epoch": epoch,
        "metrics": kept.epochs[-1].as_dict() if epoch else {},
        "history": [s.as_dict() for s in kept.epochs],
        "best": {"epoch": kept.best_epoch, "monitor": kept.monitor, "value": kept.best_value},
        "rng": rng_state(_device(state.model)),
        "progress": state.progress.state_dict() if state.progress is not None else None,
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        **_average_fields(state),
    }


def _average_fields(state: TrainState) -> dict[str, Any]:
    """Under train.ema, "ema": the weights being trained (the "model" entry holds their average) and how many
    updates the average has had; absent otherwise, as in checkpoints written before train.ema."""
    if state.average is None:
        return {}
    return {"ema": {"trained": state.model.state_dict(), **state.average.state_dict()}}


def restore(
    ckpt: dict[str, Any], state: TrainState, steps: int | None = None, samples: int | None = None
) -> list[EpochStats]:
    """Put every piece of training state that `ckpt` (from load_checkpoint) holds into `state`, built afresh from
    the checkpoint's config (model, optimizer, scheduler and scaler, all on their device); returns the epochs the
    run has finished. With the run's `steps` per epoch and its number of training `samples`, the place inside an
    epoch is checked against them first. A piece that cannot be put back is a CheckpointError naming it."""
    _check_place(ckpt, steps, samples)
    entry = "model"
    try:
        _restore_weights(ckpt, state)
        entry = "optimizer"
        state.optimizer.load_state_dict(ckpt["optimizer"])  # after the scheduler's constructor, which resets the rate
        entry = "scheduler"
        if state.scheduler is not None:
            _restore_scheduler(state.scheduler, ckpt["scheduler"])
        entry = "plateau"
        if state.plateau is not None:
            state.plateau.load_state_dict(ckpt["plateau"])
        entry = "scaler"
        if state.scaler is not None and ckpt.get("scaler"):
            state.scaler.load_state_dict(ckpt["scaler"])
        entry = "rng"
        set_rng_state(ckpt["rng"], _device(state.model))
        entry = "progress"
        state.epoch = int(ckpt["epoch"])
        progress = ckpt["progress"]
        state.progress = EpochProgress.from_state_dict(progress, _device(state.model)) if progress else None
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        where = ckpt.get("path", "the checkpoint")
        raise CheckpointError(f"{where}: {entry}: cannot be restored ({_first_line(e)})") from None
    return [stats_from_row(row) for row in ckpt["history"]]


def _restore_weights(ckpt: dict[str, Any], state: TrainState) -> None:
    """The weights being trained, and under train.ema their average (which the "model" entry holds)."""
    average = ckpt.get("ema")
    state.model.load_state_dict(ckpt["model"] if average is None else average["trained"])
    if state.average is not None and average is not None:
        state.average.model.load_state_dict(ckpt["model"])
        state.average.load_state_dict(average)


def _check_place(ckpt: dict[str, Any], steps: int | None, samples: int | None) -> None:
    """The checkpoint's place in the run (epoch, step, the schedule's position) fits the run being resumed."""
    progress, where = ckpt["progress"], ckpt.get("path", "the checkpoint")
    step = progress["step"] if progress is not None else 0
    problem, trained = None, ckpt["data"].get("train_images")  # absent from checkpoints written before it
    if trained is not None and samples is not None and trained != samples:
        problem = f"data.train_images: the run trained on {trained} images, but its data now gives {samples}"
    elif progress is not None and samples is not None and len(progress["order"]) != samples:
        problem = f"progress.order: orders {len(progress['order'])} images, but the run trains on {samples}"
    elif steps is not None and step > steps:
        problem = f"progress.step: {step} batches done, but an epoch has {steps}"
    elif steps is not None and steps_the_rate(ckpt["config"].train):
        done = ckpt["epoch"] * steps + step
        if ckpt["scheduler"]["last_epoch"] > done:
            problem = f"scheduler: at step {ckpt['scheduler']['last_epoch']}, past the {done} steps the run has taken"
    if problem:
        raise CheckpointError(f"{where}: {problem}")


def _restore_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler, saved: dict[str, Any]) -> None:
    """Continue the saved schedule; where the run's length has changed since (train.epochs extended, or another
    number of processes), continue the new, longer schedule from the step reached instead."""
    fresh = scheduler.state_dict()
    if all(fresh[key] == saved.get(key) for key in fresh if key not in _SCHEDULER_PROGRESS):
        scheduler.load_state_dict(saved)
        return
    fresh.update(last_epoch=saved["last_epoch"] - 1, _step_count=saved["_step_count"])
    scheduler.load_state_dict(fresh)
    scheduler.step()  # the new schedule's rate (and momentum) at the step reached


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint as a whole before anything uses it; every problem becomes a one-line
    CheckpointError naming the file (and the entry). The result also holds "path", where it was read from."""
    path = Path(path)
    if path.is_dir():
        hint = f"; did you mean {path / 'best.pt'}?" if (path / "best.pt").is_file() else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    problem = file_problem(path, "checkpoint")
    if problem:
        raise CheckpointError(problem)
    _check_unpacked_size(path)
    ckpt = _unpickle(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a torch file, but not an mlptrain checkpoint")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{path}: checkpoint format version {quote(version)} is not supported; this mlptrain "
            f"({__version__}) reads version {FORMAT_VERSION}"
        )
    missing = [key for key in _REQUIRED if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    try:
        ckpt["config"] = Config.from_dict(ckpt["config"], source="its config")
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        check_entries(ckpt)
    except EntryProblem as e:
        raise CheckpointError(f"{path}: {e.entry}: {e}") from None
    ckpt["path"] = path
    return ckpt


def _check_unpacked_size(path: Path) -> None:
    """Refuse a file that is not a zip archive (torch.save's format) or whose parts would unpack to far more than
    the file holds (a zip bomb): torch.save stores its parts uncompressed, so they add up to the file's size."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint: truncated or not a torch file ({_first_line(e)})"
        ) from None
    if unpacked > MAX_UNPACK_RATIO * size + 2**20:
        raise CheckpointError(
            f"{path}: refused: its parts would unpack to {unpacked:,} bytes from a file of {size:,} "
            "(a torch checkpoint is stored uncompressed)"
        )


def _unpickle(path: Path) -> Any:
    """torch.load(weights_only=True), any failure of a mangled file a CheckpointError and its warnings kept quiet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # what a damaged file makes torch warn about is said in the error
            # weights_only: tensors and plain containers only; a pickle that would run code is refused, never run.
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        if found:
            raise CheckpointError(
                f"{path}: refused: it holds a Python object ({found.group(1)}) that only a full unpickle could "
                "rebuild, and unpickling can run arbitrary code; mlptrain loads plain weights_only checkpoints"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint: corrupt or not a torch file") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint: truncated or not a torch file ({_first_line(e)})"
        ) from None
    except Exception as e:  # a mangled pickle fails inside the unpickler in any way (KeyError, IndexError, ...)
        raise CheckpointError(f"{path}: not a readable checkpoint: corrupt ({type(e).__name__})") from None


def load_model(path: str | Path, device: torch.device) -> tuple[dict[str, Any], MLP]:
    """(the checkpoint at `path`, its model on `device`): how eval, predict and export begin."""
    ckpt = load_checkpoint(path)
    return ckpt, model_from_checkpoint(ckpt, Path(path), device)


def model_from_checkpoint(ckpt: dict[str, Any], path: Path, device: torch.device) -> MLP:
    """Rebuild the MLP from a checkpoint that load_checkpoint read (and checked) and load its weights, on `device`
    if it fits there."""
    model_config = ckpt["config"].model
    sizes = [int(ckpt["data"]["in_features"]), *model_config.hidden, int(ckpt["data"]["num_classes"])]
    try:
        check_fits(sizes, device, training=False, bias=model_config.bias)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    model = build_model(model_config, sizes[0], sizes[-1])
    model.load_state_dict(ckpt["model"])
    return model.to(device)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
