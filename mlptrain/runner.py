"""A training run and a checkpoint evaluation, end to end: config -> data -> model -> loop -> files.

The CLI calls `train` and `evaluate_checkpoint`; progress reaches it through a Callbacks object.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
import random
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from mlptrain import distributed
from mlptrain.checkpoint import build_model, load_checkpoint, model_from_checkpoint, save_checkpoint
from mlptrain.config import Config, parse_override, resolve_device, with_values
from mlptrain.data import (
    NUM_CLASSES,
    Split,
    TrainingData,
    class_names,
    load_eval_split,
    load_training_data,
    steps_per_epoch,
)
from mlptrain.distributed import SINGLE, World
from mlptrain.engine import (
    COLUMNS,
    EpochProgress,
    EpochStats,
    FlatParameters,
    TrainingStopped,
    autocast,
    build_optimizer,
    build_scheduler,
    confusion_matrix,
    fit,
    grad_scaler,
    predict_logits,
    score_logits,
)
from mlptrain.errors import CheckpointError, ConfigError, DataError, MlptrainError, RunFailed
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
        pass


@dataclass
class TrainResult:
    run_dir: Path
    monitor: str
    best_epoch: int
    history: list[EpochStats] = field(default_factory=list)
    stopped_early: bool = False  # train.patience epochs without improvement
    already_finished: bool = False  # --resume of a run with nothing left to do

    @property
    def best(self) -> EpochStats:
        return self.history[self.best_epoch - 1]

    def to_json(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "monitor": self.monitor,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "already_finished": self.already_finished,
            "best": self.best.as_dict(),
            "epochs": [s.as_dict() for s in self.history],
            "best_checkpoint": str(self.run_dir / "best.pt"),
            "last_checkpoint": str(self.run_dir / "last.pt"),
        }


def is_better(monitor: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if monitor == "val_acc" else value < best


class StopRequest:
    """Set by a signal handler (or a test); the loop stops at the next batch boundary and saves its place."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest):
    """While training, SIGINT/SIGTERM ask for a clean stop; a second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def handle(signum, frame):
        if signum == signal.SIGINT and stop.signum is not None:
            raise KeyboardInterrupt
        stop.request(signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Interrupted(MlptrainError):
    """The run stopped on a signal after saving its exact place in last.pt; exit 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, resume_command: str, signum: int):
        super().__init__(message)
        self.resume_command = resume_command
        self.exit_code = 128 + signum


def prepare_run_dir(config: Config, run_dir: Path | None, force: bool) -> Path:
    """The run's folder, created now, before any data is loaded, so a bad place fails fast."""
    if run_dir is None:
        return new_run_dir(Path(config.output.dir), config.name)
    run_dir = Path(run_dir)
    if (run_dir / "last.pt").exists() and not force:
        raise ConfigError(
            f"{run_dir} already holds a run (last.pt); continue it with --resume {run_dir}, "
            "overwrite it with --force, or pick another --run-dir"
        )
    make_dirs(run_dir)
    return run_dir


# Below this many multiply-adds per training step (batch × weights), auto uses one CPU thread. On an idle
# 2-core machine two threads are up to 15% faster at such sizes; on a busy one (other processes on the cores)
# two threads wait for each other at every small op and a step took 50× longer. See README, Performance.
SMALL_STEP_MACS = 32_000_000


def configure_threads(config: Config, device: torch.device, world: World = SINGLE) -> int:
    """Set torch's CPU thread count from `threads` (auto: by the work per step) and return it.

    The processes of a distributed run on one machine share its cores: auto gives each an equal part.
    """
    cores = _DEFAULT_THREADS if world.local_size == 1 else max(1, _cores() // world.local_size)
    if config.threads != "auto":
        threads = config.threads
    elif device.type == "cpu":
        sizes = [784, *config.model.hidden, 10]  # MNIST-style input; close enough to size the work
        macs = config.train.batch_size // world.size * sum(a * b for a, b in itertools.pairwise(sizes))
        threads = 1 if macs < SMALL_STEP_MACS else cores
    else:
        threads = cores  # the host only feeds the GPU
    torch.set_num_threads(threads)
    return threads


_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (physical cores), read before anything changes it


def _cores() -> int:
    # Not torch.get_num_threads(): torchrun sets OMP_NUM_THREADS=1 in its workers, which that would report.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def seed_everything(seed: int) -> None:
    """torch (every device), numpy and python's random, so anything drawing random numbers is reproducible."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """Every RNG a run may draw from, as plain data a weights_only checkpoint can hold."""
    import numpy as np

    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


@dataclass
class _Session:
    """Everything a run carries from one epoch to the next; what a checkpoint stores and restores."""

    config: Config
    run_dir: Path
    device: torch.device
    data: TrainingData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    result: TrainResult
    scaler: torch.amp.GradScaler | None = None
    start_epoch: int = 0
    progress: EpochProgress | None = None
    train_model: torch.nn.Module | None = None  # what the training pass calls: the model, or its compiled form
    notes: list[str] = field(default_factory=list)
    world: World = SINGLE  # the processes training together; rank 0 alone reports and writes files

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return steps_per_epoch(len(self.data.train), self.config.train.batch_size, self.world.size)

    @property
    def best_value(self) -> float | None:
        """The monitored metric of the best epoch so far, read from the history."""
        result = self.result
        return getattr(result.best, result.monitor) if result.best_epoch else None

    def checkpoint(self, epoch: int, progress: EpochProgress | None) -> dict:
        history = self.result.history
        return {
            "config": self.config.to_dict(),
            "data": {
                "in_features": self.data.in_features,
                "num_classes": NUM_CLASSES,
                "mean": self.data.mean,
                "std": self.data.std,
            },
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": epoch,
            "metrics": history[epoch - 1].as_dict() if epoch else {},
            "history": [s.as_dict() for s in history[:epoch]],
            "best": {"epoch": self.result.best_epoch, "monitor": self.result.monitor, "value": self.best_value},
            "rng": rng_state(self.device),
            "progress": progress.state_dict() if progress is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }


def train(
    config: Config,
    run_dir: Path | None = None,
    force: bool = False,
    callbacks: Callbacks | None = None,
    stop: StopRequest | None = None,
) -> TrainResult:
    """Train `config` from scratch into a run folder; checkpoints and metrics are written after every epoch.

    Under torchrun, every process calls this: they train together and rank 0 alone writes the run folder.
    """
    with _processes(config) as (world, device):
        fresh = run_dir is None or not Path(run_dir).exists()
        run_dir = distributed.run_on_main(world, lambda: prepare_run_dir(config, run_dir, force))
        try:
            data = distributed.main_first(world, lambda: load_training_data(config.data, config.seed, device))
        except BaseException:
            if fresh and world.is_main:  # nothing was trained: leave no empty run folder behind
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if world.is_main:
            for stale in ("metrics.csv", "best.pt", "last.pt"):  # --force over an old run: none of it stays
                (run_dir / stale).unlink(missing_ok=True)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        session = _new_session(config, run_dir, device, data, world)
        return _run(session, callbacks or Callbacks(), stop or StopRequest())


def resume(
    path: Path, overrides: list[str] = (), callbacks: Callbacks | None = None, stop: StopRequest | None = None
) -> TrainResult:
    """Continue the run in folder `path` (or of checkpoint `path`) from its last.pt, exactly where it stopped.

    Only train.epochs may be overridden, to extend a run. A run that has finished returns at once, with
    `already_finished` set. Under torchrun every process reads the checkpoint (on several machines, the run
    folder must be at the same path on each) and they continue together.
    """
    ckpt, config, run_dir = load_for_resume(path, overrides)
    with _processes(config) as (world, device):
        data = distributed.main_first(world, lambda: load_training_data(config.data, config.seed, device))
        session = _new_session(config, run_dir, device, data, world, ckpt)
        if session.progress is None and _finished(session):
            session.result.already_finished = True
            return session.result
        if config.train.epochs != ckpt["config"].train.epochs and world.is_main:
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        return _run(session, callbacks or Callbacks(), stop or StopRequest())


@contextlib.contextmanager
def _processes(config: Config) -> Iterator[tuple[World, torch.device]]:
    """(this process's world, its device) for a run of `config`, inside torchrun's process group where there is
    one, with the CPU threads set; refuses a config that cannot be split over the processes."""
    world = World.from_env()
    distributed.check_world(config, world.size, world.local_size)
    device = world.device(resolve_device(config.device))
    with distributed.joined(world, device):
        configure_threads(config, device, world)
        yield world, device


def load_for_resume(path: Path, overrides: list[str] = ()) -> tuple[dict, Config, Path]:
    """(checkpoint, config with overrides, run folder) of the run to resume at `path`, every problem refused."""
    path = Path(path)
    ckpt_path = path / "last.pt" if path.is_dir() else path
    if path.is_dir() and not ckpt_path.exists():
        raise CheckpointError(f"{path} holds no last.pt to resume from")
    ckpt = load_checkpoint(ckpt_path)
    run_dir = ckpt_path.parent
    config: Config = ckpt["config"]
    for item in overrides:
        key, value = parse_override(item)
        if key != "train.epochs":
            raise ConfigError(f"--set {item}: only train.epochs can change when resuming; {key} is fixed by the run")
        config = with_values(config, {key: value}, source=f"--set {item}")
    if config.train.epochs < ckpt["epoch"]:
        raise ConfigError(
            f"--set train.epochs={config.train.epochs}: the run has already finished {ckpt['epoch']} epochs"
        )
    return ckpt, config, run_dir


def _new_session(
    config: Config,
    run_dir: Path,
    device: torch.device,
    data: TrainingData,
    world: World = SINGLE,
    ckpt: dict | None = None,
):
    """Build model, optimizer and schedule; from a checkpoint, restore every piece of state it holds."""
    seed_everything(config.seed)  # the weights depend on the seed alone, whatever the device
    model = build_model(config, data.in_features, NUM_CLASSES).to(device)
    optimizer = build_optimizer([FlatParameters(model).param], config.train)
    steps = steps_per_epoch(len(data.train), config.train.batch_size, world.size)
    scheduler = build_scheduler(optimizer, config.train, steps * config.train.epochs)
    result = TrainResult(run_dir=run_dir, monitor=config.train.monitor, best_epoch=0)
    scaler = grad_scaler(device, config.train.precision)
    session = _Session(config, run_dir, device, data, model, optimizer, scheduler, result, scaler, world=world)
    session.train_model = model
    if config.train.compile:
        session.train_model, note = compile_model(model, optimizer, data, config)
        if note:
            session.notes.append(note)
    if ckpt is not None:
        _restore(session, ckpt)
    if world.distributed:
        session.train_model = distributed.wrap(session.train_model, device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        b = config.train.batch_size
        session.notes.append(
            f"{world.size} processes ({backend}), data-parallel: each trains on {b // world.size} of every batch of {b}"
        )
        progress = session.progress
        distributed.seed_rank(config.seed, world, session.start_epoch, progress.step if progress else 0)
        if progress is not None and not world.is_main:  # the checkpoint's partial sums are all ranks' (see _run)
            progress.loss_sum.zero_()
            progress.correct.zero_()
    return session


def _restore(session: _Session, ckpt: dict) -> None:
    """Every piece of state `ckpt` holds, into the session just built from its config."""
    config, model, optimizer, scheduler = session.config, session.model, session.optimizer, session.scheduler
    scaler, result, device = session.scaler, session.result, session.device
    steps = session.steps
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])  # after the scheduler's constructor, which resets the rate
    if scheduler is not None:
        saved = ckpt["scheduler"]
        if saved["total_steps" if "total_steps" in saved else "T_max"] == steps * config.train.epochs:
            scheduler.load_state_dict(saved)
        else:  # train.epochs was extended: the longer schedule, continued from the step reached
            scheduler.last_epoch = saved["last_epoch"] - 1
            scheduler._step_count = saved["_step_count"]
            scheduler.step()
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"], device)
    result.history = [EpochStats(**row) for row in ckpt["history"]]
    result.best_epoch = ckpt["best"]["epoch"]
    session.start_epoch = ckpt["epoch"]
    if ckpt["progress"] is not None:
        session.progress = EpochProgress.from_state_dict(ckpt["progress"], device)


def compile_model(model: torch.nn.Module, optimizer, data: TrainingData, config: Config):
    """(torch.compile(model), None), compiled now on one batch; or (model, why) where compiling fails.

    The trial step runs with the RNG states forked and its gradients zeroed after, so a compiled run draws the
    same random numbers as an eager one and resumes exactly.
    """
    x, y = data.train.x[: config.train.batch_size], data.train.y[: config.train.batch_size]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        compiled = torch.compile(model)
        with torch.random.fork_rng(devices=devices), autocast(x.device, config.train.precision):
            torch.nn.functional.cross_entropy(compiled(x), y).backward()
        optimizer.zero_grad(set_to_none=False)
        return compiled, None
    except Exception as e:  # a missing compiler, an unsupported platform...: train eagerly instead
        optimizer.zero_grad(set_to_none=False)
        torch._dynamo.reset()
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return model, f"train.compile: torch.compile failed here ({type(e).__name__}: {reason}); training eagerly"


def _finished(session: _Session) -> bool:
    epoch, patience = session.start_epoch, session.config.train.patience
    stalled = patience > 0 and epoch - session.result.best_epoch >= patience
    return epoch >= session.config.train.epochs or stalled


def _run(session: _Session, cb: Callbacks, stop: StopRequest) -> TrainResult:
    """The epoch loop shared by a new run and a resumed one.

    With several processes, all make the same decisions from the same all-reduced numbers (best epoch, early
    stop, divergence) and agree on every stop; rank 0 alone reports and writes.
    """
    config, run_dir, result, world = session.config, session.run_dir, session.result, session.world
    main = world.is_main
    if not main:
        cb = Callbacks()
    should_stop = AgreedStop(stop, world)
    if main:
        write_metrics(run_dir / "metrics.csv", result.history)
    cb.run_started(
        RunInfo(
            run_dir=run_dir,
            device=str(session.device),
            threads=torch.get_num_threads(),
            dataset=config.data.dataset,
            sizes=session.model.sizes,
            parameters=sum(p.numel() for p in session.model.parameters()),
            train_samples=len(session.data.train),
            val_samples=len(session.data.val),
            config=config,
            resumed_at=_resume_point(session),
            notes=session.notes,
        )
    )
    monitor = config.train.monitor
    epochs = fit(
        session.train_model,
        session.optimizer,
        session.scheduler,
        session.data,
        config.train,
        config.seed,
        start_epoch=session.start_epoch,
        progress=session.progress,
        on_batch=cb.batch_done,
        on_epoch_start=lambda epoch, steps, done: cb.epoch_started(epoch, config.train.epochs, steps, done),
        should_stop=should_stop,
        scaler=session.scaler,
        eval_model=session.model,
        world=world,
    )
    with stop_on_signals(stop):
        try:
            for stats in epochs:
                result.history.append(stats)
                if main:
                    write_metrics(run_dir / "metrics.csv", result.history)
                if not (math.isfinite(stats.train_loss) and math.isfinite(stats.val_loss)):
                    cb.epoch_done(stats, False)
                    raise RunFailed(
                        f"the loss diverged in epoch {stats.epoch} (train_loss={stats.train_loss}); try a lower "
                        f"train.lr (now {config.train.lr}). best.pt and last.pt keep the last finite epoch"
                    )
                value = getattr(stats, monitor)
                improved = is_better(monitor, value, session.best_value)
                if improved:
                    result.best_epoch = stats.epoch
                if main:
                    ckpt = session.checkpoint(stats.epoch, None)
                    save_checkpoint(run_dir / "last.pt", **ckpt)
                    if improved:
                        save_checkpoint(run_dir / "best.pt", **ckpt)
                cb.epoch_done(stats, improved)
                session.start_epoch = stats.epoch
                if should_stop.now() and stats.epoch < config.train.epochs:
                    raise _stopped(session, None, stop)
                if _finished(session) and stats.epoch < config.train.epochs:
                    result.stopped_early = True
                    break
        except TrainingStopped as e:
            progress = e.progress  # every process stopped after the same batch; rank 0 saves all ranks' sums
            progress.loss_sum, progress.correct = world.all_sum(progress.loss_sum), world.all_sum(progress.correct)
            if main:
                save_checkpoint(run_dir / "last.pt", **session.checkpoint(session.start_epoch, progress))
            raise _stopped(session, progress, stop) from None
    if main:
        plot_run(run_dir)  # curves.png, drawn from the metrics.csv just written
    return result


class AgreedStop:
    """The loop's should_stop: the local StopRequest, or, with several processes, whether any of them has one.

    Every process calls it at the same points (after every batch, after every epoch), so they all stop after the
    same batch and none is left waiting in a collective. Between batches they compare notes every
    `every` batches only: one all-reduce costs ~0.7 ms on a busy 2-core CPU, more than a small step.
    """

    def __init__(self, stop: StopRequest, world: World, every: int = 8):
        self.stop, self.world, self.every, self.calls = stop, world, every, 0

    def __call__(self) -> bool:
        self.calls += 1
        if self.world.distributed and self.calls % self.every:
            return False
        return self.now()

    def now(self) -> bool:
        signum = self.world.agreed_signal(self.stop.signum)
        if signum is not None and self.stop.signum is None:  # another process got the signal: stop likewise
            self.stop.signum = signum
        return self.stop()


def _resume_point(session: _Session) -> str | None:
    if session.progress is not None:
        return f"epoch {session.progress.epoch}, batch {session.progress.step + 1}/{session.steps}"
    return f"epoch {session.start_epoch + 1}" if session.start_epoch else None


def _stopped(session: _Session, progress: EpochProgress | None, stop: StopRequest) -> Interrupted:
    run_dir, world = session.run_dir, session.world
    where = (
        f"in epoch {progress.epoch} after batch {progress.step}/{session.steps}"
        if progress is not None
        else f"after epoch {session.start_epoch}"
    )
    name = signal.Signals(stop.signum).name
    result = session.result
    best = (
        f"; best so far: epoch {result.best_epoch} ({result.monitor} {session.best_value:.4f}) in best.pt"
        if result.best_epoch
        else ""
    )
    command = f"mlptrain train --resume {run_dir}"
    if world.distributed:  # on one machine --nproc says it all; on several, torchrun's flags are the user's own
        command = f"{command} --nproc {world.size}" if world.local_size == world.size else f"torchrun ... -m {command}"
    return Interrupted(
        f"{name}: stopped {where}; its exact place is saved in {run_dir / 'last.pt'}{best}",
        resume_command=command,
        signum=stop.signum,
    )


def write_metrics(path: Path, history: list[EpochStats]) -> None:
    """metrics.csv, rewritten whole and atomically; floats at full precision so they can be compared exactly."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for stats in history:
        writer.writerow([repr(v) if isinstance(v, float) else v for v in stats.as_dict().values()])
    atomic_write_text(path, buf.getvalue())


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
    logits = predict_logits(model, split_data, config.train.precision)  # (N, classes), as validation ran
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
