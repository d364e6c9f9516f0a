"""How many CPU threads torch uses for a run: `threads: N` as given, or `auto`: this process's cores less those that
other processes are keeping busy now, measured from /proc/stat and measured again after every epoch.

Several threads wait for each other at every one of a step's operations, so a thread whose core another process
holds stalls the whole step (beside one busy process, 2 threads trained 1.4-20× slower than 1 here), while
on free cores more threads are faster at every size measured (README, Performance, has the figures and the
`mlptrain bench` section that repeats them). The results are bitwise independent of the count: MKL's strict
mode (mlptrain/__init__.py), small layers at one thread (core/nn.py), the data's statistics counted exactly (data.py).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch

from mlptrain.base.config import Config
from mlptrain.base.errors import ConfigError

THREADS_PER_CORE = 4  # `threads: N` may share cores a little (to match another machine), never by thousands
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (physical cores), read before anything changes it
MIN_WINDOW = 0.1  # seconds over which other processes' use of the cores is averaged, at least


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count set, and why: the run header shows str(choice), e.g. `threads 1 (2 cores, 1 busy)`."""

    threads: int
    why: str

    def __str__(self) -> str:
        return f"threads {self.threads} ({self.why})"


class CoreLoad:
    """How many of this process's cores other processes kept busy since the last look (or since this was made).

    Reads the per-core busy time of /proc/stat for the cores this process may run on, less this process's own CPU
    time; `others()` is None where there is no /proc/stat (then auto takes all cores).
    """

    def __init__(self):
        self._last = self._reading()

    def others(self) -> float | None:
        """Cores' worth of other processes' time since the last look, averaged over at least MIN_WINDOW seconds."""
        if self._last is None:
            return None
        if self.seconds() < MIN_WINDOW:
            time.sleep(MIN_WINDOW - self.seconds())
        now = self._reading()
        if now is None:
            return None
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)

    def seconds(self) -> float:
        """Since the last look."""
        return time.monotonic() - self._last[0] if self._last is not None else math.inf

    def _reading(self) -> tuple[float, float, float] | None:
        """(monotonic seconds, busy seconds of this process's cores since boot, this process's CPU seconds)."""
        if not hasattr(os, "sched_getaffinity"):
            return None
        wanted = {f"cpu{n}" for n in os.sched_getaffinity(0)}  # read each time: sweep workers are pinned late
        busy = 0
        try:
            with open("/proc/stat") as f:
                for line in f:
                    name, *ticks = line.split()[:9]  # user nice system idle iowait irq softirq steal
                    if name in wanted:
                        busy += sum(int(v) for v in ticks[0:3]) + sum(int(v) for v in ticks[5:8])
        except (OSError, ValueError):
            return None
        own = os.times()  # this process's threads, and children it has waited for
        own_seconds = own.user + own.system + own.children_user + own.children_system
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own_seconds


LOAD = CoreLoad()  # made at import: a run's first look covers its own start-up (reading data, building the model)


def configure_threads(
    config: Config, device: torch.device, local_size: int = 1, load: CoreLoad | None = None
) -> ThreadChoice:
    """Set torch's CPU thread count from `threads` and return it with the reason.

    auto on a CPU: the cores that other processes leave free (`load`, since it was made or last looked at). The
    processes of a distributed run on one machine (`local_size` of them) share its cores instead: each gets an
    equal part.
    """
    if config.threads != "auto":
        limit = THREADS_PER_CORE * cpu_cores()
        if config.threads > limit:  # thousands of OpenMP threads crash the process outright (a segfault)
            raise ConfigError(
                f"threads: {config.threads} asked for, but this process may run on {cpu_cores()} cores; "
                f"give at most {limit} ({THREADS_PER_CORE} per core), or auto"
            )
        choice = ThreadChoice(config.threads, "as set")
    elif local_size > 1:
        share = max(1, cpu_cores() // local_size)
        choice = ThreadChoice(share, f"{cpu_cores()} cores shared by {local_size} processes")
    elif device.type != "cpu":
        choice = ThreadChoice(DEFAULT_THREADS, "the host only feeds the GPU")
    else:
        choice = choose(min(DEFAULT_THREADS, cpu_cores()), (load or LOAD).others())
    torch.set_num_threads(choice.threads)
    return choice


def adapts(config: Config, device: torch.device, local_size: int = 1) -> bool:
    """Whether the run measures the load again after each epoch (`recheck`): auto, on a CPU, one process here."""
    return config.threads == "auto" and device.type == "cpu" and local_size == 1


def recheck(current: ThreadChoice, load: CoreLoad | None = None) -> ThreadChoice:
    """auto's count again, from the load since the last look (an epoch): set and returned. After less than
    MIN_WINDOW the current count stays (the window grows into the next epoch): a short epoch never waits."""
    load = load or LOAD
    if load.seconds() < MIN_WINDOW:
        return current
    choice = choose(min(DEFAULT_THREADS, cpu_cores()), load.others())
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice


def choose(cores: int, others: float | None) -> ThreadChoice:
    """auto's rule: one thread per core that other processes (`others` cores' worth) leave free, at least one."""
    if others is None:
        return ThreadChoice(cores, f"{_cores(cores)}, load unknown")
    busy = min(cores, math.floor(others + 0.5))  # a core half used by others stalls our threads as often as not
    return ThreadChoice(max(1, cores - busy), f"{_cores(cores)}, {busy} busy")


def cpu_cores() -> int:
    """The cores this process may run on."""
    # Not torch.get_num_threads(): torchrun sets OMP_NUM_THREADS=1 in its workers, which that would report.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cores(n: int) -> str:
    return "1 core" if n == 1 else f"{n} cores"
