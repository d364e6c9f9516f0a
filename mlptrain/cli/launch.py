"""`mlptrain train --nproc N`: the same command in N processes on this machine, through torchrun
(torch.distributed.run), once this process has refused what every worker would refuse."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from mlptrain.base.errors import ConfigError, RunFailed

if TYPE_CHECKING:
    from mlptrain.base.config import Config


def launch(argv: list[str], nproc: int) -> int:
    """Run `python -m mlptrain ARGV` in `nproc` processes on this machine through torch.distributed.run.

    Returns the exit code to leave with: 0; 128+signal when this process was stopped by one (torchrun passes it
    to the workers, which save and stop); else the first failed worker's own code (rank 0's one-line error has
    been printed by it). Raises RunFailed for a worker killed by a signal, which could say nothing itself.
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # Each worker sets its own thread count (threads.configure_threads); this only keeps torchrun from warning.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "mlptrain", *argv])
    logging.disable(logging.ERROR)  # torchrun's own log lines; the workers speak for themselves
    try:
        run(args)
        return 0
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        # A worker's own exit code first: once one fails, torchrun SIGTERMs the rest, which may still be exiting.
        rank, failure = min(e.failures.items(), key=lambda item: (item[1].exitcode < 0, item[0]))
        if failure.exitcode < 0:
            name = signal.Signals(-failure.exitcode).name
            raise RunFailed(f"worker rank {rank} was killed by {name}") from None
        return failure.exitcode
    finally:
        logging.disable(logging.NOTSET)


def launch_train(
    nproc: int,
    cfg: Config | None,
    config: Path | None,
    resume: Path | None,
    overrides: list[str],
    run_dir: Path | None,
    flags: list[str],
) -> int:
    """`mlptrain train ...` in `nproc` processes through torchrun, once the config passed the checks a worker would
    make (so bad input is refused here, before any worker starts); returns the exit code to leave with."""
    from mlptrain.core.device import resolve_device
    from mlptrain.core.distributed import World, check_world
    from mlptrain.run import resuming

    if World.from_env().distributed:
        raise ConfigError("--nproc: this process is already one of torchrun's; give torchrun the count")
    checked = cfg if cfg is not None else resuming.load_for_resume(resume, overrides)[1]
    check_world(checked, resolve_device(checked.device), nproc, nproc)
    argv = [str(config)] if config is not None else ["--resume", str(resume)]
    argv += [f"--set={item}" for item in overrides]
    argv += ["--run-dir", str(run_dir)] if run_dir is not None else []
    return launch(["train", *argv, *flags], nproc)
