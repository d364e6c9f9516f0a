"""What `--resume` reads and refuses (the run's last.pt, its config with the one override it allows), the run
folder's lock for it, and the repair of a folder left between two of an epoch's writes by a crash."""

from __future__ import annotations

import contextlib
from pathlib import Path

from mlptrain.base.config import Config, load_config, parse_override, with_values
from mlptrain.base.errors import CheckpointError, ConfigError
from mlptrain.base.files import folder_lock
from mlptrain.base.metrics import History, write_metrics
from mlptrain.core.distributed import World
from mlptrain.run.checkpoint import checkpoint_epoch, copy_checkpoint, load_checkpoint
from mlptrain.run.runs import BEST_FILE, CONFIG_FILE, LAST_FILE, METRICS_FILE


def resume_lock(path: Path) -> contextlib.AbstractContextManager:
    """The run folder's lock, held by rank 0 from before its last.pt is read until the run ends."""
    if not World.from_env().is_main or not path.exists():
        return contextlib.nullcontext()  # a path that is not there: load_for_resume says so
    return folder_lock(path if path.is_dir() else path.parent)


def repair(run_dir: Path, history: History, ckpt: dict) -> list[str]:
    """Bring the run folder back in line with its last.pt after a crash between two of an epoch's writes
    (the trainer writes last.pt, then best.pt, then metrics.csv): metrics.csv holds exactly the checkpoint's epochs,
    and best.pt the best of them. Returns notes on what could not be repaired."""
    write_metrics(run_dir / METRICS_FILE, history.epochs)
    best = history.best_epoch
    if not best or checkpoint_epoch(run_dir / BEST_FILE) == best:
        return []
    if best == ckpt["epoch"] and ckpt["progress"] is None:  # last.pt is that epoch's checkpoint
        copy_checkpoint(run_dir / LAST_FILE, run_dir / BEST_FILE)
        return []
    return [f"{BEST_FILE} does not hold the best epoch ({best}) and cannot be rebuilt; a better epoch will rewrite it"]


def load_for_resume(path: Path, overrides: list[str] = ()) -> tuple[dict | None, Config, Path]:
    """(checkpoint, config with overrides, run folder) of the run to resume at `path`, every problem refused.

    A run folder with a config.yaml but no last.pt (a run killed before its first epoch was saved) has nothing to
    continue: its checkpoint is None, and resuming starts it again from its config.yaml.
    """
    path = Path(path)
    ckpt_path = path / LAST_FILE if path.is_dir() else path
    if path.is_file() and path.name != LAST_FILE:
        raise CheckpointError(_not_a_run_checkpoint(path))
    if path.is_dir() and not ckpt_path.exists():
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"{path} holds no {LAST_FILE} to resume from, nor a {CONFIG_FILE} to start again from; "
                f"start a run there with mlptrain train CONFIG --run-dir {path}"
            )
        ckpt, config = None, load_config(path / CONFIG_FILE)
    else:
        ckpt = load_checkpoint(ckpt_path)
        config = ckpt["config"]
    for item in overrides:
        key, value = parse_override(item)
        if key != "train.epochs":
            raise ConfigError(f"--set {item}: only train.epochs can change when resuming; {key} is fixed by the run")
        config = with_values(config, {key: value}, source=f"--set {item}")
    if ckpt is not None and config.train.epochs < ckpt["epoch"]:
        raise ConfigError(
            f"--set train.epochs={config.train.epochs}: the run has already finished {ckpt['epoch']} epochs"
        )
    return ckpt, config, ckpt_path.parent


def _not_a_run_checkpoint(path: Path) -> str:
    """Why --resume refuses a checkpoint that is not its run's last.pt (a best.pt, a copy): the run continues from
    its last.pt, and one from an earlier epoch would write over the epochs after it."""
    last, config = path.parent / LAST_FILE, path.parent / CONFIG_FILE
    if last.is_file():
        return (
            f"--resume {path}: its run continues from {last}, not from {path.name} (that would write over the "
            f"epochs after it); continue it with mlptrain train --resume {path.parent}"
        )
    start = f"mlptrain train {config} --run-dir NEW" if config.is_file() else "mlptrain train CONFIG"
    return (
        f"--resume {path}: no {LAST_FILE} beside it, so no run to continue (--resume takes a run folder or its "
        f"{LAST_FILE}); to train that config again, start a new run: {start}"
    )
