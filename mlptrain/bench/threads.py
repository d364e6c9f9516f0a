"""The bench's threads section: samples/s of our training step at one thread, at all cores and at `threads: auto`,
for three models, on the machine as it is and beside a busy process that the bench starts and always stops.

auto decides as a run does (threads.configure_threads, from the load it measured while the bench trained at one
thread); its column is then timed at its choice, interleaved with the two fixed counts.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mlptrain.base.config import Config, TrainConfig
from mlptrain.bench.cases import mlp_sizes, random_batches, steps
from mlptrain.bench.harness import QUICK, Plan, median_seconds
from mlptrain.core import threads
from mlptrain.core.engine import FlatParameters, build_optimizer
from mlptrain.core.nn import MLP

THREADS_GOAL = 0.8  # auto's samples/s over the faster of one thread and all cores, at least
# configs/smoke.yaml's model, configs/mnist.yaml's, and a wide one: (name, hidden, batch size)
THREAD_MODELS = (("smoke", (256,), 128), ("mnist", (1024, 512), 128), ("wide", (2048, 2048), 512))
# The competing process: spins until killed, or until the bench (argv[1], its parent) is gone, so it never outlives it
BUSY = "import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent:\n    pass\n"
BUSY_START_SECONDS = 0.3  # for the busy process to start spinning before anything is measured
QUICK_REPEATS = 3  # --quick: the wide model's steps are long, and CI runs it (5 repeats took 20 s here, 3 take 14)
MIN_SECONDS = 0.2  # a timed round at least: at the plan's 0.02 s, scheduler slices under load swamped the smoke model
LOOK_SECONDS = 0.2  # of steps at one thread, over which auto measures the load before it chooses


@dataclass
class ThreadsRow:
    """One model in one condition: samples/s at one thread, at all cores and at auto's choice."""

    model: str
    sizes: list[int]
    batch_size: int
    competing: bool  # beside the bench's own busy process
    samples_per_second_1_thread: float
    samples_per_second_all: float
    samples_per_second_auto: float
    auto_threads: int
    auto_why: str  # as the run header says it: `2 cores, 1 busy`

    @property
    def ratio(self) -> float:
        """auto over the faster of the two fixed counts: the goal is THREADS_GOAL or more."""
        return self.samples_per_second_auto / max(self.samples_per_second_1_thread, self.samples_per_second_all)

    def to_json(self) -> dict:
        return {**self.__dict__, "ratio": self.ratio}


@dataclass
class ThreadsResult:
    cores: int  # "all cores": the count auto takes when no other process is busy
    rows: list[ThreadsRow]

    def to_json(self) -> dict:
        return {"cores": self.cores, "goal": THREADS_GOAL, "rows": [row.to_json() for row in self.rows]}


def bench_threads(plan: Plan) -> ThreadsResult:
    """Every model as the machine is, then every model beside one busy process; the thread count is restored."""
    cores = min(threads.DEFAULT_THREADS, threads.cpu_cores())
    rows = []
    for competing in (False, True):
        with busy_process() if competing else contextlib.nullcontext():
            rows += [
                _measure(name, hidden, batch_size, competing, cores, plan) for name, hidden, batch_size in THREAD_MODELS
            ]
    return ThreadsResult(cores=cores, rows=rows)


@contextlib.contextmanager
def busy_process() -> Iterator[subprocess.Popen]:
    """One process spinning on this process's cores for the block; killed and waited for however the block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", BUSY, str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(BUSY_START_SECONDS)
        yield child
    finally:
        child.kill()
        child.wait()


def _measure(
    name: str, hidden: tuple[int, ...], batch_size: int, competing: bool, cores: int, plan: Plan
) -> ThreadsRow:
    device = torch.device("cpu")
    sizes = mlp_sizes(hidden)
    torch.manual_seed(0)
    model = MLP(sizes, fused=True)
    optimizer = build_optimizer([FlatParameters(model).param], TrainConfig(lr=0.01, momentum=0.9))
    step = steps(model, optimizer, random_batches(sizes[0], batch_size, device, count=2))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        load = threads.CoreLoad()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < LOOK_SECONDS:  # a run's start-up, as auto first sees it: this process busy
            step()
        config = Config.from_dict(
            {"device": "cpu", "model": {"hidden": list(hidden)}, "train": {"batch_size": batch_size}}
        )
        choice = threads.configure_threads(config, device, load=load)
    finally:
        torch.set_num_threads(before)
    counts = {"1": 1, "all": cores, "auto": choice.threads}
    calls = dict.fromkeys(counts, step)
    repeats = QUICK_REPEATS if plan == QUICK else plan.repeats
    seconds = median_seconds(
        calls, device, repeats, warmup=1, min_seconds=max(plan.min_seconds, MIN_SECONDS), threads=counts
    )
    return ThreadsRow(
        model=name,
        sizes=sizes,
        batch_size=batch_size,
        competing=competing,
        samples_per_second_1_thread=batch_size / seconds["1"],
        samples_per_second_all=batch_size / seconds["all"],
        samples_per_second_auto=batch_size / seconds["auto"],
        auto_threads=choice.threads,
        auto_why=choice.why,
    )
