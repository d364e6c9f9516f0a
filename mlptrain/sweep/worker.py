"""One sweep worker, on Optuna (with study.py and internals.py, the only modules that import it): claim a trial
(one stopped or killed mid-way in this sweep folder, one queued, one a dead worker on another host left, or a new
one the sampler draws), train it as an ordinary run folder while beating its heartbeat, report each epoch's
monitored metric to the study (which may prune it) and the result.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError, DataError, Interrupted, MlptrainError, RunFailed, WriteFailed
from mlptrain.base.files import folder_lock, make_dirs
from mlptrain.base.metrics import best_index
from mlptrain.run.callbacks import Callbacks, Relay
from mlptrain.run.runs import LAST_FILE, read_run
from mlptrain.sweep import internals
from mlptrain.sweep import study as study_
from mlptrain.sweep.folder import FINISHED, Sweep, SweepCallbacks, Trial, trial_name
from mlptrain.sweep.study import (
    FOLDER,
    HOST,
    PAUSED,
    RERUN_OF,
    STALE,
    SURPLUS,
    WORKERS,
    distributions,
    suggest,
)

if TYPE_CHECKING:
    from mlptrain.run.interrupt import StopRequest


@dataclass
class Claim:
    """A trial this worker runs, its run folder locked."""

    trial: Trial
    continuing: bool  # a trial another worker started: go on from its last.pt if it has one
    made: bool  # the run folder was made by this claim


def work(
    sweep: Sweep, cb: SweepCallbacks, stop: StopRequest | None = None, deadline: float | None = None
) -> list[Trial]:
    """Run trials until none is left, or until `deadline` (time.time(); --timeout) has passed: first those stopped
    or killed mid-way in this folder (continued from their last.pt), then queued ones, then new ones. Any number of
    workers, on any number of hosts, may do this at once on one study; each trial has one, by the study's atomic
    WAITING -> RUNNING and the lock of its run folder. A signal stops the running trial at a batch boundary and
    raises Interrupted."""
    from mlptrain.run.interrupt import StopRequest, stop_on_signals

    stop = stop or StopRequest()
    study = study_.open_study(sweep)
    with stop_on_signals(stop):
        with sweep.lock(wait=5.0):  # another kind of writer holding the folder (train --run-dir) keeps us out
            sweep.refresh()
            study_.sync(sweep, study)
            _settle(sweep, study)
            parent = _mlflow_run(sweep)
        cb.sweep_started(sweep, _todo(sweep, study))
        while True:
            with contextlib.ExitStack() as stack:
                claim = _claim(sweep, study, stack, stop, deadline)
                if claim is None:
                    break
                _run_trial(sweep, study, claim, cb, stop, parent)
    with sweep.lock():
        sweep.refresh()
        if parent is not None and all(t.state in FINISHED for t in sweep.trials):
            from mlptrain.run.mlflowlog import end_sweep_run

            end_sweep_run(_tracked_config(sweep), sweep.folder, parent, _best_tags(sweep))
    return sweep.trials


def _best_tags(sweep: Sweep) -> dict[str, str]:
    """The sweep's MLflow run's summary: its best finished trial on the base config's monitor, by the rule the
    table ranks them with (as a run's own tags name its best epoch)."""
    done = [t for t in sweep.trials if t.state == "done"]
    values = [_best_value(sweep, t) for t in done]
    best = best_index(values, sweep.monitor)
    if best is None:
        return {}
    trial = done[best]
    return {"best_trial": str(trial.index), "best_run": trial.dir, f"best_{sweep.monitor}": repr(values[best])}


def _best_value(sweep: Sweep, trial: Trial) -> float | None:
    try:
        return read_run(sweep.folder / trial.dir).best_value
    except DataError:  # a trial folder damaged since: left out of the summary (the table says why)
        return None


def _tracked_config(sweep: Sweep) -> Config:
    return Config.from_dict(sweep.base).resolved()  # output.mlflow: true names the store as a trial's run does


def _mlflow_run(sweep: Sweep) -> str | None:
    """With output.mlflow, the id of the sweep's MLflow run, its trials' parent: made by the first worker, kept in
    the sweep folder for the others and for --resume (under the sweep's lock); None with the key off."""
    config = _tracked_config(sweep)
    if not config.output.mlflow:
        return None
    from mlptrain.run.mlflowlog import sweep_run

    return sweep_run(config, sweep.folder)


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials that count towards the sweep's: not a surplus one, not one re-run as another."""
    return [t for t in study.get_trials(deepcopy=False) if not (t.user_attrs.get(SURPLUS) or t.user_attrs.get(STALE))]


def _todo(sweep: Sweep, study: optuna.Study) -> int:
    return max(0, study_.wanted(sweep, study) - sum(t.state.is_finished() for t in _counted(study)))


def _settle(sweep: Sweep, study: optuna.Study) -> None:
    """This folder's unfinished trials that a worker on another host re-ran (its worker here stopped beating for
    longer than study.GRACE): failed here, saying which trial ran them again."""
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    for trial in sweep.trials:
        t = frozen.get(trial.number)
        if trial.state not in FINISHED and t is not None and t.user_attrs.get(STALE):
            again = [n for n, other in frozen.items() if other.user_attrs.get(RERUN_OF) == trial.number]
            trial.state = "failed"
            trial.reason = f"its worker stopped answering; trial {again[0] + 1 if again else '?'} ran it again"
            sweep.record(trial)


def _claim(
    sweep: Sweep, study: optuna.Study, stack: contextlib.ExitStack, stop: StopRequest, deadline: float | None
) -> Claim | None:
    """The next trial for this worker, its folder's lock entered into `stack`; None when nothing is left, or when
    the deadline has passed (no trial starts after it)."""
    with sweep.lock():
        sweep.refresh()
        if stop():  # a signal between trials
            todo = [t.index for t in sweep.trials if t.state not in FINISHED] or [len(sweep.trials) + 1]
            raise interrupted(
                sweep, f"{stop.name}: the sweep stopped before trial {todo[0]}/{sweep.total}", stop.signum
            )
        if deadline is not None and time.time() >= deadline:
            return None
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        for trial in sweep.trials:  # a trial stopped, or left by a worker that was killed: its folder is free
            if trial.state not in FINISHED and states.get(trial.number) == TrialState.RUNNING:
                claim = _lock(sweep, trial, stack, continuing=True)
                if claim:
                    return claim
        rerun_stale(sweep, study)
        return _queued(sweep, study, stack) or _ask(sweep, study, stack)


def rerun_stale(sweep: Sweep, study: optuna.Study) -> None:
    """Trials whose worker has not beaten for study.GRACE seconds and whose folder is not this sweep folder's (its
    host may be gone for good): each is failed (STALE, not counted) and queued again with the same values, to run
    from its start as a new trial (RERUN_OF). A trial stopped by a signal (PAUSED) is left for its own host's
    --resume, and one of this folder's is continued from its last.pt instead (see _claim)."""
    mine = {t.number for t in sweep.trials}
    dists = distributions(sweep.spec.params)
    for stale in internals.stale_ids(study):
        frozen = internals.get(study, stale)
        if frozen.number in mine or frozen.user_attrs.get(PAUSED):
            continue
        try:
            internals.set_attr(study, stale, STALE, True)
            internals.set_state(study, stale, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker saw it first
        values = study_.values_of(frozen, dists)
        if values is not None:  # (one killed before its values were drawn is only failed: a new trial replaces it)
            study.enqueue_trial(study_.encoded(values, dists), {RERUN_OF: frozen.number}, skip_if_exists=False)


def _queued(sweep: Sweep, study: optuna.Study, stack: contextlib.ExitStack) -> Claim | None:
    """A queued trial (a version-1 folder's, or a re-run), moved to RUNNING by this worker."""
    dists = distributions(sweep.spec.params)
    mine = {t.number: t for t in sweep.trials}
    every = study.get_trials(deepcopy=False)
    for frozen in (t for t in every if t.state == TrialState.WAITING):
        of = frozen.user_attrs.get(RERUN_OF)
        if of is not None and any(t.user_attrs.get(RERUN_OF) == of and t.number < frozen.number for t in every):
            _surplus(study, internals.id_of(frozen))  # two workers queued the same re-run: the first one stands
            continue
        values = study_.values_of(frozen, dists)
        if values is None or not _take(study, internals.id_of(frozen)):
            continue
        internals.beat(study, internals.id_of(frozen))
        n = frozen.number
        trial = mine.get(n) or Trial(n + 1, trial_name(n + 1, values), values, number=n)
        sweep.record(trial)
        claim = _lock(sweep, trial, stack, continuing=False)
        if claim:
            return claim
    return None


def _surplus(study: optuna.Study, tid: int) -> None:
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        internals.set_attr(study, tid, SURPLUS, True)
        internals.set_state(study, tid, TrialState.FAIL)


def _take(study: optuna.Study, tid: int) -> bool:
    """Move the trial from the study's queue to running; False if another worker took it first."""
    try:
        return internals.set_state(study, tid, TrialState.RUNNING)
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
    """A new trial from the sampler (grid, random or tpe), unless the sweep has all its trials."""
    dists = distributions(sweep.spec.params)
    while True:
        counted, total = _counted(study), study_.wanted(sweep, study)
        if len(counted) >= total:
            return None
        with warnings.catch_warnings():  # "heartbeat ... used with Study.optimize": _run_trial beats it instead
            warnings.simplefilter("ignore")
            asked = study.ask()
        internals.beat(study, internals.id_of(asked))  # killed before it is in the manifest: stale, re-run
        values = suggest(asked, dists)
        # Another worker was quicker: the trials before this one, read again now (Optuna numbers a trial under a lock
        # on the study, so all of them are there), already make the sweep's count. `counted`, read before the ask,
        # can miss one another worker asked for meanwhile: two workers asking for the last trial would both run it.
        if sum(t.number < asked.number for t in _counted(study)) >= total:
            _surplus(study, internals.id_of(asked))
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


@contextlib.contextmanager
def beating(study: optuna.Study, tid: int):
    """Record the trial's heartbeat every study.HEARTBEAT seconds while the block runs (a database that does not
    answer for a moment only misses a beat)."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(study_.HEARTBEAT):
            with contextlib.suppress(Exception):
                internals.beat(study, tid)

    with contextlib.suppress(Exception):
        internals.beat(study, tid)
    thread = threading.Thread(target=beat, name="mlptrain-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class _Pruned(Exception):
    def __init__(self, epoch: int):
        super().__init__(f"pruned at epoch {epoch}")
        self.epoch = epoch


class _Reporting(Relay):
    """The trial's run callbacks, plus each epoch's monitored metric reported to the study; raises _Pruned at an
    epoch boundary (the run waits for the epoch's checkpoints to be written before it ends) when the pruner says the
    trial is hopeless."""

    def __init__(self, inner: Callbacks, handle: optuna.Trial, monitor: str, epochs: int):
        super().__init__(inner)
        self.handle, self.monitor, self.epochs = handle, monitor, epochs

    def epoch_done(self, stats: Any, is_best: bool) -> None:
        super().epoch_done(stats, is_best)
        value = getattr(stats, self.monitor)
        if not math.isfinite(value):
            return  # a diverged epoch: the run fails on its own
        self.handle.report(value, stats.epoch)
        if stats.epoch < self.epochs and self.handle.should_prune():
            raise _Pruned(stats.epoch)


def _started(sweep: Sweep, study: optuna.Study, claim: Claim) -> tuple[optuna.Trial, bool]:
    """The claimed trial marked running in the manifest and in the study (its host, folder and worker), with
    its values recorded; and whether it resumes from a last.pt."""
    trial, run_dir = claim.trial, sweep.folder / claim.trial.dir
    # A trial stopped mid-way ("interrupted", or "running" after a kill -9) goes on from its last.pt; one stopped
    # before its first epoch was saved starts again, cleanly.
    resuming = claim.continuing and (run_dir / LAST_FILE).is_file()
    trial.state, trial.reason = "running", ""
    sweep.record(trial)
    handle = internals.running(study, trial.number)
    ran_by = internals.get(study, internals.id_of(handle)).user_attrs.get(WORKERS, [])
    host = socket.gethostname()
    handle.set_user_attr(WORKERS, [*ran_by, f"{host}:{os.getpid()}"])  # who ran it (twice: resumed)
    handle.set_user_attr(HOST, host)
    handle.set_user_attr(FOLDER, str(run_dir.resolve()))
    handle.set_user_attr(PAUSED, False)
    if not resuming:
        suggest(handle, distributions(sweep.spec.params))  # the study records the values (queued ones are fixed)
    return handle, resuming


def _run_trial(
    sweep: Sweep, study: optuna.Study, claim: Claim, cb: SweepCallbacks, stop: StopRequest, parent: str | None
) -> None:
    from mlptrain.run import trainer  # torch: imported by the first trial, after the other workers started

    trial, total = claim.trial, sweep.total
    run_dir = sweep.folder / trial.dir
    before = trial.state
    handle, resuming = _started(sweep, study, claim)
    config = sweep.config(trial)
    inner = cb.trial_started(trial, total, resuming) or Callbacks()
    callbacks = _Reporting(inner, handle, sweep.monitor, config.train.epochs)
    state, values = TrialState.FAIL, None
    try:
        with beating(study, internals.id_of(handle)):
            if resuming:
                trainer.resume(run_dir, callbacks=callbacks, stop=stop, curves=False, mlflow_parent=parent)
            else:  # curves.png on demand (`mlptrain plot`): drawing it cost a 1-epoch smoke trial 0.3 s
                trainer.train(
                    config,
                    run_dir=run_dir,
                    force=True,
                    callbacks=callbacks,
                    stop=stop,
                    curves=False,
                    mlflow_parent=parent,
                )
        value = read_run(run_dir).best_value
        trial.state = "done"
        if value is not None:
            state, values = TrialState.COMPLETE, [value]
    except _Pruned as e:
        trial.state, trial.reason, state = "pruned", str(e), TrialState.PRUNED
    except (Interrupted, KeyboardInterrupt) as e:  # a second Ctrl-C: its last.pt holds the last finished epoch
        trial.state = "interrupted"
        _pause(sweep, handle, trial)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise interrupted(sweep, f"sweep trial {trial.index}/{total}, {e}", e.exit_code - 128) from None
    except RunFailed as e:
        trial.state, trial.reason = "failed", str(e)
    except Exception as e:
        error = e if isinstance(e, MlptrainError) else study_.full_disk(e, study_.storage_url(sweep))
        if error is None:  # a crash inside one trial does not stop the others
            trial.state, trial.reason = "failed", f"{type(e).__name__}: {e}"
        else:  # bad input (a dataset missing), a full disk: every trial would fail alike, so stop
            trial.state = before
            _pause(sweep, handle, trial)
            if claim.made and not (run_dir / LAST_FILE).exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise _for_the_sweep(error, sweep, trial) from None
    study.tell(trial.number, values, state=state)
    sweep.record(trial)
    cb.trial_done(trial, total)


def _for_the_sweep(error: MlptrainError, sweep: Sweep, trial: Trial) -> MlptrainError:
    """A trial's failed write says how the sweep carries on, not the trial's own `mlptrain train --resume`."""
    if not isinstance(error, WriteFailed):
        return error
    resume = f"`mlptrain sweep --resume {sweep.folder}` carries on (trial {trial.index} from its last epoch saved)"
    message = f"{error.reason} while writing {error.path}; {resume} once it can write"
    return WriteFailed(message, error.path, error.reason)


def _pause(sweep: Sweep, handle: optuna.Trial, trial: Trial) -> None:
    """A trial stopped on purpose stays RUNNING in the study, for this folder's --resume: never re-run elsewhere.
    (On a full disk the manifest keeps the trial as claimed, running, which --resume continues all the same.)"""
    with contextlib.suppress(WriteFailed):
        sweep.record(trial)
    with contextlib.suppress(Exception):
        handle.set_user_attr(PAUSED, True)


def interrupted(sweep: Sweep, message: str, signum: int) -> Interrupted:
    done = sum(t.state == "done" for t in sweep.trials)
    return Interrupted(
        f"{message} ({done} of {sweep.total} trials done)",
        resume_command=f"mlptrain sweep --resume {sweep.folder}",
        signum=signum,
    )
