"""Sweeps: the sweep file (a base config, the values to try, the method and pruner), the sweep folder and its
manifest (sweep.json: the study it belongs to, each trial's run folder, values, state and Optuna trial number),
starting, resuming or joining one (by folder or by the study's database URL), and the table of trials.

The study that samples, prunes and coordinates workers is study.py's and study_worker.py's (the only optuna users).
No torch or optuna at import time: `mlptrain runs SWEEP_DIR` reads the manifest and the trials' small files only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlptrain.config import Config, load_config, quote, read_yaml, with_values
from mlptrain.errors import ConfigError
from mlptrain.extras import check_config
from mlptrain.files import atomic_write_text, folder_lock, make_dirs, new_run_dir
from mlptrain.metrics import ranked
from mlptrain.runs import RunSummary, Scores, is_run, read_run
from mlptrain.sweep_spec import DRAWN, MAX_TRIALS, METHODS, PRUNERS, Spec, check_trials, parse_spec  # noqa: F401

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # `--join postgresql://...`, not a folder

if TYPE_CHECKING:
    from mlptrain.interrupt import StopRequest
    from mlptrain.trainer import Callbacks

MANIFEST = "sweep.json"
FORMAT_VERSION = 2  # 2: the trials are an Optuna study's (1: before; such a folder moves into a study on --resume)
READABLE_VERSIONS = (1, 2)
# pending -> running -> done | failed | pruned | interrupted; a kill -9 leaves "running" behind, which the next
# worker or --resume continues from its last.pt.
FINISHED = ("done", "failed", "pruned")
LOCK_WAIT = 60.0  # seconds a worker waits for another to finish writing the manifest
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
_NAME_LIMIT = 120  # characters of a trial folder name; the index at its front keeps shortened names apart


def trial_name(index: int, values: dict[str, Any]) -> str:
    """The trial's folder name: its index, then each swept key's value ('003-lr=0.05-hidden=128x64').

    Keys are shortened to their last part where that is unambiguous; what a file name cannot hold becomes '_'.
    """
    leaves = [key.rsplit(".", 1)[-1] for key in values]
    parts = [f"{index:03d}"]
    for (key, value), leaf in zip(values.items(), leaves, strict=True):
        parts.append(f"{leaf if leaves.count(leaf) == 1 else key}={_short(value)}")
    return _UNSAFE.sub("_", "-".join(parts))[:_NAME_LIMIT]


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "x".join(map(_short, value)) or "none"
    return str(value)


@dataclass
class Trial:
    index: int  # from 1, in the order the sweep runs them
    dir: str  # the run folder's name inside the sweep folder
    values: dict[str, Any]  # the swept keys' values
    state: str = "pending"  # pending, running, interrupted, done, failed, pruned
    reason: str = ""  # why it failed, or the epoch it was pruned at
    number: int | None = None  # its Optuna trial's number in the study (index - 1); None in a version-1 folder
    # A folder joined by URL holds only the trials its own workers ran: its indexes have gaps.


@dataclass
class Sweep:
    """A sweep folder and its manifest. The manifest holds the base config and the spec, so resuming depends on
    neither file that started it."""

    folder: Path
    spec: Spec
    base: dict[str, Any]  # the base config, resolved (defaults filled in)
    trials: list[Trial] = field(default_factory=list)
    storage: str | None = None  # the study's database URL; None: SWEEP_DIR/study.db
    study: str = ""  # the study's name in its storage: the sweep folder's, made unique (study.open_study)
    version: int = FORMAT_VERSION  # of the manifest as read: 1 until the folder is moved into a study

    @property
    def monitor(self) -> str:
        return self.base["train"]["monitor"]

    @property
    def total(self) -> int:
        """How many trials the sweep runs in all, over every worker."""
        return self.spec.size

    def lock(self, wait: float = LOCK_WAIT):
        """The short lock a worker holds while it reads, claims in, or writes the manifest."""
        return folder_lock(self.folder, wait=wait)

    def refresh(self) -> None:
        """Read the trials back from the manifest, as the other workers have left it (under self.lock())."""
        self.trials = load(self.folder).trials

    def record(self, trial: Trial) -> None:
        """Write `trial` into the manifest, keeping what the other workers wrote of theirs."""
        with self.lock():
            mine = {t.index: t for t in load(self.folder).trials}
            mine[trial.index] = trial
            self.trials = sorted(mine.values(), key=lambda t: t.index)
            self.save()

    def config(self, trial: Trial) -> Config:
        return with_values(Config.from_dict(self.base), trial.values, source=f"trial {trial.dir}")

    def save(self) -> None:
        manifest = {
            "format_version": self.version,
            "study": {"storage": self.storage, "name": self.study},
            "spec": self.spec.to_dict(),
            "base_config": self.base,
            "trials": [asdict(t) for t in self.trials],
        }
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")

    def check(self, trial: Trial, source: str) -> None:
        """Validate one trial's config (a tpe trial, sampled as the sweep runs), its extras too."""
        check_config(with_values(Config.from_dict(self.base), trial.values, source=f"{source}: trial {trial.index}"))


def plan(path: Path, trials: int | None = None) -> Sweep:
    """Read and validate sweep file `path`, its base config and what its trials' configs can be: every combination
    of a grid, each listed value and both ends of each range of a random or tpe sweep; no folder yet."""
    path = Path(path)
    spec = parse_spec(read_yaml(path, "sweep file", "configs/sweep.yaml"), str(path), trials)
    base_path = path.parent / spec.base
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: config file not found: {base_path} (the path is relative to the sweep file)")
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
    path = Path(path)
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
        os.environ.setdefault("MLPTRAIN_SWEEP_WORKER", "join")  # study.WORKER_ENV: its own sampler seed
        if storage is not None:
            raise ConfigError("--join uses the storage the sweep was started with; --storage does not apply")
        if by_url:
            _check_trials(trials)
            return joined(join, study, folder, trials)
        resume = Path(join)
    if (path is None) == (resume is None):
        raise ConfigError("give a SWEEP file to start a sweep, or --resume SWEEP_DIR to continue one (not both)")
    if resume is not None and folder is not None:
        raise ConfigError("--resume continues a sweep in its own folder; --dir does not apply")
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
        from mlptrain import study
    except ImportError as e:
        raise ConfigError(
            f"mlptrain sweep runs on Optuna, which is not installed ({e}): pip install 'mlptrain[sweep]'"
        ) from None
    return study


def draw_study(folder: Path, out: Path) -> list[Path]:
    """`runs SWEEP_DIR --out FILE.png` also draws FILE-study.png (study.progress, plot.save_study_plot); nothing for
    a folder that is not a sweep, or a version-1 sweep with no study yet."""
    sweep = load(folder) if is_sweep(folder) else None
    if sweep is None or (sweep.version == 1 and sweep.storage is None):
        return []
    from mlptrain.plot import save_study_plot

    history, importance = engine().progress(sweep)
    path = Path(out).with_name(f"{Path(out).stem}-study.png")
    what = f"{sweep.spec.method}, {len(history)} of {sweep.total} trials done"
    save_study_plot(path, history, importance, sweep.monitor, f"{folder}: {what}")
    return [path]


def is_sweep(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load(folder: Path, trials: int | None = None) -> Sweep:
    """The sweep in `folder`, from its manifest; --trials N extends a random sweep to N trials."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        what = "no such folder" if not folder.exists() else f"not a sweep folder (it holds no {MANIFEST})"
        raise ConfigError(f"{folder}: {what}")
    try:
        raw = json.loads(manifest.read_text(encoding="utf-8"))
        version = raw.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ConfigError(f"{manifest}: format version {version!r}, expected {FORMAT_VERSION}")
        spec = parse_spec(raw["spec"], str(manifest))
        sweep = Sweep(folder, spec, Config.from_dict(raw["base_config"], str(manifest)).to_dict(), version=version)
        sweep.trials = [_trial(t, folder, manifest) for t in raw["trials"]]
        study = raw.get("study") or {"storage": None, "name": folder.resolve().name}
        sweep.storage, sweep.study = study["storage"], str(study["name"])
        if sweep.storage is not None and not isinstance(sweep.storage, str):
            raise TypeError("study.storage is not a URL")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ConfigError(f"{manifest}: unreadable ({type(e).__name__}: {e})") from None
    if trials is not None:
        _grow(sweep, trials)
    return sweep


def _grow(sweep: Sweep, trials: int) -> None:
    """--trials N on --resume: a random or tpe sweep grows to N trials (the sampler draws them as they run)."""
    folder, spec = sweep.folder, sweep.spec
    if spec.method not in DRAWN:
        raise ConfigError(f"--trials {trials}: only a random sweep takes --trials; {folder} is a grid")
    if trials < spec.trials:
        raise ConfigError(f"--trials {trials}: {folder} already has {spec.trials} trials; it can only grow")
    check_trials(trials, f"--trials {trials}")
    spec.trials = trials  # the study learns of it as this worker starts (study.sync), and so every worker
    with sweep.lock(wait=2.0):
        sweep.refresh()
        sweep.save()


def _trial(raw: dict[str, Any], folder: Path, manifest: Path) -> Trial:
    """A trial from the manifest, whose run folder must be a folder of the sweep's own: a manifest edited to
    point elsewhere (`../another-run`) would have the sweep write over whatever is there."""
    trial = Trial(**raw)
    name = trial.dir
    inside = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
    if not inside or not (folder / name).resolve().parent == folder.resolve():
        raise ConfigError(
            f"{manifest}: trial {trial.index}'s folder {quote(name)} is not a folder inside {folder}; "
            "refusing to write outside the sweep"
        )
    return trial


class SweepCallbacks:
    """What a sweep reports as it goes. The defaults do nothing; the CLI's reporter overrides them."""

    def sweep_started(self, sweep: Sweep, todo: int) -> None:
        pass

    def trial_started(self, trial: Trial, total: int, resuming: bool) -> Callbacks | None:
        """Returns the callbacks for the trial's run (None: none)."""
        return None

    def trial_done(self, trial: Trial, total: int) -> None:
        pass


def run(
    sweep: Sweep, callbacks: SweepCallbacks | None = None, stop: StopRequest | None = None, workers: int = 1
) -> list[Trial]:
    """Work on the sweep until no trial is left to run (study_worker.work), with `workers` - 1 more worker
    processes beside this one; returns the trials as the manifest has them."""
    from mlptrain import study_worker
    from mlptrain import workers as workers_

    if workers < 1 or workers > workers_.MAX_WORKERS:
        raise ConfigError(f"--workers {workers}: must be in [1, {workers_.MAX_WORKERS}]")
    with workers_.spread(sweep.folder, workers, stop) as stop:
        return study_worker.work(sweep, callbacks or SweepCallbacks(), stop)


# --- reading a sweep back ------------------------------------------------------------------------------------


@dataclass
class TrialRow:
    trial: Trial
    run: RunSummary | None  # None until the trial has a run folder
    best: bool = False  # the best finished trial

    @property
    def value(self) -> float | None:
        """The monitored metric at the trial's best epoch (None before its first finished epoch)."""
        return self.run.best_value if self.run else None

    def to_json(self, monitor: str, keys: list[str]) -> dict[str, Any]:
        run = self.run
        return {
            "trial": self.trial.index,
            "run": self.trial.dir,
            "state": self.trial.state,
            "reason": self.trial.reason or None,
            "number": self.trial.number,
            "best": self.best,
            "monitor": monitor,
            "value": self.value,
            "best_epoch": (run.best_epoch or None) if run else None,
            "best_val_acc": run.best_val_acc if run else None,
            "test_acc": run.test_acc if run else None,
            "epochs": len(run.history) if run else 0,
            "seconds": run.seconds if run else 0.0,
            "differs": {key: self.trial.values.get(key) for key in keys},
            "values": self.trial.values,
        }


@dataclass
class SweepTable:
    folder: Path
    method: str  # grid, random or tpe: how the trials' values were picked
    monitor: str
    keys: list[str]  # the swept keys whose values differ between trials
    rows: list[TrialRow]  # best first on `monitor`; trials without a number yet last, in order

    def to_json(self) -> list[dict[str, Any]]:
        return [row.to_json(self.monitor, self.keys) for row in self.rows]

    def scores(self) -> Scores:
        """Each trial's best score on the monitor against its swept values, the best finished trial marked."""
        scored = [row for row in self.rows if row.value is not None]
        best = next((i for i, row in enumerate(scored) if row.best), None)
        return Scores(self.monitor, self.keys, [(row.trial.values, row.value) for row in scored], best, "trials")

    @property
    def problems(self) -> list[str]:
        """What could not be read in the trials' run folders."""
        return [problem for row in self.rows if row.run for problem in row.run.problems]


def table(folder: Path) -> SweepTable:
    """The sweep's trials, sorted by the base config's monitored metric, with the best finished one marked."""
    sweep = load(folder)
    monitor = sweep.monitor
    rows = []
    for trial in sweep.trials:
        run = read_run(sweep.folder / trial.dir) if is_run(sweep.folder / trial.dir) else None
        rows.append(TrialRow(trial, run))
    rows = ranked(rows, lambda row: row.value, monitor)  # trials in order, so equals stay in trial order
    done = [r for r in rows if r.trial.state == "done" and r.value is not None]
    if done:
        done[0].best = True
    varied = [k for k in sweep.spec.params if len({json.dumps(t.values[k]) for t in sweep.trials}) > 1]
    return SweepTable(sweep.folder, sweep.spec.method, monitor, varied, rows)
