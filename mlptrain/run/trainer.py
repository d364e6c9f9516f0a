"""A training run: a config trained from scratch, or a run resumed from its last.pt, epoch by epoch around
engine.fit, writing its folder as it goes (runs.py names the files). Nothing here prints: what happens reaches
the caller through a Callbacks object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mlptrain.base.config import Config, dump_yaml
from mlptrain.base.errors import Interrupted, RunFailed, WriteFailed
from mlptrain.base.extras import check_config
from mlptrain.base.files import atomic_write_text, held_signals
from mlptrain.base.metrics import LABELS, UNITS, EpochStats, History, metric_text, metrics_text, write_metrics
from mlptrain.core import distributed
from mlptrain.core.data import TrainingData, load_training_data, steps_per_epoch
from mlptrain.core.device import resolve_device
from mlptrain.core.distributed import World
from mlptrain.core.engine import (
    FlatParameters,
    Hooks,
    TrainingStopped,
    TrainState,
    build_optimizer,
    compile_model,
    fit,
    grad_scaler,
)
from mlptrain.core.memory import check_run_fits
from mlptrain.core.nn import build_model
from mlptrain.core.recipe import WeightAverage
from mlptrain.core.rng import seed_everything
from mlptrain.core.schedule import build_plateau, build_scheduler
from mlptrain.core.threads import ThreadChoice, adapts, configure_threads, recheck
from mlptrain.run.callbacks import Callbacks, RunInfo
from mlptrain.run.checkpoint import (
    checkpoint_fields,
    restore,
    save_checkpoint,
)
from mlptrain.run.checkpoint_entries import check_same_classes
from mlptrain.run.interrupt import AgreedStop, StopRequest, stop_on_signals
from mlptrain.run.mlflowlog import MLflowLog, Tracking, tracked
from mlptrain.run.plot import plot_run
from mlptrain.run.resuming import load_for_resume, repair, resume_lock
from mlptrain.run.runs import BEST_FILE, CONFIG_FILE, LAST_FILE, METRICS_FILE, claimed_run_dir, clear_run, read_run
from mlptrain.run.saving import EpochWriter


@dataclass
class TrainResult:
    """How a run ended: its epochs, and whether it stopped early or had nothing left to do."""

    run_dir: Path
    history: History
    stopped_early: bool = False  # train.patience epochs without improvement
    already_finished: bool = False  # --resume of a run with nothing left to do
    min_delta: float = 0.0  # train.min_delta: what an improvement had to beat the last one by, for patience

    @property
    def stalled(self) -> int:
        """Epochs since the last improvement (by more than min_delta) that train.patience counts."""
        last = self.history.epochs[-1].epoch if self.history.epochs else 0
        return last - self.history.last_improvement(self.min_delta)

    @property
    def monitor(self) -> str:
        return self.history.monitor

    @property
    def best_epoch(self) -> int:
        return self.history.best_epoch

    @property
    def best(self) -> EpochStats | None:
        return self.history.best

    def to_json(self) -> dict:
        best = self.history.best
        return {
            "run_dir": str(self.run_dir),
            "monitor": self.monitor,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "already_finished": self.already_finished,
            "best": best.as_dict() if best is not None else None,
            "epochs": [s.as_dict() for s in self.history.epochs],
            "best_checkpoint": str(self.run_dir / BEST_FILE),
            "last_checkpoint": str(self.run_dir / LAST_FILE),
        }


@dataclass(frozen=True)
class Processes:
    """Where a run trains, resolved once: this process among torchrun's (or alone), its device, its CPU threads."""

    world: World
    device: torch.device
    threads: ThreadChoice


@dataclass
class _Session:
    """A run under way: what it trains on, its training state, and its history so far."""

    config: Config
    run_dir: Path
    processes: Processes
    data: TrainingData
    state: TrainState
    history: History
    notes: list[str] = field(default_factory=list)
    tracking: Tracking | None = None  # rank 0's MLflow run, with output.mlflow

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return steps_per_epoch(len(self.data.train), self.config.train.batch_size, self.processes.world.size)


def train(
    config: Config,
    run_dir: Path | None = None,
    force: bool = False,
    callbacks: Callbacks | None = None,
    stop: StopRequest | None = None,
    curves: bool = True,
    mlflow_parent: str | None = None,
) -> TrainResult:
    """Train `config` from scratch into a run folder; checkpoints and metrics are written after every epoch.

    Under torchrun, every process calls this: they train together and rank 0 alone writes the run folder.
    `curves`: draw curves.png when the run ends (a sweep's trials leave it to `mlptrain plot`: it costs more
    than a short trial's training), as output.mlflow does for its artifacts. `mlflow_parent`: with output.mlflow,
    the MLflow run (a sweep's) whose child this run is.
    """
    config = config.resolved()  # relative folders mean where the run starts; config.yaml records them absolute
    check_config(config)
    with _processes(config) as processes, contextlib.ExitStack() as claim:
        world, output = processes.world, Path(config.output.dir)
        run_dir = distributed.run_on_main(
            world, lambda: claim.enter_context(claimed_run_dir(run_dir, output, config.name, force))
        )
        tracking = tracked(config, run_dir, world, claim, mlflow_parent, fresh=True)  # before the data: fails fast
        data = distributed.main_first(world, lambda: load_training_data(config.data, config.seed, processes.device))
        if world.is_main:
            clear_run(run_dir)  # --force over an old run: none of it stays
            if tracking is not None:
                tracking.record()
            atomic_write_text(run_dir / CONFIG_FILE, dump_yaml(config))
            write_metrics(run_dir / METRICS_FILE, [])  # the header; resume rewrites it from last.pt (resuming.repair)
        session = _new_session(config, run_dir, processes, data)
        session.tracking = tracking
        return _run(session, callbacks or Callbacks(), stop or StopRequest(), curves)


def resume(
    path: Path,
    overrides: list[str] = (),
    callbacks: Callbacks | None = None,
    stop: StopRequest | None = None,
    curves: bool = True,
    mlflow_parent: str | None = None,
) -> TrainResult:
    """Continue the run in folder `path` (or of checkpoint `path`) from its last.pt, exactly where it stopped.

    Only train.epochs may be overridden, to extend a run. A run that has finished returns at once, with
    `already_finished` set; one killed before its first epoch was saved (a config.yaml, no last.pt) starts again.
    Under torchrun every process reads the checkpoint (on several machines, the run folder must be at the same
    path on each) and they continue together.
    """
    path = Path(path)
    with resume_lock(path):
        ckpt, config, run_dir = load_for_resume(path, overrides)
        if ckpt is None:  # stopped before its first epoch was saved: start it again, in its own folder
            return train(
                config,
                run_dir=run_dir,
                force=True,
                callbacks=callbacks,
                stop=stop,
                curves=curves,
                mlflow_parent=mlflow_parent,
            )
        check_config(config)
        with _processes(config) as processes, contextlib.ExitStack() as stack:
            tracking = tracked(config, run_dir, processes.world, stack, mlflow_parent, fresh=False)
            device = processes.device
            stats = ckpt["data"]["mean"], ckpt["data"]["std"]  # as the run began, not summed again
            data = distributed.main_first(
                processes.world, lambda: load_training_data(config.data, config.seed, device, stats)
            )
            check_same_classes(ckpt, data.classes, config.data.root)
            session = _new_session(config, run_dir, processes, data, ckpt)
            session.tracking = tracking
            if processes.world.is_main:
                session.notes += repair(run_dir, session.history, ckpt)
            if session.state.progress is None and _finished(session):
                if tracking is not None:  # stopped after its last epoch, before MLflow had all of it
                    tracking.catch_up(config, session.history)
                    tracking.finish(session.history)
                return TrainResult(run_dir, session.history, already_finished=True)
            if config.train.epochs != ckpt["config"].train.epochs and processes.world.is_main:
                atomic_write_text(run_dir / CONFIG_FILE, dump_yaml(config))
            return _run(session, callbacks or Callbacks(), stop or StopRequest(), curves)


@contextlib.contextmanager
def _processes(config: Config) -> Iterator[Processes]:
    """Where a run of `config` trains, inside torchrun's process group where there is one, with the CPU threads
    set; refuses a config that cannot be split over the processes."""
    world = World.from_env()
    device = world.device(resolve_device(config.device))
    distributed.check_world(config, device, world.size, world.local_size)
    check_run_fits(config, device, world.size)
    with distributed.joined(world, device):
        yield Processes(world, device, configure_threads(config, device, world.local_size))


def _new_session(
    config: Config, run_dir: Path, processes: Processes, data: TrainingData, ckpt: dict | None = None
) -> _Session:
    """Build model, optimizer and schedule; from a checkpoint, restore every piece of state it holds."""
    world, device = processes.world, processes.device
    seed_everything(config.seed)  # the weights depend on the seed alone, whatever the device
    model = build_model(config.model, data.in_features, len(data.classes)).to(device)
    flat = FlatParameters(model, weights_first=config.train.weight_decay > 0)  # biases do not decay
    optimizer = build_optimizer(flat.groups(), config.train)
    steps = steps_per_epoch(len(data.train), config.train.batch_size, world.size)
    scheduler = build_scheduler(optimizer, config.train, steps * config.train.epochs)
    state = TrainState(model, optimizer, scheduler, build_plateau(optimizer, config.train))
    state.scaler = grad_scaler(device, config.train.precision)
    if config.train.ema > 0:
        state.average = WeightAverage(model, flat.param, config.train.ema)
    session = _Session(config, run_dir, processes, data, state, History(config.train.monitor), list(data.notes))
    if config.train.compile:
        x, y = data.train.x[: config.train.batch_size], data.train.y[: config.train.batch_size]
        state.train_model, note = compile_model(model, optimizer, x, y, config.train.precision)
        session.notes += [note] if note else []
    if ckpt is not None:
        session.history.epochs = restore(ckpt, state, steps, len(data.train))
    if world.distributed:
        _join_processes(session)
    return session


def _join_processes(session: _Session) -> None:
    """Make the session one of several data-parallel processes: the model wrapped in DistributedDataParallel, a
    dropout stream of each rank's own, and partial sums that rank 0 alone carries over a resume."""
    world, device, state = session.processes.world, session.processes.device, session.state
    state.train_model = distributed.wrap(state.training_model, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    b = session.config.train.batch_size
    session.notes.append(
        f"{world.size} processes ({backend}), data-parallel: each trains on {b // world.size} of every batch of {b}"
    )
    progress = state.progress
    distributed.seed_rank(session.config.seed, world, state.epoch, progress.step if progress else 0)
    if progress is not None and not world.is_main:  # the checkpoint's partial sums are all ranks' (see _run)
        progress.loss_sum.zero_()
        progress.correct.zero_()


def _finished(session: _Session) -> bool:
    """Every epoch trained, or train.patience epochs since the last improvement (by more than train.min_delta), from
    the history alone: a resumed run decides as the uninterrupted one."""
    epoch, train = session.state.epoch, session.config.train
    stalled = train.patience > 0 and epoch - session.history.last_improvement(train.min_delta) >= train.patience
    return epoch >= session.config.train.epochs or stalled


def _run(session: _Session, cb: Callbacks, stop: StopRequest, curves: bool = True) -> TrainResult:
    """The epoch loop shared by a new run and a resumed one.

    With several processes, all make the same decisions from the same all-reduced numbers (best epoch, early
    stop, divergence) and agree on every stop; rank 0 alone reports and writes.
    """
    config, world = session.config, session.processes.world
    if not world.is_main:
        cb = Callbacks()
    log = _tensorboard(session, cb)
    cb = log or cb
    cb = MLflowLog(cb, session.tracking, session.history) if session.tracking else cb
    cb.run_started(_info(session))
    should_stop = AgreedStop(stop, world)
    epochs = config.train.epochs
    writer = EpochWriter(cb) if world.is_main else None  # the epoch's files, written while the next one trains
    on_batch = cb.batch_done if writer is None else lambda step: (cb.batch_done(step), writer.poll())
    hooks = Hooks(lambda epoch, steps, done: cb.epoch_started(epoch, epochs, steps, done), on_batch, should_stop)
    result = TrainResult(session.run_dir, session.history, min_delta=config.train.min_delta)
    with stop_on_signals(stop), _peer_gone_is_a_stop(session, stop), log or contextlib.nullcontext():
        try:
            with _written(session, writer):
                for stats in fit(session.state, session.data, config, hooks, world):
                    _record(session, stats, cb, writer)
                    _recheck_threads(session, stats.epoch + 1, cb)
                    if should_stop.now() and stats.epoch < epochs:
                        raise _stopped(session, stop)
                    if _finished(session) and stats.epoch < epochs:
                        result.stopped_early = True
                        break
        except TrainingStopped as e:  # (_written has waited for the epoch in flight: the place is saved after it)
            _save_stop(session, e.progress)
            raise _stopped(session, stop) from None
    if world.is_main and (curves or session.tracking):
        plot_run(read_run(session.run_dir))  # curves.png, drawn from the metrics.csv just written
    if session.tracking:
        session.tracking.finish(session.history)
    return result


def _recheck_threads(session: _Session, epoch: int, cb: Callbacks) -> None:
    """`threads: auto` on a CPU follows the load: the count for `epoch`, from the cores others kept busy during the
    last one (the results do not depend on it, see mlptrain/__init__.py)."""
    processes = session.processes
    if epoch > session.config.train.epochs or not adapts(session.config, processes.device, processes.world.local_size):
        return
    choice = recheck(processes.threads)
    if choice.threads != processes.threads.threads:
        cb.threads_changed(epoch, choice.threads, choice.why)
    session.processes = Processes(processes.world, processes.device, choice)


def _tensorboard(session: _Session, cb: Callbacks) -> Callbacks | None:
    """With output.tensorboard, rank 0's callbacks that also log to RUN/tensorboard/ (tblog.py); else None."""
    if not (session.config.output.tensorboard and session.processes.world.is_main):
        return None
    from mlptrain.run.tblog import TensorBoardLog

    state, data = session.state, session.data
    return TensorBoardLog(cb, session.run_dir, state.optimizer, session.history, data.val, session.steps)


@contextlib.contextmanager
def _peer_gone_is_a_stop(session: _Session, stop: StopRequest) -> Iterator[None]:
    """On a rank other than 0 that got the signal too, a collective that fails because another process has
    already stopped and closed its connection (gloo: "Connection closed by peer") is the same stop, not a failure:
    rank 0 saved the place and says so. On rank 0, or without a signal, such an error is a failure as ever."""
    try:
        yield
    except RuntimeError:
        if session.processes.world.is_main or not session.processes.world.distributed or not stop():
            raise
        raise _stopped(session, stop) from None


@contextlib.contextmanager
def _written(session: _Session, writer: EpochWriter | None) -> Iterator[None]:
    """However the block ends (the run's end, a stop, an error), the epoch in flight is written first."""
    try:
        yield
    finally:
        if writer is not None:
            with _resumable(session, writer.epoch):
                writer.close()


def _record(session: _Session, stats: EpochStats, cb: Callbacks, writer: EpochWriter | None) -> None:
    """A finished epoch into the run folder: last.pt, best.pt if it is the best, then its metrics.csv row.

    In that order, a crash between two writes leaves metrics.csv and best.pt agreeing on the best epoch, and a
    last.pt from which resume repairs the rest (resuming.repair). The state is copied out and the files' space reserved
    here; they are written while the next epoch trains (saving.py), and epoch_saved tells when they are on disk.
    """
    history, run_dir = session.history, session.run_dir
    history.epochs.append(stats)
    if writer is not None:  # rank 0: the epoch before is on disk first (long since, as a rule)
        with _resumable(session, writer.epoch):
            writer.wait()
    if stats.diverged:
        if writer is not None:  # the row says why the run ended; a diverged epoch is never the best, has no checkpoint
            write_metrics(run_dir / METRICS_FILE, history.epochs)
        cb.epoch_done(stats, False)
        cb.epoch_saved(stats, False)
        raise RunFailed(
            f"the loss diverged in epoch {stats.epoch} (train_loss={stats.train_loss}); try a lower train.lr "
            f"(now {session.config.train.lr}). {BEST_FILE} and {LAST_FILE} keep the last finite epoch"
        )
    improved = history.best_epoch == stats.epoch
    if writer is not None:
        fields = checkpoint_fields(session.config, session.data, session.state, history)
        files = run_dir / LAST_FILE, run_dir / BEST_FILE, run_dir / METRICS_FILE
        with held_signals(), _resumable(session, stats.epoch, reserving=True):
            writer.submit(stats, improved, fields, files, metrics_text(history.epochs))
    cb.epoch_done(stats, improved)


@contextlib.contextmanager
def _resumable(session: _Session, epoch: int, reserving: bool = False) -> Iterator[None]:
    """A write that fails (a full disk) while saving `epoch` ends the run with a line that says which file, and
    where a --resume would carry on from (`reserving`: none of the epoch's files was written yet)."""
    try:
        yield
    except WriteFailed as e:
        saved = epoch - 1 if reserving or e.path == session.run_dir / LAST_FILE else epoch
        if saved or (session.run_dir / LAST_FILE).exists():
            where = f"the end of epoch {saved}" if saved else "the place it was stopped"
            tail = f"; `mlptrain train --resume {session.run_dir}` carries on from {where} once it can write"
        else:
            tail = "; nothing was saved"
        raise WriteFailed(f"{e}{tail}", e.path, e.reason) from None


def _save_stop(session: _Session, progress) -> None:
    """Every process stopped after the same batch: rank 0 saves the place, with all ranks' partial sums."""
    world = session.processes.world
    progress.loss_sum, progress.correct = world.all_sum(progress.loss_sum), world.all_sum(progress.correct)
    if world.is_main:
        with _resumable(session, session.state.epoch):
            save_checkpoint([session.run_dir / LAST_FILE], session.config, session.data, session.state, session.history)


def _info(session: _Session) -> RunInfo:
    model, data, config = session.state.model, session.data, session.config
    return RunInfo(
        run_dir=session.run_dir,
        device=str(session.processes.device),
        threads=session.processes.threads.threads,
        threads_why=session.processes.threads.why,
        dataset=config.data.dataset + (f" · {len(data.classes)} classes" if config.data.dataset == "folder" else ""),
        sizes=model.sizes,
        parameters=sum(p.numel() for p in model.parameters()),
        train_samples=len(data.train),
        val_samples=len(data.val),
        config=config,
        resumed_at=_resume_point(session),
        notes=session.notes,
    )


def _resume_point(session: _Session) -> str | None:
    state = session.state
    if state.progress is not None:
        return f"epoch {state.progress.epoch}, batch {state.progress.step + 1}/{session.steps}"
    return f"epoch {state.epoch + 1}" if state.epoch else None


def _stopped(session: _Session, stop: StopRequest) -> Interrupted:
    run_dir, world, state, history = session.run_dir, session.processes.world, session.state, session.history
    progress = state.progress
    where = (
        f"in epoch {progress.epoch} after batch {progress.step}/{session.steps}"
        if progress is not None
        else f"after epoch {state.epoch}"
    )
    best = (
        f"; best so far: epoch {history.best_epoch} ({LABELS[history.monitor]} "
        f"{metric_text(UNITS[history.monitor], history.best_value)}) in {BEST_FILE}"
        if history.best_epoch
        else ""
    )
    command = f"mlptrain train --resume {run_dir}"
    if world.distributed:  # on one machine --nproc says it all; on several, torchrun's flags are the user's own
        command = f"{command} --nproc {world.size}" if world.local_size == world.size else f"torchrun ... -m {command}"
    return Interrupted(
        f"{stop.name}: stopped {where}; its exact place is saved in {run_dir / LAST_FILE}{best}",
        resume_command=command,
        signum=stop.signum,
    )
