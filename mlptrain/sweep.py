"""Sweeps: a base config and the values to try, expanded into trials that run one after another, each an ordinary
run folder under the sweep folder, whose manifest (sweep.json, written atomically) lets a stopped sweep carry on.

No torch at import time: `mlptrain runs SWEEP_DIR` reads the manifest and the trials' small files only.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlptrain.config import Config, did_you_mean, key_problem, kind_of, load_config, quote, read_yaml, with_values
from mlptrain.errors import ConfigError, Interrupted, MlptrainError, RunFailed
from mlptrain.extras import check_config
from mlptrain.files import atomic_write_text, folder_lock, make_dirs, new_run_dir
from mlptrain.metrics import ranked
from mlptrain.runs import LAST_FILE, RunSummary, Scores, is_run, read_run

if TYPE_CHECKING:
    from mlptrain.interrupt import StopRequest
    from mlptrain.trainer import Callbacks

MANIFEST = "sweep.json"
FORMAT_VERSION = 1
METHODS = ("grid", "random")
SPEC_KEYS = ("base", "method", "params", "trials", "seed")
RANGE_KEYS = ("low", "high", "log")
# pending -> running -> done | failed | interrupted; a kill -9 leaves "running" behind, which --resume handles.
FINISHED = ("done", "failed")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
MAX_TRIALS = 10_000  # trials in one sweep
_NAME_LIMIT = 120  # characters of a trial folder name; the index at its front keeps shortened names apart


@dataclass
class Spec:
    """A sweep file, validated: which base config, and how to pick the values of each swept key."""

    base: str  # as the sweep file names it, relative to the sweep file
    method: str
    params: dict[str, list | dict]  # dotted key -> values to try, or (random only) a range {low, high, log}
    trials: int | None = None  # random only
    seed: int = 0  # random only

    def expand(self) -> list[dict[str, Any]]:
        """Each trial's values: every combination for grid (the first key varies slowest), else `trials` draws.

        A random sweep draws trial after trial from one generator seeded with `seed`, so the first N trials of
        a longer sweep are the N trials of a shorter one (which is what lets --trials extend a sweep).
        """
        keys = list(self.params)
        if self.method == "grid":
            return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*self.params.values())]
        rng = random.Random(self.seed)
        return [{key: _draw(rng, self.params[key]) for key in keys} for _ in range(self.trials)]

    def to_dict(self) -> dict[str, Any]:
        """As a sweep file would say it (parse_spec reads it back)."""
        extra = {"trials": self.trials, "seed": self.seed} if self.method == "random" else {}
        return {"base": self.base, "method": self.method, "params": self.params, **extra}


def parse_spec(raw: Any, source: str, trials: int | None = None) -> Spec:
    """Validate a sweep file's content (everything but the trials' configs); `trials` is --trials N."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (base, method, params...), got {kind_of(raw)}")
    for key in raw:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{source}: unknown key {quote(key)}{did_you_mean(str(key), SPEC_KEYS)}")
    base = raw.get("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{source}: base: name the base config file (relative to the sweep file), got {quote(base)}")
    method = raw.get("method", "grid")
    if method not in METHODS:
        raise ConfigError(f"{source}: method: {quote(method)} is not one of grid, random")
    spec = Spec(base=base, method=method, params=_params(raw.get("params"), method, source))
    if method == "grid":
        for key in ("trials", "seed"):
            if key in raw:
                raise ConfigError(f"{source}: {key}: only a random sweep takes {key}; a grid runs every combination")
        if trials is not None:
            raise ConfigError(f"--trials {trials}: only a random sweep takes --trials; {source} is a grid")
        combinations = math.prod(len(values) for values in spec.params.values())
        if combinations > MAX_TRIALS:
            raise ConfigError(
                f"{source}: params: the grid has {combinations:,} combinations, more than a sweep may run "
                f"({MAX_TRIALS:,}); sweep fewer values, or draw trials at random (method: random)"
            )
        return spec
    spec.trials = trials if trials is not None else raw.get("trials")
    if not _is_int(spec.trials) or spec.trials < 1:
        raise ConfigError(f"{source}: trials: a random sweep needs a number of trials >= 1, got {quote(spec.trials)}")
    check_trials(spec.trials, f"--trials {trials}" if trials is not None else f"{source}: trials")
    spec.seed = raw.get("seed", 0)
    if not _is_int(spec.seed) or not 0 <= spec.seed < 2**63:
        raise ConfigError(f"{source}: seed: must be an integer in [0, 2**63), got {quote(spec.seed)}")
    return spec


def check_trials(trials: int, where: str) -> None:
    """Refuse more trials than a sweep may run: each is a training run, and each config is checked up front."""
    if trials > MAX_TRIALS:
        raise ConfigError(f"{where}: {trials:,} trials, more than a sweep may run ({MAX_TRIALS:,})")


def _params(params: Any, method: str, source: str) -> dict[str, list | dict]:
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{source}: params: map each config key to the values to try, e.g. train.lr: [0.01, 0.1]")
    for key, values in params.items():
        where = f"{source}: params: {key}"
        problem = key_problem(str(key))
        if problem:
            raise ConfigError(f"{source}: params: {problem}")
        if isinstance(values, dict) and method == "random":
            _check_range(values, where)
        elif not isinstance(values, list):
            also = "" if method == "grid" else " or a range {low: ..., high: ..., log: true}"
            raise ConfigError(f"{where}: expected a list of values to try{also}, got {kind_of(values)} {quote(values)}")
        elif not values:
            raise ConfigError(f"{where}: the list of values to try is empty")
    return params


def _check_range(r: dict, where: str) -> None:
    for key in r:
        if key not in RANGE_KEYS:
            raise ConfigError(f"{where}: unknown range key {quote(key)}{did_you_mean(str(key), RANGE_KEYS)}")
    for key in ("low", "high"):
        value = r.get(key)
        if not _is_number(value):
            raise ConfigError(f"{where}: {key}: a range needs a finite number, got {quote(value)}")
    if not r["low"] < r["high"]:
        raise ConfigError(f"{where}: low must be below high, got low={quote(r['low'])} high={quote(r['high'])}")
    if not isinstance(r.get("log", False), bool):
        raise ConfigError(f"{where}: log: expected true or false, got {quote(r['log'])}")
    if r.get("log") and r["low"] <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {quote(r['low'])}")


def _draw(rng: random.Random, values: list | dict) -> Any:
    """One value: a list's item, or a number in a range: uniform, or log-uniform with `log`; integers if both
    ends are integers (e.g. train.batch_size: {low: 32, high: 512, log: true})."""
    if isinstance(values, list):
        return values[rng.randrange(len(values))]
    low, high = values["low"], values["high"]
    if values.get("log"):
        x = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        x = rng.uniform(low, high)
    if _is_int(low) and _is_int(high):
        return min(max(round(x), low), high)
    return x


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (_is_int(x) or isinstance(x, float)) and math.isfinite(x)


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
    state: str = "pending"  # pending, running, interrupted, done, failed
    reason: str = ""  # why it failed


@dataclass
class Sweep:
    """A sweep folder and its manifest. The manifest holds the base config and the spec, so resuming depends on
    neither file that started it."""

    folder: Path
    spec: Spec
    base: dict[str, Any]  # the base config, resolved (defaults filled in)
    trials: list[Trial] = field(default_factory=list)

    @property
    def monitor(self) -> str:
        return self.base["train"]["monitor"]

    def config(self, trial: Trial) -> Config:
        return with_values(Config.from_dict(self.base), trial.values, source=f"trial {trial.dir}")

    def save(self) -> None:
        manifest = {
            "format_version": FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "base_config": self.base,
            "trials": [asdict(t) for t in self.trials],
        }
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")

    def add_trials(self, values: list[dict[str, Any]], source: str) -> None:
        """Append trials, after validating every one of their configs: a bad value is refused before any runs."""
        base = Config.from_dict(self.base)
        start = len(self.trials) + 1
        for index, v in enumerate(values, start):
            described = ", ".join(f"{k}={json.dumps(x)}" for k, x in v.items())
            check_config(with_values(base, v, source=f"{source}: trial {index} ({described})"))  # extras too
        self.trials += [Trial(index, trial_name(index, v), v) for index, v in enumerate(values, start)]


def plan(path: Path, trials: int | None = None) -> Sweep:
    """Read and validate sweep file `path`, its base config and every trial's config; no folder yet."""
    path = Path(path)
    spec = parse_spec(read_yaml(path, "sweep file", "configs/sweep.yaml"), str(path), trials)
    base_path = path.parent / spec.base
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: config file not found: {base_path} (the path is relative to the sweep file)")
    sweep = Sweep(folder=Path(), spec=spec, base=load_config(base_path).to_dict())
    sweep.add_trials(spec.expand(), str(path))
    return sweep


def create(path: Path, folder: Path | None = None, trials: int | None = None) -> Sweep:
    """Plan the sweep in file `path` (see plan), then create the sweep folder and its manifest."""
    path = Path(path)
    sweep = plan(path, trials)
    if folder is None:
        sweep.folder, made = new_run_dir(Path(sweep.base["output"]["dir"]), path.stem), True
    else:
        sweep.folder = Path(folder)
        made = make_dirs(sweep.folder)
    try:
        with folder_lock(sweep.folder):
            if (sweep.folder / MANIFEST).exists():
                raise ConfigError(
                    f"{folder} already holds a sweep; continue it with --resume {folder}, or pick another --dir"
                )
            atomic_write_text(sweep.folder / "sweep.yaml", path.read_text(encoding="utf-8"))  # for the record
            sweep.save()
    except BaseException:
        if made:  # nothing of the sweep could be written: leave no folder behind
            shutil.rmtree(sweep.folder, ignore_errors=True)
        raise
    return sweep


def start(path: Path | None, resume: Path | None, folder: Path | None = None, trials: int | None = None) -> Sweep:
    """`mlptrain sweep`: a new sweep of the file `path`, or the one in folder `resume` to carry on (one of them)."""
    if (path is None) == (resume is None):
        raise ConfigError("give a SWEEP file to start a sweep, or --resume SWEEP_DIR to continue one (not both)")
    if resume is not None and folder is not None:
        raise ConfigError("--resume continues a sweep in its own folder; --dir does not apply")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials}: must be at least 1")
    return create(path, folder=folder, trials=trials) if path is not None else load(resume, trials=trials)


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
        if raw.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{manifest}: format version {raw.get('format_version')!r}, expected {FORMAT_VERSION}")
        spec = parse_spec(raw["spec"], str(manifest))
        sweep = Sweep(folder, spec, Config.from_dict(raw["base_config"], str(manifest)).to_dict())
        sweep.trials = [_trial(t, folder, manifest) for t in raw["trials"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ConfigError(f"{manifest}: unreadable ({type(e).__name__}: {e})") from None
    if trials is not None:
        if spec.method != "random":
            raise ConfigError(f"--trials {trials}: only a random sweep takes --trials; {folder} is a grid")
        if trials < len(sweep.trials):
            raise ConfigError(f"--trials {trials}: {folder} already has {len(sweep.trials)} trials; it can only grow")
        check_trials(trials, f"--trials {trials}")
        spec.trials = trials
        sweep.add_trials(spec.expand()[len(sweep.trials) :], f"--trials {trials}")
        with folder_lock(folder):
            sweep.save()
    return sweep


def _trial(raw: dict[str, Any], folder: Path, manifest: Path) -> Trial:
    """A trial from the manifest, whose run folder must be a folder of the sweep's own: a manifest edited to
    point elsewhere (`../another-run`) would have the sweep write over whatever is there."""
    trial = Trial(**raw)
    name = trial.dir
    inside = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
    if not inside or not (folder / name).resolve().parent == folder.resolve():
        raise ConfigError(
            f"{manifest}: trial {trial.index}'s folder {_quoted(name)} is not a folder inside {folder}; "
            "refusing to write outside the sweep"
        )
    return trial


def _quoted(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class SweepCallbacks:
    """What a sweep reports as it goes. The defaults do nothing; the CLI's reporter overrides them."""

    def sweep_started(self, sweep: Sweep, todo: int) -> None:
        pass

    def trial_started(self, trial: Trial, total: int, resuming: bool) -> Callbacks | None:
        """Returns the callbacks for the trial's run (None: none)."""
        return None

    def trial_done(self, trial: Trial, total: int) -> None:
        pass


def run(sweep: Sweep, callbacks: SweepCallbacks | None = None, stop: StopRequest | None = None) -> list[Trial]:
    """Run every trial not yet done or failed, in order, updating the manifest around each.

    A trial that fails (its loss diverged, or it crashed) is recorded as failed with its reason and the sweep goes
    on. A signal stops the running trial at a batch boundary, saved to its last.pt, and raises Interrupted.
    """
    from mlptrain.interrupt import StopRequest, stop_on_signals

    cb = callbacks or SweepCallbacks()
    stop = stop or StopRequest()
    total = len(sweep.trials)
    with folder_lock(sweep.folder), stop_on_signals(stop):
        cb.sweep_started(sweep, sum(t.state not in FINISHED for t in sweep.trials))
        for trial in sweep.trials:
            if trial.state in FINISHED:
                continue
            if stop():  # a signal between trials
                message = f"{stop.name}: the sweep stopped before trial {trial.index}/{total}"
                raise _interrupted(sweep, message, stop.signum)
            _run_trial(sweep, trial, cb, stop, total)
    return sweep.trials


def _run_trial(sweep: Sweep, trial: Trial, cb: SweepCallbacks, stop: StopRequest, total: int) -> None:
    from mlptrain import trainer

    run_dir = sweep.folder / trial.dir
    before = trial.state
    # A trial stopped mid-way ("interrupted", or "running" after a kill -9) goes on from its last.pt; one killed
    # before its first epoch was saved starts again, cleanly.
    resuming = before != "pending" and (run_dir / LAST_FILE).is_file()
    trial.state, trial.reason = "running", ""
    sweep.save()
    callbacks = cb.trial_started(trial, total, resuming)
    try:
        if resuming:
            trainer.resume(run_dir, callbacks=callbacks, stop=stop)
        else:
            trainer.train(sweep.config(trial), run_dir=run_dir, force=True, callbacks=callbacks, stop=stop)
        trial.state = "done"
    except Interrupted as e:
        trial.state = "interrupted"
        sweep.save()
        raise _interrupted(sweep, f"sweep trial {trial.index}/{total}, {e}", e.exit_code - 128) from None
    except KeyboardInterrupt:  # a second Ctrl-C: its last.pt holds the last finished epoch
        trial.state = "interrupted"
        sweep.save()
        raise
    except RunFailed as e:
        trial.state, trial.reason = "failed", str(e)
    except MlptrainError:  # bad input (e.g. the dataset is missing): every trial would fail alike, so stop
        trial.state = before
        sweep.save()
        raise
    except Exception as e:  # a crash inside one trial does not stop the others
        trial.state, trial.reason = "failed", f"{type(e).__name__}: {e}"
    sweep.save()
    cb.trial_done(trial, total)


def _interrupted(sweep: Sweep, message: str, signum: int) -> Interrupted:
    done = sum(t.state == "done" for t in sweep.trials)
    return Interrupted(
        f"{message} ({done} of {len(sweep.trials)} trials done)",
        resume_command=f"mlptrain sweep --resume {sweep.folder}",
        signum=signum,
    )


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
    return SweepTable(sweep.folder, monitor, varied, rows)
