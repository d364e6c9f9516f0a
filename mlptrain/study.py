"""The sweep engine, on Optuna (the only module that imports it): the study that samples values, prunes and
coordinates any number of workers, and one worker's loop: claim a trial, train it as an ordinary run
folder, report each epoch's monitored metric and the result back to the study.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from mlptrain.errors import ConfigError, Interrupted, MlptrainError, RunFailed, WriteFailed
from mlptrain.files import folder_lock, make_dirs
from mlptrain.metrics import direction
from mlptrain.runs import LAST_FILE, is_run, read_run
from mlptrain.sweep import FINISHED, Spec, Sweep, SweepCallbacks, Trial, trial_name

if TYPE_CHECKING:
    from mlptrain.interrupt import StopRequest

STUDY_FILE = "study.db"
WORKER_ENV = "MLPTRAIN_SWEEP_WORKER"  # k for the k-th worker --workers starts; "join" for one --join starts
WORKERS = "mlptrain_workers"  # host:pid of each worker that ran the trial, in turn
SURPLUS = "mlptrain_surplus"  # a tpe trial that racing workers asked for past the sweep's count; never run
_FINAL = {"done": TrialState.COMPLETE, "failed": TrialState.FAIL, "pruned": TrialState.PRUNED}


def storage_url(sweep: Sweep) -> str:
    """Where the study lives: --storage's URL, or SWEEP_DIR/study.db."""
    return sweep.storage or f"sqlite:///{(sweep.folder / STUDY_FILE).resolve()}"


def shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        return make_url(url).render_as_string(hide_password=True)
    return "the storage URL"


def open_study(sweep: Sweep, create: bool = False) -> optuna.Study:
    """The sweep's study, with its sampler and pruner (neither is stored: every worker makes them from the spec).
    `create`: a new sweep's; a version-1 folder's study is made on first use."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(sweep)
    try:
        # SQLite: wait for another worker's write instead of failing with "database is locked".
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
        if create:
            optuna.create_study(storage=storage, study_name=sweep.study, direction=direction(sweep.monitor))
        elif sweep.version == 1:
            optuna.create_study(
                storage=storage, study_name=sweep.study, direction=direction(sweep.monitor), load_if_exists=True
            )
        return optuna.load_study(
            study_name=sweep.study, storage=storage, sampler=_sampler(sweep.spec), pruner=_pruner(sweep)
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(
            f"{shown_url(url)} already holds a study named {sweep.study!r}; pick another --dir (the study is named "
            "after the sweep folder)"
        ) from None
    except KeyError:
        raise ConfigError(f"{shown_url(url)} holds no study named {sweep.study!r}") from None
    except Exception as e:  # a driver that is not installed, a server that is not there, a bad URL
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "disk is full" in first or "No space left" in first:  # a failure (exit 1), not a bad input
            where = shown_url(url)
            raise WriteFailed(f"no space left on the device while writing {where}", where, "no space") from None
        raise ConfigError(f"cannot open the study at {shown_url(url)}: {type(e).__name__}: {first}") from None


def _sampler(spec: Spec) -> optuna.samplers.BaseSampler:
    # A grid's and a random sweep's trials are all queued up front (see _add), so their sampler never samples;
    # queuing keeps today's order, folder names and draws, which --trials grows.
    if spec.method != "tpe":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    # Each worker's sampler gets its own seed, or workers that start together would all draw the same trials:
    # `seed` itself in the first worker (so one worker repeats a sweep exactly), `seed` + k in the others.
    worker = os.environ.get(WORKER_ENV)
    seed = (spec.seed + (int(worker) if worker and worker.isdigit() else os.getpid())) % 2**32 if worker else spec.seed
    # Random draws first, then TPE: Optuna's 10 take most of a small sweep, so a third of it, at least 2.
    startup = min(10, max(2, spec.trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def _pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    p = sweep.spec.pruner
    if p["name"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p["startup_trials"], n_warmup_steps=p["warmup_epochs"])
    if p["name"] == "hyperband":
        epochs = sweep.base["train"]["epochs"]
        return optuna.pruners.HyperbandPruner(
            min_resource=min(p["min_epochs"], epochs), max_resource=epochs, reduction_factor=p["reduction_factor"]
        )
    return optuna.pruners.NopPruner()


# --- the swept values as Optuna's parameters -------------------------------------------------------------------


def distributions(params: dict[str, list | dict]) -> dict[str, Any]:
    """Each swept key's distribution: a list is categorical (its values as JSON, so lists like [32, 16] can be
    choices), a range is an int range if both ends are integers, else a float range; `log` either way."""
    out = {}
    for key, values in params.items():
        if isinstance(values, list):
            out[key] = CategoricalDistribution(list(dict.fromkeys(json.dumps(v) for v in values)))
        elif _is_int(values["low"]) and _is_int(values["high"]):
            out[key] = IntDistribution(values["low"], values["high"], log=values.get("log", False))
        else:
            out[key] = FloatDistribution(float(values["low"]), float(values["high"]), log=values.get("log", False))
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _encoded(values: dict[str, Any], dists: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if isinstance(dists[k], CategoricalDistribution) else v for k, v in values.items()}


def _suggest(trial: optuna.Trial, dists: dict[str, Any]) -> dict[str, Any]:
    """The trial's values: sampled (tpe), or the ones queued for it (grid, random), recorded in the study."""
    values = {}
    for key, d in dists.items():
        if isinstance(d, CategoricalDistribution):
            values[key] = json.loads(trial.suggest_categorical(key, d.choices))
        elif isinstance(d, IntDistribution):
            values[key] = trial.suggest_int(key, d.low, d.high, log=d.log)
        else:
            values[key] = trial.suggest_float(key, d.low, d.high, log=d.log)
    return values


# --- the manifest and the study agree ---------------------------------------------------------------------------


def sync(sweep: Sweep, study: optuna.Study) -> None:
    """Give the study the manifest's trials it does not have yet (under sweep.lock()): a new grid's or random
    sweep's (queued), those --trials added, or all of a version-1 folder's, which this moves into a study."""
    known = len(study.get_trials(deepcopy=False))
    changed = sweep.version != 2
    for trial in sweep.trials:
        if trial.number is None:
            trial.number, changed = trial.index - 1, True
        if trial.number >= known:
            _add(sweep, study, trial)
            changed = True
    sweep.version = 2
    if changed:
        sweep.save()


def _add(sweep: Sweep, study: optuna.Study, trial: Trial) -> None:
    """One manifest trial into the study, as far as it got: queued, running (to be continued), or finished."""
    dists = distributions(sweep.spec.params)
    params = _encoded(trial.values, dists)
    state = _FINAL.get(trial.state)
    if state is None:
        study.enqueue_trial(params, skip_if_exists=False)
        if trial.state != "pending":  # a version-1 trial that was stopped mid-way: the next worker continues it
            study._storage.set_trial_state_values(_trial_id(study, trial.number), TrialState.RUNNING)
        return
    run_dir = sweep.folder / trial.dir
    value = read_run(run_dir).best_value if is_run(run_dir) else None
    if state == TrialState.COMPLETE and value is None:
        state = TrialState.FAIL
    done = optuna.trial.create_trial(
        params=params, distributions=dists, value=value if state == TrialState.COMPLETE else None, state=state
    )
    study.add_trial(done)


def _trial_id(study: optuna.Study, number: int) -> int:
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


# --- one worker -------------------------------------------------------------------------------------------------


@dataclass
class Claim:
    """A trial this worker runs, its run folder locked."""

    trial: Trial
    continuing: bool  # a trial another worker started: go on from its last.pt if it has one
    made: bool  # the run folder was made by this claim


def work(sweep: Sweep, cb: SweepCallbacks, stop: StopRequest | None = None) -> list[Trial]:
    """Run trials until none is left: first those stopped or killed mid-way (continued from their last.pt), then
    new ones. Any number of workers may do this at once on one sweep folder; each trial has one, by the lock of
    its run folder. A signal stops the running trial at a batch boundary and raises Interrupted."""
    from mlptrain.interrupt import StopRequest, stop_on_signals

    stop = stop or StopRequest()
    study = open_study(sweep)
    with stop_on_signals(stop):
        with sweep.lock(wait=5.0):  # another kind of writer holding the folder (train --run-dir) keeps us out
            sweep.refresh()
            sync(sweep, study)
        cb.sweep_started(sweep, sweep.total - sum(t.state in FINISHED for t in sweep.trials))
        while True:
            with contextlib.ExitStack() as stack:
                claim = _claim(sweep, study, stack, stop)
                if claim is None:
                    break
                _run_trial(sweep, study, claim, cb, stop)
    with sweep.lock():
        sweep.refresh()
    return sweep.trials


def _claim(sweep: Sweep, study: optuna.Study, stack: contextlib.ExitStack, stop: StopRequest) -> Claim | None:
    """The next trial for this worker, its folder's lock entered into `stack`; None when nothing is left."""
    with sweep.lock():
        sweep.refresh()
        if stop():  # a signal between trials
            todo = [t.index for t in sweep.trials if t.state not in FINISHED] or [len(sweep.trials) + 1]
            raise interrupted(
                sweep, f"{stop.name}: the sweep stopped before trial {todo[0]}/{sweep.total}", stop.signum
            )
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        for trial in sweep.trials:  # a trial stopped, or left by a worker that was killed: its folder is free
            if trial.state not in FINISHED and states.get(trial.number) == TrialState.RUNNING:
                claim = _lock(sweep, trial, stack, continuing=True)
                if claim:
                    return claim
        for trial in sweep.trials:
            if states.get(trial.number) == TrialState.WAITING and _take(study, trial):
                claim = _lock(sweep, trial, stack, continuing=False)
                if claim:
                    return claim
        return _ask(sweep, study, stack) if sweep.spec.method == "tpe" else None


def _take(study: optuna.Study, trial: Trial) -> bool:
    """Move the trial from the study's queue to running; False if another worker took it first."""
    try:
        return study._storage.set_trial_state_values(_trial_id(study, trial.number), TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def _lock(sweep: Sweep, trial: Trial, stack: contextlib.ExitStack, continuing: bool) -> Claim | None:
    run_dir = sweep.folder / trial.dir
    made = make_dirs(run_dir)
    try:
        stack.enter_context(folder_lock(run_dir))
    except ConfigError:  # another worker runs it
        return None
    return Claim(trial, continuing, made)


def _ask(sweep: Sweep, study: optuna.Study, stack: contextlib.ExitStack) -> Claim | None:
    """A new tpe trial, sampled from the finished ones, unless the sweep has all its trials."""
    while True:
        counted = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]
        if len(counted) >= sweep.spec.trials:
            return None
        asked = study.ask()
        values = _suggest(asked, distributions(sweep.spec.params))
        if sum(t.number < asked.number for t in counted) >= sweep.spec.trials:  # another machine was quicker
            asked.set_user_attr(SURPLUS, True)
            study.tell(asked, state=TrialState.FAIL)
            return None
        trial = Trial(asked.number + 1, trial_name(asked.number + 1, values), values, number=asked.number)
        try:
            sweep.check(trial, "sampled")
        except ConfigError as e:  # a value the config refuses: this trial fails, the sampler learns, go on
            trial.state, trial.reason = "failed", str(e)
            study.tell(asked, state=TrialState.FAIL)
            sweep.record(trial)
            continue
        sweep.record(trial)
        claim = _lock(sweep, trial, stack, continuing=False)
        if claim:
            return claim


class _Pruned(Exception):
    def __init__(self, epoch: int):
        super().__init__(f"pruned at epoch {epoch}")
        self.epoch = epoch


class _Reporting:
    """The trial's run callbacks, plus each epoch's monitored metric reported to the study; raises _Pruned at an
    epoch boundary (after the epoch's checkpoints are written) when the pruner says the trial is hopeless."""

    def __init__(self, inner: Any, handle: optuna.Trial, monitor: str, epochs: int):
        self.inner, self.handle, self.monitor, self.epochs = inner, handle, monitor, epochs

    def run_started(self, info: Any) -> None:
        self.inner.run_started(info)

    def epoch_started(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.inner.epoch_started(epoch, epochs, steps, done)

    def batch_done(self, step: int) -> None:
        self.inner.batch_done(step)

    def epoch_done(self, stats: Any, is_best: bool) -> None:
        self.inner.epoch_done(stats, is_best)
        value = getattr(stats, self.monitor)
        if not math.isfinite(value):
            return  # a diverged epoch: the run fails on its own
        self.handle.report(value, stats.epoch)
        if stats.epoch < self.epochs and self.handle.should_prune():
            raise _Pruned(stats.epoch)


def _run_trial(sweep: Sweep, study: optuna.Study, claim: Claim, cb: SweepCallbacks, stop: StopRequest) -> None:
    from mlptrain import trainer

    trial, total = claim.trial, sweep.total
    run_dir = sweep.folder / trial.dir
    before = trial.state
    # A trial stopped mid-way ("interrupted", or "running" after a kill -9) goes on from its last.pt; one stopped
    # before its first epoch was saved starts again, cleanly.
    resuming = claim.continuing and (run_dir / LAST_FILE).is_file()
    trial.state, trial.reason = "running", ""
    sweep.record(trial)
    handle = optuna.Trial(study, _trial_id(study, trial.number))
    ran_by = study._storage.get_trial(handle._trial_id).user_attrs.get(WORKERS, [])
    handle.set_user_attr(WORKERS, [*ran_by, f"{socket.gethostname()}:{os.getpid()}"])  # who ran it (twice: resumed)
    if not resuming:
        _suggest(handle, distributions(sweep.spec.params))  # the study records the values (queued ones are fixed)
    config = sweep.config(trial)
    inner = cb.trial_started(trial, total, resuming) or trainer.Callbacks()
    callbacks = _Reporting(inner, handle, sweep.monitor, config.train.epochs)
    state, values = TrialState.FAIL, None
    try:
        if resuming:
            trainer.resume(run_dir, callbacks=callbacks, stop=stop)
        else:
            trainer.train(config, run_dir=run_dir, force=True, callbacks=callbacks, stop=stop)
        value = read_run(run_dir).best_value
        trial.state = "done"
        if value is not None:
            state, values = TrialState.COMPLETE, [value]
    except _Pruned as e:
        trial.state, trial.reason, state = "pruned", str(e), TrialState.PRUNED
    except (Interrupted, KeyboardInterrupt) as e:  # a second Ctrl-C: its last.pt holds the last finished epoch
        trial.state = "interrupted"
        sweep.record(trial)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise interrupted(sweep, f"sweep trial {trial.index}/{total}, {e}", e.exit_code - 128) from None
    except RunFailed as e:
        trial.state, trial.reason = "failed", str(e)
    except MlptrainError:  # bad input (e.g. the dataset is missing): every trial would fail alike, so stop
        trial.state = before
        sweep.record(trial)
        if claim.made and not (run_dir / LAST_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    except Exception as e:  # a crash inside one trial does not stop the others
        trial.state, trial.reason = "failed", f"{type(e).__name__}: {e}"
    study.tell(trial.number, values, state=state)
    sweep.record(trial)
    cb.trial_done(trial, total)


def progress(sweep: Sweep) -> tuple[list[tuple[int, float]], dict[str, float]]:
    """The finished trials' (index, value) in order, and each swept key's importance (fANOVA; {} where Optuna
    cannot compute it: fewer than two finished trials, or no key that varies)."""
    study = open_study(sweep)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    history = [(t.number + 1, t.value) for t in done]
    try:
        importance = optuna.importance.get_param_importances(study) if len(done) >= 2 else {}
    except (RuntimeError, ValueError, ZeroDivisionError):
        importance = {}
    return history, dict(importance)


def interrupted(sweep: Sweep, message: str, signum: int) -> Interrupted:
    done = sum(t.state == "done" for t in sweep.trials)
    return Interrupted(
        f"{message} ({done} of {sweep.total} trials done)",
        resume_command=f"mlptrain sweep --resume {sweep.folder}",
        signum=signum,
    )
