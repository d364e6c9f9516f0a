"""How the bench times things: the plans (how much work a run does), interleaved median timings, the machine.

Every timing is device-synchronised, follows warm-up, and is the median of several repeats that interleave the
things compared, so a burst of load from elsewhere on a shared machine lands on all of them alike.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from mlptrain.core.engine import synchronize

SETTLE_SECONDS = 0.1  # of work at a new thread count before timing resumes


# The bench's sections, in the order they run (`mlptrain bench --only` takes these names; threads is CPU-only).
SECTIONS = ("layer", "epoch", "roofline", "growth", "threads", "startup", "overhead")


@dataclass(frozen=True)
class Plan:
    """How much work a bench run does; QUICK and FULL below are what `--quick` and the default run."""

    repeats: int  # timed rounds per measurement; the median is reported
    min_seconds: float  # one timed round of training steps lasts at least this long
    epoch_samples: int  # samples in each measured epoch (times are scaled to 60,000)
    epoch_repeats: int
    layer_cases: tuple[tuple[tuple[int, ...], int], ...]  # (hidden sizes, batch size)
    roofline_batches: tuple[int, ...]
    growth_batches: tuple[int, ...]
    growth_widths: tuple[int, ...]  # hidden [w, w // 2]
    compile: bool  # torch.compile takes tens of seconds on a CPU, more than --quick can spend
    cpu_bf16_roofline: bool  # GPUs always get a bf16 roofline; CPUs only in a full run


FULL = Plan(
    repeats=11,
    min_seconds=0.1,
    epoch_samples=60_000,
    epoch_repeats=3,
    layer_cases=(((128, 64), 64), ((512, 256), 512)),
    roofline_batches=(64, 128, 256, 512, 1024, 2048, 4096),
    growth_batches=(64, 128, 256, 512, 1024, 2048, 4096),
    growth_widths=(128, 256, 512, 1024, 2048),
    compile=True,
    cpu_bf16_roofline=True,
)
QUICK = Plan(
    repeats=5,
    min_seconds=0.02,
    epoch_samples=3_000,
    epoch_repeats=3,
    layer_cases=(((128, 64), 64), ((512, 256), 512)),
    roofline_batches=(64, 512, 4096),
    growth_batches=(64, 256, 1024, 4096),
    growth_widths=(128, 512, 2048),
    compile=False,
    cpu_bf16_roofline=False,
)


def plan(quick: bool) -> Plan:
    return QUICK if quick else FULL


def median_seconds(
    calls: dict[Hashable, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    min_seconds: float = 0.0,
    threads: dict[Hashable, int] | None = None,
) -> dict[Hashable, float]:
    """Seconds per call of each of `calls`: the median of `repeats` timed rounds, after `warmup` untimed calls.

    The rounds interleave the candidates (a b c a b c ...). With min_seconds, a round makes as many calls as
    fill that time, so timer and sync overhead stay small against it. `threads` runs a candidate at its own
    torch thread count (set outside the timed region); the count in force before is restored.
    """
    threads = threads or {}
    before = torch.get_num_threads()
    # Candidates of one thread count run together, the groups in turn forwards and backwards (ABBA), so a round
    # switches the count once; after each switch, SETTLE_SECONDS of untimed work, without which the candidate
    # timed right after a switch to more threads runs slow.
    counts = list(dict.fromkeys(threads.get(name, before) for name in calls))
    groups = [[name for name in calls if threads.get(name, before) == n] for n in counts]

    def run_in_turn(round_: int):
        for group in groups if round_ % 2 == 0 else groups[::-1]:
            n = threads.get(group[0], before)
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)
                settle(SETTLE_SECONDS)
            yield from ((name, calls[name]) for name in group)

    try:
        for _ in range(warmup):
            for _name, fn in run_in_turn(0):
                fn()
        numbers = dict.fromkeys(calls, 1)
        if min_seconds > 0:
            for name, fn in run_in_turn(0):
                numbers[name] = max(1, math.ceil(min_seconds / max(_time(fn, 1, device), 1e-9)))
        samples: dict[Hashable, list[float]] = {name: [] for name in calls}
        for round_ in range(repeats):
            for name, fn in run_in_turn(round_):
                samples[name].append(_time(fn, numbers[name], device))
    finally:
        torch.set_num_threads(before)
    return {name: statistics.median(times) for name, times in samples.items()}


def settle(seconds: float) -> None:
    """Keep every thread busy for a while: after a thread-count change, the first steps otherwise run slow."""
    a = torch.ones(256, 256)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, a)


def _time(fn: Callable[[], object], number: int, device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) / number


def thread_counts() -> list[int]:
    """The thread count in force and, if that is more, one."""
    n = torch.get_num_threads()
    return [n, 1] if n > 1 else [n]


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (all cores, steal included); None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    busy = sum(ticks[0:3]) + sum(ticks[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        except OSError:
            model = ""
        return f"{model or 'CPU'}, {os.cpu_count()} cores"
    return device.type
