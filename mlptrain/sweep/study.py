"""The sweep's study, on Optuna (with worker.py and internals.py, the only modules that import it): where it
lives and how it is found (a sweep folder's study.db, or a database URL that workers on other machines join), the
sampler and pruner every worker makes from the spec, the swept values as Optuna's parameters, and the manifest and
the study kept in agreement. One worker's loop is worker.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError, WriteFailed
from mlptrain.base.metrics import direction
from mlptrain.base.urls import scrub, shown_url
from mlptrain.run.runs import is_run, read_run
from mlptrain.sweep import internals
from mlptrain.sweep.folder import WORKER_ENV, Sweep, Trial
from mlptrain.sweep.spec import Spec, parse_spec

STUDY_FILE = "study.db"
# The study's user attribute that makes it an mlptrain sweep: everything a worker on another machine needs (the
# spec, the resolved base config), so that `sweep --join URL` reads no file of the machine that made it.
SWEEP_ATTR = "mlptrain_sweep"
# Each trial's user attributes.
WORKERS = "mlptrain_workers"  # host:pid of each worker that ran the trial, in turn
HOST = "mlptrain_host"  # the host of the worker that runs (or ran) it last
FOLDER = "mlptrain_folder"  # its run folder, absolute, on that host
SURPLUS = "mlptrain_surplus"  # a trial that racing workers asked for past the sweep's count; never run
STALE = "mlptrain_stale"  # its worker on another host stopped beating; failed, and re-run as another trial
RERUN_OF = "mlptrain_rerun_of"  # the number of the stale trial this one runs again, from its start
PAUSED = "mlptrain_paused"  # stopped by a signal: left for its own host's --resume, never re-run elsewhere
# Each running trial's worker records a heartbeat this often (seconds); one not heard from for GRACE seconds is
# stale: its folder's host may be gone, so a worker on another host re-runs it (worker.rerun_stale).
HEARTBEAT = 20
GRACE = 120
_FINAL = {"done": TrialState.COMPLETE, "failed": TrialState.FAIL, "pruned": TrialState.PRUNED}
_STUDY_NAMES = 100  # a study named after its sweep folder, or the name with -2, -3, ... if that one is taken


def storage_url(sweep: Sweep) -> str:
    """Where the study lives: --storage's URL, or SWEEP_DIR/study.db."""
    return sweep.storage or f"sqlite:///{(sweep.folder / STUDY_FILE).resolve()}"


def _storage(url: str) -> optuna.storages.RDBStorage:
    """The database at `url`, heartbeats on (see GRACE)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # SQLite: wait for another worker's write instead of failing with "database is locked".
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():  # heartbeats are "experimental" (since Optuna 2.9)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT, grace_period=GRACE)


def full_disk(error: BaseException, url: str) -> WriteFailed | None:
    """The WriteFailed to raise for what the database's driver raised on a full disk (SQLite: "database or disk is
    full"; Optuna wraps it in a StorageInternalError), else None."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    if not any("disk is full" in str(e) or "No space left" in str(e) for e in chain):
        return None
    where = shown_url(url)
    return WriteFailed(f"no space left on the device while writing {where}", where, "no space left on the device")


@contextlib.contextmanager
def opening(url: str):
    """Turn what opening a database may raise into one line: a bad URL, a driver that is not installed, a server
    that is not there (ConfigError, exit 2), a full disk (WriteFailed, exit 1); never the password."""
    try:
        yield
    except (ConfigError, WriteFailed):
        raise
    except Exception as e:
        full = full_disk(e, url)
        if full is not None:  # a failure (exit 1), not a bad input
            raise full from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"cannot open the study at {shown_url(url)}: {type(e).__name__}: {scrub(first, url)}"
        ) from None


def open_study(sweep: Sweep, create: bool = False) -> optuna.Study:
    """The sweep's study, with its sampler and pruner (neither is stored: every worker makes them from the spec).
    `create`: a new sweep's, named after its folder (made unique in the storage: sweep.study says which);
    a version-1 folder's study is made on first use."""
    url = storage_url(sweep)
    with opening(url):
        storage = _storage(url)
        if create:
            _create(sweep, storage)
        elif sweep.version == 1:
            optuna.create_study(
                storage=storage, study_name=sweep.study, direction=direction(sweep.monitor), load_if_exists=True
            )
        try:
            return optuna.load_study(
                study_name=sweep.study, storage=storage, sampler=_sampler(sweep.spec), pruner=_pruner(sweep)
            )
        except KeyError:
            raise ConfigError(f"{shown_url(url)} holds no study named {sweep.study!r}") from None


def _create(sweep: Sweep, storage: optuna.storages.RDBStorage) -> None:
    for k in range(1, _STUDY_NAMES + 1):
        name = sweep.study if k == 1 else f"{sweep.study}-{k}"
        try:
            made = optuna.create_study(storage=storage, study_name=name, direction=direction(sweep.monitor))
        except optuna.exceptions.DuplicatedStudyError:
            continue
        sweep.study = name
        made.set_user_attr(SWEEP_ATTR, described(sweep))
        return
    raise ConfigError(f"{shown_url(storage_url(sweep))} already holds studies {sweep.study!r} to -{_STUDY_NAMES}")


def _must_exist(url: str) -> None:
    """A joined SQLite database must be there already: opening one that is not would make an empty file."""
    from sqlalchemy.engine import make_url  # Optuna's own dependency

    with opening(url):
        parsed = make_url(url)
    local = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if local and not Path(parsed.database).is_file():
        raise ConfigError(f"{shown_url(url)}: no such database file {parsed.database}")


def described(sweep: Sweep) -> dict[str, Any]:
    """What the study keeps of its sweep (SWEEP_ATTR): enough for a worker on any machine to build its Sweep."""
    return {"spec": sweep.spec.to_dict(), "base_config": sweep.base, "origin": f"{socket.gethostname()}:{sweep.folder}"}


def find(url: str, name: str | None) -> tuple[str, Spec, dict[str, Any]]:
    """`sweep --join URL [--study NAME]`: the study's name, spec and base config, read from the storage alone.
    Without a name, the storage must hold exactly one mlptrain study."""
    _must_exist(url)
    with opening(url):
        studies = {s.study_name: s.user_attrs.get(SWEEP_ATTR) for s in _storage(url).get_all_studies()}
    ours = sorted(n for n, attrs in studies.items() if isinstance(attrs, dict))
    where = shown_url(url)
    if name is None and len(ours) != 1:
        if not ours:
            raise ConfigError(
                f"{where} holds no mlptrain sweep; start one there with: mlptrain sweep SWEEP --storage URL"
            )
        raise ConfigError(f"{where} holds {len(ours)} sweeps ({', '.join(ours)}); pick one with --study NAME")
    name = ours[0] if name is None else name
    if name not in ours:
        also = f" (it holds: {', '.join(ours)})" if ours else ""
        what = "is not an mlptrain sweep" if name in studies else "is not there"
        raise ConfigError(f"{where}: study {name!r} {what}{also}")
    attrs, source = studies[name], f"{where}: study {name!r}"
    try:
        return name, parse_spec(attrs["spec"], source), Config.from_dict(attrs["base_config"], source).to_dict()
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{source}: unreadable ({type(e).__name__}: {e})") from None


def _sampler(spec: Spec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, `seed` seeding it. Grid and random trials depend on the seed and the trial's number
    alone (so any worker, a resume or --trials growth draws what one worker would have); TPE's on the trials
    finished before too."""
    if spec.method == "grid":  # trial n is combination n of the grid, shuffled by the seed
        return _Grid({key: d.choices for key, d in distributions(spec.params).items()}, seed=spec.seed % 2**32)
    if spec.method == "random":
        return _NumberedRandom(spec.seed)
    # Each worker's sampler gets its own seed, or workers that start together would all draw the same trials:
    # `seed` itself in the first worker (so one worker repeats a sweep exactly), `seed` + k in the others.
    # (A worker that --join started on its own, WORKER_ENV "join", takes its pid.)
    worker = os.environ.get(WORKER_ENV)
    offset = 0 if not worker else int(worker) if worker.isdigit() else os.getpid()
    # Random draws first, then TPE: Optuna's 10 take most of a small sweep, so a third of it, at least 2.
    startup = min(10, max(2, spec.trials // 3))
    return optuna.samplers.TPESampler(seed=(spec.seed + offset) % 2**32, n_startup_trials=startup)


class _Grid(optuna.samplers.GridSampler):
    """Optuna's GridSampler, less its study.stop() once every combination has run (a call that only
    Study.optimize takes; the workers here stop when the study has the sweep's count of trials)."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState, values) -> None:
        pass


class _NumberedRandom(optuna.samplers.RandomSampler):
    """Optuna's RandomSampler, reseeded for each trial from the sweep's seed and the trial's number: the first N
    trials of a longer sweep are a shorter one's, and workers never draw alike."""

    def __init__(self, seed: int):
        super().__init__(seed % 2**32)
        self._sweep_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        self._rng.rng.seed(random.Random(f"{self._sweep_seed}:{trial.number}").getrandbits(32))


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


def encoded(values: dict[str, Any], dists: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if isinstance(dists[k], CategoricalDistribution) else v for k, v in values.items()}


def suggest(trial: optuna.Trial, dists: dict[str, Any]) -> dict[str, Any]:
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
    """Bring the manifest and the study into agreement (under sweep.lock()): a version-1 folder's trials go into
    the study (this moves the folder into a study); the study describes its sweep (SWEEP_ATTR); the trial count,
    which --trials may have grown here or on another machine, is the larger of the two."""
    changed = sweep.version != 2
    if sweep.version == 1:
        known = len(study.get_trials(deepcopy=False))
        for trial in sweep.trials:
            trial.number = trial.index - 1 if trial.number is None else trial.number
            if trial.number >= known:
                _add(sweep, study, trial)
    sweep.version = 2
    theirs = _stored_trials(study)
    if sweep.spec.method != "grid" and theirs is not None and theirs > sweep.spec.trials:
        sweep.spec.trials, changed = theirs, True
    if not isinstance(study.user_attrs.get(SWEEP_ATTR), dict) or theirs != sweep.spec.trials:
        study.set_user_attr(SWEEP_ATTR, described(sweep))
    if changed:
        sweep.save()


def wanted(sweep: Sweep, study: optuna.Study) -> int:
    """How many trials the sweep runs in all, --trials growth on any machine included."""
    theirs = _stored_trials(study)
    return max(sweep.spec.size, theirs if theirs is not None and sweep.spec.method != "grid" else 0)


def _stored_trials(study: optuna.Study) -> int | None:
    """The trial count the study's own copy of the spec holds (SWEEP_ATTR), if it holds one."""
    stored = study.user_attrs.get(SWEEP_ATTR)
    theirs = stored["spec"].get("trials") if isinstance(stored, dict) else None
    return theirs if isinstance(theirs, int) else None


def values_of(frozen: optuna.trial.FrozenTrial, dists: dict[str, Any]) -> dict[str, Any] | None:
    """A trial's swept values from its parameters (or the ones queued for it); None if it has not all of them."""
    params = {**frozen.system_attrs.get("fixed_params", {}), **frozen.params}
    if set(params) != set(dists):
        return None
    return {k: json.loads(params[k]) if isinstance(dists[k], CategoricalDistribution) else params[k] for k in dists}


def _add(sweep: Sweep, study: optuna.Study, trial: Trial) -> None:
    """One manifest trial into the study, as far as it got: queued, running (to be continued), or finished."""
    dists = distributions(sweep.spec.params)
    params = encoded(trial.values, dists)
    state = _FINAL.get(trial.state)
    if state is None:
        study.enqueue_trial(params, skip_if_exists=False)
        if trial.state != "pending":  # a version-1 trial that was stopped mid-way: the next worker continues it
            internals.set_state(study, internals.trial_id(study, trial.number), TrialState.RUNNING)
        return
    run_dir = sweep.folder / trial.dir
    value = read_run(run_dir).best_value if is_run(run_dir) else None
    if state == TrialState.COMPLETE and value is None:
        state = TrialState.FAIL
    done = optuna.trial.create_trial(
        params=params, distributions=dists, value=value if state == TrialState.COMPLETE else None, state=state
    )
    study.add_trial(done)


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
