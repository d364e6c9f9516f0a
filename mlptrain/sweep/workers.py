"""--workers N: N - 1 more worker processes on this machine beside this one (each `mlptrain sweep --join`), the
CPU cores split between them as `threads: auto` splits them for --nproc; a signal to this one reaches them all."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlptrain.run.interrupt import StopRequest

MAX_WORKERS = 64
DEADLINE_ENV = "MLPTRAIN_SWEEP_DEADLINE"  # --timeout's deadline (time.time()), handed to the workers started here


def check_count(workers: int) -> None:
    """Refuse --workers outside [1, MAX_WORKERS]: at once, before the sweep's folder holds anything."""
    from mlptrain.base.errors import ConfigError

    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers {workers}: must be in [1, {MAX_WORKERS}]")


def capped(workers: int, trials: int) -> tuple[int, str | None]:
    """How many workers to start for --workers `workers` on a sweep of `trials` trials: at most one per trial and
    one per core here (more would only wait, or share a core's time); with a note when that is fewer."""
    cores = len(_cores())
    count = max(1, min(workers, trials, cores))
    if count == workers:
        return count, None
    limit = f"{trials} trial{'s' * (trials != 1)}" if count == trials else f"{cores} core{'s' * (cores != 1)} here"
    return count, f"--workers {workers}: starting {count}, one per {'trial' if count == trials else 'core'} ({limit})"


def _cores() -> list[int]:
    """The cores this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def inherited_deadline() -> float | None:
    """The deadline of the `mlptrain sweep --timeout` that started this worker (spread); None if none."""
    try:
        return float(os.environ[DEADLINE_ENV])
    except (KeyError, ValueError):
        return None


@contextlib.contextmanager
def spread(
    folder: Path, workers: int, stop: StopRequest | None, deadline: float | None = None
) -> Iterator[StopRequest]:
    """Start the other workers (each with `deadline`, if any), run the block (this process's own work), then wait
    for them."""
    from mlptrain.run.interrupt import StopRequest

    stop = stop or StopRequest()
    if workers == 1:
        yield stop
        return
    cores = _split(workers)
    _pin(cores[0])
    children = [_start(folder, part, k, deadline) for k, part in enumerate(cores[1:], 1)]
    try:
        yield stop
    except BaseException:
        # Ctrl-C reached them from the terminal (another SIGINT would be a second Ctrl-C: leave at once, unsaved);
        # a SIGTERM, or an error, reached this one only: stop them as SIGTERM does, at a batch boundary.
        if stop.signum != signal.SIGINT:
            for child in children:
                if child.poll() is None:
                    with contextlib.suppress(OSError):
                        child.send_signal(signal.SIGTERM)
        raise
    finally:
        for child in children:
            child.wait()


def _split(workers: int) -> list[list[int]]:
    """Each worker's cores: an equal share of this process's (a core may go to several when workers > cores)."""
    mine = _cores()
    share = max(1, len(mine) // workers)
    return [[mine[(i * share + j) % len(mine)] for j in range(share)] for i in range(workers)]


def _pin(cores: list[int]) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(len(cores))


def _start(folder: Path, cores: list[int], k: int, deadline: float | None) -> subprocess.Popen:
    from mlptrain.sweep.folder import WORKER_ENV

    env = {**os.environ, "OMP_NUM_THREADS": str(len(cores)), WORKER_ENV: str(k)}
    env.pop(DEADLINE_ENV, None)
    if deadline is not None:
        env[DEADLINE_ENV] = repr(deadline)
    pin = (lambda: os.sched_setaffinity(0, cores)) if hasattr(os, "sched_setaffinity") else None
    return subprocess.Popen(
        [sys.executable, "-m", "mlptrain", "sweep", "--join", str(folder), "--quiet"],
        stdout=subprocess.DEVNULL,
        env=env,
        preexec_fn=pin,
    )
