"""Starting a sweep: reading and checking the sweep file (a base config, the values to try, the method and
pruner), creating the sweep folder and its study, resuming or joining one (by folder or by the study's database
URL), and running it with this process and its workers. The study that samples, prunes and coordinates workers is
study.py's and worker.py's (with internals.py, the only optuna users); optuna is imported only once a sweep starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlptrain.base.config import Config, load_config, read_yaml, with_values
from mlptrain.base.errors import ConfigError
from mlptrain.base.extras import check_config
from mlptrain.base.files import atomic_write_text, make_dirs, new_run_dir
from mlptrain.base.recipes import recipe_file, resolve
from mlptrain.sweep.folder import FINISHED, MANIFEST, WORKER_ENV, Sweep, SweepCallbacks, Trial, is_sweep, load
from mlptrain.sweep.spec import parse_spec

if TYPE_CHECKING:
    from mlptrain.run.interrupt import StopRequest

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # `--join postgresql://...`, not a folder
MAX_TIMEOUT = 30 * 24 * 3600  # seconds: --timeout of a month; more is a typo


@dataclass(frozen=True)
class Budget:
    """`--timeout SECONDS`: no trial is started (nor a paused one continued) once `deadline` has passed, a wall-clock
    time (time.time()) that this invocation's workers share; trials under way finish. Per invocation, never stored:
    --resume continues towards the sweep's trials with the budget it is given, or none."""

    seconds: float
    deadline: float

    @classmethod
    def starting(cls, seconds: float | None, began: float) -> Budget | None:
        """The budget of `seconds` from `began` (time.time() when the command began), refused outside its range."""
        if seconds is None:
            return None
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT):
            raise ConfigError(f"--timeout {seconds:g}: must be above 0 and at most {MAX_TIMEOUT:,} seconds (30 days)")
        return cls(seconds, began + seconds)


@dataclass(frozen=True)
class BudgetEnd:
    """A sweep that its budget stopped before all its trials were done: what the closing table says of it."""

    seconds: float
    done: int  # trials finished (done, failed or pruned), of
    total: int
    folder: Path

    def to_json(self) -> dict:
        return {"reason": "timeout", "seconds": self.seconds, "trials_done": self.done, "trials": self.total,
                "resume": f"mlptrain sweep --resume {self.folder}"}  # fmt: skip


def budget_end(sweep: Sweep, budget: Budget | None, now: float | None = None) -> BudgetEnd | None:
    """How the budget ended the sweep, if it did: its deadline passed with trials left to do; else None."""
    if budget is None or (time.time() if now is None else now) < budget.deadline:
        return None
    done = sum(t.state in FINISHED for t in sweep.trials)
    return BudgetEnd(budget.seconds, done, sweep.total, sweep.folder) if done < sweep.total else None


def plan(path: Path, trials: int | None = None) -> Sweep:
    """Read and validate sweep file `path`, its base config and what its trials' configs can be: every combination
    of a grid, each listed value and both ends of each range of a random or tpe sweep; no folder yet."""
    path = resolve(path, "sweep file")
    spec = parse_spec(read_yaml(path, "sweep file", "sweep"), str(path), trials)
    base_path = path.parent / spec.base
    if not base_path.is_file():  # a shipped recipe's name works here as on the command line; a file beside wins
        base_path = recipe_file(spec.base) or base_path
    if not base_path.is_file():
        raise ConfigError(
            f"{path}: base: config file not found: {base_path} (the path is relative to the sweep file), nor is it "
            "a recipe's name (mlptrain config --list)"
        )
    sweep = Sweep(folder=Path(), spec=spec, base=load_config(base_path).to_dict())
    base = Config.from_dict(sweep.base)
    if spec.method == "grid":
        for n, values in enumerate(spec.combinations(), 1):
            described = ", ".join(f"{k}={json.dumps(x)}" for k, x in values.items())
            check_config(with_values(base, values, source=f"{path}: combination {n} ({described})"))  # extras too
        return sweep
    for key, values in spec.params.items():  # the sampler draws the trials as they run
        for value in values if isinstance(values, list) else (values["low"], values["high"]):
            check_config(with_values(base, {key: value}, source=f"{path}: params: {key}"))
    return sweep


def create(path: Path, folder: Path | None = None, trials: int | None = None, storage: str | None = None) -> Sweep:
    """Plan the sweep in file `path` (see plan), then create the sweep folder, its manifest and its study (which
    holds the spec and the resolved base config, for workers that join it by URL)."""
    path = resolve(path, "sweep file")
    sweep = plan(path, trials)
    sweep.storage, study = storage, engine()
    if folder is None:
        sweep.folder, made = new_run_dir(Path(sweep.base["output"]["dir"]), path.stem), True
    else:
        sweep.folder = Path(folder)
        made = make_dirs(sweep.folder)
    sweep.study = sweep.folder.resolve().name
    try:
        with sweep.lock(wait=2.0):
            if (sweep.folder / MANIFEST).exists():
                raise ConfigError(
                    f"{folder} already holds a sweep; continue it with --resume {folder}, or pick another --dir"
                )
            study.open_study(sweep, create=True)  # first: a database that is not there leaves nothing
            atomic_write_text(sweep.folder / "sweep.yaml", path.read_text(encoding="utf-8"))  # for the record
            sweep.save()
    except BaseException:
        if made:  # nothing of the sweep could be written: leave no folder behind
            shutil.rmtree(sweep.folder, ignore_errors=True)
        raise
    return sweep


def joined(url: str, name: str | None, folder: Path | None = None, trials: int | None = None) -> Sweep:
    """`sweep --join URL [--study NAME]`: one more worker on the study at `url`, from any machine. The study says
    what to run; this worker's trials go into a local sweep folder (`folder`, or <output.dir>/<study name>),
    an ordinary one that --resume rejoins."""
    name, spec, base = engine().find(url, name)
    sweep = Sweep(Path(folder) if folder is not None else Path(base["output"]["dir"]) / name, spec, base)
    sweep.storage, sweep.study = url, name
    made = make_dirs(sweep.folder)
    try:
        with sweep.lock(wait=2.0):
            if not is_sweep(sweep.folder):
                sweep.save()
                return load(sweep.folder, trials=trials)
    except BaseException:
        if made:
            shutil.rmtree(sweep.folder, ignore_errors=True)
        raise
    here = load(sweep.folder, trials=trials)
    if (here.storage, here.study) != (url, name):
        where = "SWEEP_DIR/study.db" if here.storage is None else engine().shown_url(here.storage)
        raise ConfigError(
            f"{sweep.folder} holds a sweep of study {here.study!r} in {where}, not this one; pick another --dir"
        )
    return here


def start(
    path: Path | None,
    resume: Path | None,
    folder: Path | None = None,
    trials: int | None = None,
    storage: str | None = None,
    join: str | None = None,
    study: str | None = None,
) -> Sweep:
    """`mlptrain sweep`: a new sweep of the file `path`, the one in folder `resume` to carry on, or `join` (a sweep
    folder, the same as `resume` as one more worker; or a study's URL, see joined); one of them."""
    by_url = join is not None and bool(_SCHEME.match(join)) and not Path(join).exists()
    if study is not None and not by_url:
        raise ConfigError("--study picks a study in the storage that --join URL names; it goes with --join URL")
    if join is not None:
        if resume is not None or path is not None:
            raise ConfigError("--join starts one more worker on a sweep: give no SWEEP file, nor --resume")
        os.environ.setdefault(WORKER_ENV, "join")  # its own sampler seed (study.py)
        if storage is not None:
            raise ConfigError("--join uses the storage the sweep was started with; --storage does not apply")
        if by_url:
            _check_trials(trials)
            return joined(join, study, folder, trials)
        resume = Path(join)
    if (path is None) == (resume is None):
        raise ConfigError("give a SWEEP file to start a sweep, or --resume SWEEP_DIR to continue one (not both)")
    if resume is not None and folder is not None:
        given = "--join SWEEP_DIR works on" if join is not None else "--resume continues"
        raise ConfigError(f"{given} a sweep in its own folder; --dir does not apply")
    if resume is not None and storage is not None:
        raise ConfigError("--resume uses the storage the sweep was started with; --storage does not apply")
    _check_trials(trials)
    if path is not None:
        return create(path, folder=folder, trials=trials, storage=storage)
    return load(resume, trials=trials)


def _check_trials(trials: int | None) -> None:
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials}: must be at least 1")


def engine():
    """study.py, the sweep engine; Optuna is an extra (mlptrain[sweep]) that a sweep needs and `runs` does not."""
    try:
        from mlptrain.sweep import study
    except ImportError as e:
        raise ConfigError(
            f"mlptrain sweep runs on Optuna, which is not installed ({e}): pip install 'mlptrain[sweep]'"
        ) from None
    return study


def run(
    sweep: Sweep,
    callbacks: SweepCallbacks | None = None,
    stop: StopRequest | None = None,
    workers: int = 1,
    budget: Budget | None = None,
) -> list[Trial]:
    """Work on the sweep until no trial is left to run (worker.work), or until the budget's deadline (a worker
    that --workers started has its parent's, workers.inherited_deadline), with `workers` - 1 more worker processes
    beside this one; returns the trials as the manifest has them."""
    from mlptrain.sweep import worker
    from mlptrain.sweep import workers as workers_

    workers_.check_count(workers)
    deadline = budget.deadline if budget is not None else workers_.inherited_deadline()
    with workers_.spread(sweep.folder, workers, stop, deadline) as stop:
        trials = worker.work(sweep, callbacks or SweepCallbacks(), stop, deadline)
    if workers == 1:
        return trials
    with sweep.lock():  # the other workers' last trials too: they may have finished after this one's
        sweep.refresh()
    return sweep.trials
