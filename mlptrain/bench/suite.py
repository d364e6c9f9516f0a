"""The whole bench: every case in turn on one device, under one plan, and the BenchResult that holds them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field

import torch

from mlptrain.bench.cases import (
    EpochResult,
    GrowthResult,
    LayerResult,
    RooflineResult,
    bench_epoch,
    bench_growth,
    bench_layer,
    bench_roofline,
    mlp_sizes,
)
from mlptrain.bench.harness import SECTIONS, Plan, busy_cpu_seconds, device_name, plan
from mlptrain.bench.overhead import OverheadResult, bench_overhead
from mlptrain.bench.startup import StartupResult, bench_startup
from mlptrain.bench.threads import ThreadsResult, bench_threads

STARTUP_ROUNDS = {False: 5, True: 1}  # rounds of the start-up section, full and --quick


@dataclass
class BenchResult:
    device: str
    device_name: str
    torch_version: str
    threads: int
    quick: bool
    plan: Plan
    layer: list[LayerResult] = field(default_factory=list)
    epoch: EpochResult | None = None
    roofline: RooflineResult | None = None
    growth: GrowthResult | None = None
    sections: tuple[str, ...] = SECTIONS  # those run, in SECTIONS' order
    startup: StartupResult | None = None  # whole commands as processes, against import torch
    auto_threads: ThreadsResult | None = None  # CPU only
    overhead: OverheadResult | None = None  # a run's per-epoch and a sweep's per-trial overhead, as commands
    seconds: float = 0.0  # the whole bench, wall clock
    # How many cores' worth of CPU other processes used, on average, while the bench ran (the machine's busy time
    # from /proc/stat, steal included, minus this process's); None off Linux. On a shared machine this is what
    # makes timings at all threads slow and noisy. (torch.compile's worker processes count as others.)
    other_cores: float | None = None

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "device_name": self.device_name,
            "torch_version": self.torch_version,
            "threads": self.threads,
            "quick": self.quick,
            "seconds": self.seconds,
            "cpu_count": os.cpu_count(),
            "other_cores": self.other_cores,
            "plan": asdict(self.plan),
            "sections": list(self.sections),
            "layer": [case.to_json() for case in self.layer],
            "epoch": self.epoch.to_json() if self.epoch else None,
            "roofline": self.roofline.to_json() if self.roofline else None,
            "growth": self.growth.to_json() if self.growth else None,
            "startup": self.startup.to_json() if self.startup else None,
            "auto_threads": self.auto_threads.to_json() if self.auto_threads else None,
            "overhead": self.overhead.to_json() if self.overhead else None,
        }


def run(
    device: torch.device,
    quick: bool = False,
    on_stage: Callable[[str], None] | None = None,
    sections: Collection[str] = SECTIONS,
) -> BenchResult:
    """Run `sections` (all by default, in SECTIONS' order) on `device` and return the numbers. Thread count and RNG
    state are restored after."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown bench sections {sorted(unknown)}; the sections are {', '.join(SECTIONS)}")
    work = plan(quick)
    stage = on_stage or (lambda _: None)
    threads = torch.get_num_threads()
    result = BenchResult(
        device=str(device),
        device_name=device_name(device),
        torch_version=torch.__version__,
        threads=threads,
        quick=quick,
        plan=work,
        sections=tuple(name for name in SECTIONS if name in sections),
    )
    t0, busy0, own0 = time.perf_counter(), busy_cpu_seconds(), _own_cpu_seconds()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for hidden, batch_size in work.layer_cases if "layer" in sections else []:
                stage(f"layer: MLP {mlp_sizes(hidden)} at batch {batch_size}")
                result.layer += bench_layer(device, hidden, batch_size, work)
            if "epoch" in sections:
                stage(f"epoch: {work.epoch_samples:,} samples, ours / plain / tutorial")
                result.epoch = bench_epoch(device, work, stage)
            if "roofline" in sections:
                stage("roofline")
                result.roofline = bench_roofline(device, work)
            if "growth" in sections:
                stage("cost growth")
                result.growth = bench_growth(device, work)
            if "threads" in sections and device.type == "cpu":
                stage("threads: 1, all cores and auto, as the machine is and beside a busy process")
                result.auto_threads = bench_threads(work)
    finally:
        torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - t0
    busy1 = busy_cpu_seconds()
    if busy0 is not None and busy1 is not None:
        others = (busy1 - busy0) - (_own_cpu_seconds() - own0)
        result.other_cores = max(others, 0.0) / result.seconds
    if "startup" in sections:  # last, and outside the other-cores count: its commands are other processes, by design
        stage("start-up: whole commands against import torch")
        result.startup = bench_startup(STARTUP_ROUNDS[quick])
        result.seconds = time.perf_counter() - t0
    if "overhead" in sections:  # commands too, like start-up
        stage("overhead: a run's per epoch and a sweep's per trial, beyond their training and validation")
        result.overhead = bench_overhead(quick)
        result.seconds = time.perf_counter() - t0
    return result


def _own_cpu_seconds() -> float:
    """This process's CPU time and its finished children's: the threads section's busy process is the bench's own."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
