"""A sweep folder and its manifest (sweep.json): the study it belongs to, the base config and spec, and each trial's
run folder, values, state and Optuna trial number; what the driver, the workers and the table all read and write.
No torch or optuna: `mlptrain runs SWEEP_DIR` reads it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlptrain.base.config import Config, quote, with_values
from mlptrain.base.errors import ConfigError
from mlptrain.base.extras import check_config
from mlptrain.base.files import atomic_write_text, folder_lock
from mlptrain.sweep.spec import DRAWN, Spec, check_trials, parse_spec

if TYPE_CHECKING:
    from mlptrain.run.callbacks import Callbacks

MANIFEST = "sweep.json"
FORMAT_VERSION = 2  # 2: the trials are an Optuna study's (1: before; such a folder moves into a study on --resume)
READABLE_VERSIONS = (1, 2)
# pending -> running -> done | failed | pruned | interrupted; a kill -9 leaves "running" behind, which the next
# worker or --resume continues from its last.pt.
FINISHED = ("done", "failed", "pruned")
LOCK_WAIT = 60.0  # seconds a worker waits for another to finish writing the manifest
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
_NAME_LIMIT = 120  # characters of a trial folder name; the index at its front keeps shortened names apart
# The environment variable that tells a worker process which one it is: k for the k-th worker --workers starts,
# "join" for one that `--join` started on its own (study.py seeds its sampler from it).
WORKER_ENV = "MLPTRAIN_SWEEP_WORKER"


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
