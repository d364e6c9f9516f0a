"""How many CPU threads torch uses for a run: `threads: N` as given, or `auto`, chosen by the work per step.

At small steps, several threads wait for each other at every one of a step's many small operations, and on a
machine whose cores are not all free that wait is long; so `auto` gives a small step one thread
(README, Performance, has the measurements and the command that repeats them).
"""

from __future__ import annotations

import itertools
import os

import torch

from mlptrain.config import Config
from mlptrain.data import IN_FEATURES, NUM_CLASSES
from mlptrain.distributed import SINGLE, World
from mlptrain.errors import ConfigError

SMALL_STEP_MACS = 32_000_000  # multiply-adds per training step (batch × weights) below which auto uses one thread
THREADS_PER_CORE = 4  # `threads: N` may share cores a little (to match another machine), never by thousands
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (physical cores), read before anything changes it


def configure_threads(config: Config, device: torch.device, world: World = SINGLE) -> int:
    """Set torch's CPU thread count from `threads` (auto: by the work per step) and return it.

    The processes of a distributed run on one machine share its cores: auto gives each an equal part.
    """
    cores = DEFAULT_THREADS if world.local_size == 1 else max(1, cpu_cores() // world.local_size)
    if config.threads != "auto":
        threads = config.threads
        limit = THREADS_PER_CORE * cpu_cores()
        if threads > limit:  # thousands of OpenMP threads crash the process outright (a segfault)
            raise ConfigError(
                f"threads: {threads} asked for, but this process may run on {cpu_cores()} cores; "
                f"give at most {limit} ({THREADS_PER_CORE} per core), or auto"
            )
    elif device.type == "cpu":
        sizes = [IN_FEATURES, *config.model.hidden, NUM_CLASSES]
        macs = config.train.batch_size // world.size * sum(a * b for a, b in itertools.pairwise(sizes))
        threads = 1 if macs < SMALL_STEP_MACS else cores
    else:
        threads = cores  # the host only feeds the GPU
    torch.set_num_threads(threads)
    return threads


def cpu_cores() -> int:
    """The cores this process may run on."""
    # Not torch.get_num_threads(): torchrun sets OMP_NUM_THREADS=1 in its workers, which that would report.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
