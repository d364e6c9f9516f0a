"""The one place that calls Optuna's private API: a study's trials found by number, moved between states, given
user attributes and heartbeats by trial id, and the stale ones listed, through the study's storage.

Why not the public API: Optuna's own workers run trials inside study.optimize(), which beats their heartbeats, and
optuna.storages.fail_stale_trials(study) fails every stale trial alike, handing each to one callback. A sweep worker
here runs each trial as a training run of its own (ask, train, tell), so it beats the heartbeat itself; it claims a
queued trial and marks a surplus one, which ask/tell cannot do for a given trial; and of the stale trials it must
leave two kinds alone: those of its own sweep folder (continued from their last.pt, not re-run) and those paused by
a signal (waiting for their own host's --resume). Tried with Optuna 3.6 to 5.1; tests/sweep/ fails if a release
changes these calls.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


def trial_id(study: optuna.Study, number: int) -> int:
    """The storage's id of the study's trial `number`."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def running(study: optuna.Study, number: int) -> optuna.Trial:
    """The study's trial `number` as the trial being run, to report to, prune and set attributes on (Optuna makes
    these only inside study.optimize() or study.ask())."""
    return optuna.Trial(study, trial_id(study, number))


def id_of(trial: FrozenTrial | optuna.Trial) -> int:
    """The storage's id of a trial the study handed out (a frozen one, or one being run)."""
    return trial._trial_id


def get(study: optuna.Study, tid: int) -> FrozenTrial:
    return study._storage.get_trial(tid)


def set_state(study: optuna.Study, tid: int, state: TrialState) -> bool:
    """Move the trial to `state`; False if another worker moved it first to the state it was in (RUNNING twice);
    raises optuna.exceptions.UpdateFinishedTrialError if it has finished."""
    return study._storage.set_trial_state_values(tid, state)


def set_attr(study: optuna.Study, tid: int, key: str, value: Any) -> None:
    study._storage.set_trial_user_attr(tid, key, value)


def beat(study: optuna.Study, tid: int) -> None:
    """Record the trial's heartbeat: its worker is alive (see study.GRACE)."""
    study._storage.record_heartbeat(tid)


def stale_ids(study: optuna.Study) -> list[int]:
    """The running trials whose worker has not beaten for study.GRACE seconds."""
    return study._storage._get_stale_trial_ids(study._study_id)
