"""`mlptrain bench`: how fast training runs on a device, measured in one process. Returns numbers, never prints.

Every timing is device-synchronised, follows warm-up, and is the median of several repeats that interleave the
things compared, so a burst of load from elsewhere on a shared machine lands on all of them alike.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlptrain.config import TrainConfig
from mlptrain.data import IN_FEATURES, NUM_CLASSES, Split, normalize, write_idx
from mlptrain.engine import (
    EpochProgress,
    FlatParameters,
    Hooks,
    TrainState,
    build_optimizer,
    grad_scaler,
    synchronize,
    train_epoch,
    train_step,
)
from mlptrain.nn import MLP, to_torch

CLASSES = NUM_CLASSES
LAYER_GOAL = 0.97  # torch.nn.Linear's step time over ours: ours is never meaningfully slower
ROOFLINE_GOAL, ROOFLINE_GOAL_BATCH = 0.5, 512  # fraction of the matmul peak, from this batch size up
ROOFLINE_HIDDEN = (512, 256)
EPOCH_HIDDEN, EPOCH_BATCH, EPOCH_LR = (128, 64), 64, 0.01  # the tutorial's model, batch and plain SGD
EPOCH_SCALE_TO = 60_000  # epoch times are reported for MNIST's 60,000 training images
GROWTH_HIDDEN, GROWTH_WIDTH_BATCH = (128, 64), 256
SETTLE_SECONDS = 0.1  # of work at a new thread count before timing resumes
WARMUP_BATCHES = 20  # an epoch loop's warm-up: this many batches, plus the short last batch the epoch ends on


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


# --- results ---------------------------------------------------------------------------------------------------


@dataclass
class LayerResult:
    """One training step (forward, backward, optimizer step) of the same MLP, weights and batches, five ways.

    step_seconds keys: ours_per_layer (MLP(fused=False): one mlptrain.nn.Linear per layer), ours_fused
    (MLP(fused=True) through autograd: one MLPFunction node), ours_by_hand (the fused MLP's gradients by hand,
    MLP.backprop: the step training takes by default), torch_same_optimizer (torch.nn.Linear layers with our
    flat, fused optimizer, so the ratio isolates the layer) and torch_plain_sgd (torch.nn.Linear with
    torch.optim.SGD over model.parameters(), what a plain PyTorch script does). Ratios are torch's time over
    ours: > 1, ours is faster.
    """

    sizes: list[int]
    batch_size: int
    threads: int
    step_seconds: dict[str, float]

    @property
    def ratios(self) -> dict[str, float]:
        s = self.step_seconds
        return {
            "per_layer": s["torch_same_optimizer"] / s["ours_per_layer"],
            "fused": s["torch_same_optimizer"] / s["ours_fused"],
            "by_hand": s["torch_same_optimizer"] / s["ours_by_hand"],
            "per_layer_vs_plain_sgd": s["torch_plain_sgd"] / s["ours_per_layer"],
            "fused_vs_plain_sgd": s["torch_plain_sgd"] / s["ours_fused"],
            "by_hand_vs_plain_sgd": s["torch_plain_sgd"] / s["ours_by_hand"],
        }

    def to_json(self) -> dict:
        return {**asdict(self), "ratios": self.ratios, "goal": LAYER_GOAL}


@dataclass
class EpochLoop:
    """One way of training one epoch; seconds are per 60,000 samples. Unavailable variants carry the reason."""

    name: str
    description: str
    threads: int
    precision: str
    seconds_per_epoch: float | None = None
    us_per_sample: float | None = None
    note: str = ""

    @property
    def available(self) -> bool:
        return self.seconds_per_epoch is not None

    def to_json(self) -> dict:
        return {**asdict(self), "available": self.available}


@dataclass
class EpochResult:
    sizes: list[int]
    batch_size: int
    samples: int  # measured per epoch; seconds_per_epoch is scaled from this to scaled_to
    scaled_to: int
    loops: list[EpochLoop]

    def loop(self, name: str) -> EpochLoop:
        return next(loop for loop in self.loops if loop.name == name)

    @property
    def speedups(self) -> dict[str, float | None]:
        """How many times faster the first is than the second (None where one was not measured)."""

        def ratio(slow: str, fast: str) -> float | None:
            a, b = self.loop(slow), self.loop(fast)
            return a.seconds_per_epoch / b.seconds_per_epoch if a.available and b.available else None

        return {
            "ours_vs_plain": ratio("plain", "ours"),
            "ours_vs_tutorial": ratio("tutorial", "ours"),
            "one_thread_vs_all": ratio("ours", "ours_1_thread"),
            "bf16_vs_fp32": ratio("ours", "ours_bf16"),
            "fp16_vs_fp32": ratio("ours", "ours_fp16"),
            "compiled_vs_eager": ratio("ours", "ours_compiled"),
        }

    def to_json(self) -> dict:
        return {
            "sizes": self.sizes,
            "batch_size": self.batch_size,
            "samples": self.samples,
            "scaled_to": self.scaled_to,
            "loops": [loop.to_json() for loop in self.loops],
            "speedups": self.speedups,
        }


@dataclass
class RooflineRow:
    precision: str
    batch_size: int
    step_seconds: float
    useful_flops: int
    flops_per_second: float
    fraction: float  # of the same precision's measured matmul peak


@dataclass
class RooflineResult:
    sizes: list[int]
    matmul_size: int  # the peak is an (n, n) @ (n, n) matmul
    peaks: dict[str, float]  # precision -> FLOP/s
    rows: list[RooflineRow]

    def to_json(self) -> dict:
        return {**asdict(self), "goal": ROOFLINE_GOAL, "goal_batch_size": ROOFLINE_GOAL_BATCH}


@dataclass
class GrowthRow:
    sizes: list[int]
    batch_size: int
    samples_per_second: float  # all threads
    samples_per_second_1_thread: float
    flops_per_second: float  # useful matmul FLOP/s at all threads


@dataclass
class GrowthResult:
    by_batch: list[GrowthRow]  # hidden GROWTH_HIDDEN, batch 64 ... 4096
    by_width: list[GrowthRow]  # hidden [w, w // 2] at batch GROWTH_WIDTH_BATCH

    def to_json(self) -> dict:
        return asdict(self)


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
            "layer": [case.to_json() for case in self.layer],
            "epoch": self.epoch.to_json() if self.epoch else None,
            "roofline": self.roofline.to_json() if self.roofline else None,
            "growth": self.growth.to_json() if self.growth else None,
        }


# --- the bench -------------------------------------------------------------------------------------------------


def run(device: torch.device, quick: bool = False, on_stage: Callable[[str], None] | None = None) -> BenchResult:
    """Run every section on `device` and return the numbers. Thread count and RNG state are restored after."""
    plan = QUICK if quick else FULL
    stage = on_stage or (lambda _: None)
    threads = torch.get_num_threads()
    result = BenchResult(
        device=str(device),
        device_name=device_name(device),
        torch_version=torch.__version__,
        threads=threads,
        quick=quick,
        plan=plan,
    )
    t0, busy0, own0 = time.perf_counter(), busy_cpu_seconds(), time.process_time()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for hidden, batch_size in plan.layer_cases:
                stage(f"layer: MLP {mlp_sizes(hidden)} at batch {batch_size}")
                result.layer += bench_layer(device, hidden, batch_size, plan)
            stage(f"epoch: {plan.epoch_samples:,} samples, ours / plain / tutorial")
            result.epoch = bench_epoch(device, plan, stage)
            stage("roofline")
            result.roofline = bench_roofline(device, plan)
            stage("cost growth")
            result.growth = bench_growth(device, plan)
    finally:
        torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - t0
    busy1 = busy_cpu_seconds()
    if busy0 is not None and busy1 is not None:
        others = (busy1 - busy0) - (time.process_time() - own0)
        result.other_cores = max(others, 0.0) / result.seconds
    return result


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
    # switches the count once; after each switch, SETTLE_SECONDS of untimed work. Without it the candidate
    # after a switch to more threads ran up to 2x slow on this project's VM.
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


# --- 1. layer --------------------------------------------------------------------------------------------------


def bench_layer(device: torch.device, hidden: Sequence[int], batch_size: int, plan: Plan) -> list[LayerResult]:
    """Our Linear (per layer, and the fused MLP) against torch.nn.Linear: same weights, same batches.

    Measured at all threads and at one, interleaved: on a shared machine two threads can spend a step waiting for
    each other, which swamps the layers' own differences; one thread shows those.
    """
    sizes = mlp_sizes(hidden)
    ours_fused, ours_by_hand = _seeded_mlp(sizes, device, fused=True), _seeded_mlp(sizes, device, fused=True)
    ours_per_layer = _seeded_mlp(sizes, device, fused=False)
    torch_flat, torch_plain = to_torch(ours_fused), to_torch(ours_fused)
    batches = random_batches(sizes[0], batch_size, device, count=4)
    _check_same_logits([ours_fused, ours_by_hand, ours_per_layer, torch_flat, torch_plain], batches[0][0])

    cfg = TrainConfig(lr=0.01, momentum=0.9)
    steps = {
        "ours_per_layer": _flat_step(ours_per_layer, cfg, batches),
        "ours_fused": _flat_step(ours_fused, cfg, batches, autograd=True),
        "ours_by_hand": _flat_step(ours_by_hand, cfg, batches),
        "torch_same_optimizer": _flat_step(torch_flat, cfg, batches),
        "torch_plain_sgd": plain_step(
            torch_plain, torch.optim.SGD(torch_plain.parameters(), lr=0.01, momentum=0.9), batches
        ),
    }
    counts = thread_counts()
    calls = {(name, n): step for n in counts for name, step in steps.items()}
    threads = {key: key[1] for key in calls}
    seconds = median_seconds(calls, device, plan.repeats, warmup=3, min_seconds=plan.min_seconds, threads=threads)
    return [LayerResult(sizes, batch_size, n, {name: seconds[name, n] for name in steps}) for n in counts]


def thread_counts() -> list[int]:
    """The thread count in force and, if that is more, one."""
    n = torch.get_num_threads()
    return [n, 1] if n > 1 else [n]


def _check_same_logits(models: list[nn.Module], x: torch.Tensor) -> None:
    """The comparison is only fair if every model computes the same function; a mismatch is a bug here."""
    with torch.no_grad():
        reference = models[0](x)
        for model in models[1:]:
            if not torch.allclose(model(x), reference, rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"bench: {type(model).__name__} does not reproduce our MLP's logits")


# --- 2. epoch --------------------------------------------------------------------------------------------------


def bench_epoch(device: torch.device, plan: Plan, stage: Callable[[str], None]) -> EpochResult:
    """One epoch of our loop, a plain PyTorch loop and the tutorial's loop: same model, samples and batch size."""
    from mlptrain.synthetic import make_digits

    n = plan.epoch_samples
    images, labels = make_digits(n, seed=1)  # (n, 28, 28) uint8, (n,) int64
    pixels = images.float().div(255)
    mean, std = pixels.mean().item(), pixels.std().item()
    split = Split(normalize(images.to(device), mean, std), labels.to(device))  # (n, 784) float32
    warm = n % EPOCH_BATCH + WARMUP_BATCHES * EPOCH_BATCH  # the epoch's batch shapes, the short last one too
    warm_split = Split(split.x[:warm], split.y[:warm])
    sizes = mlp_sizes(EPOCH_HIDDEN)
    initial = _seeded_mlp(sizes, device, fused=True)
    all_threads = torch.get_num_threads()

    loops = [
        EpochLoop("ours", "mlptrain's train_epoch: grads by hand, flat fused SGD, device batches", all_threads, "fp32"),
        EpochLoop("ours_1_thread", "the same, on one thread", 1, "fp32"),
        EpochLoop("ours_bf16", "the same, train.precision: bf16 (autocast)", all_threads, "bf16"),
        EpochLoop("ours_fp16", "the same, train.precision: fp16 (autocast, loss scaling)", all_threads, "fp16"),
        EpochLoop("ours_compiled", "the same, train.compile: true (torch.compile)", all_threads, "fp32"),
        EpochLoop(
            "plain", "plain PyTorch: preloaded tensors, randperm + slicing, torch.nn.Linear", all_threads, "fp32"
        ),
        EpochLoop("tutorial", "the tutorial: torchvision ToTensor through a DataLoader", all_threads, "fp32"),
    ]
    calls: dict[str, Callable[[], object]] = {}
    for loop in loops:
        if loop.name == "ours_compiled" and not plan.compile:
            loop.note = "skipped under --quick: compiling takes tens of seconds on a CPU"
            continue
        stage(f"epoch: warming up {loop.name}" + (" (compiling)" if loop.name == "ours_compiled" else ""))
        try:
            t0 = time.perf_counter()
            make = _tutorial_loop if loop.name == "tutorial" else _plain_loop if loop.name == "plain" else _our_loop
            run_epoch, warm_up = make(loop, initial, split, warm_split, images, labels, device)
            warm_up()
            synchronize(device)
            if loop.name == "ours_compiled":
                loop.note = f"compiled in {time.perf_counter() - t0:.0f} s (not counted)"
            calls[loop.name] = run_epoch
        except Exception as e:  # a precision or compiler this device lacks: say why and carry on
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            loop.note = f"unavailable: {type(e).__name__}: {reason}"
            if loop.name == "ours_compiled":
                torch._dynamo.reset()
    stage(f"epoch: {plan.epoch_repeats} timed epochs of each loop")
    threads = {loop.name: loop.threads for loop in loops}
    seconds = median_seconds(calls, device, plan.epoch_repeats, warmup=0, threads=threads)
    for loop in loops:
        if loop.name in seconds:
            loop.seconds_per_epoch = seconds[loop.name] * EPOCH_SCALE_TO / n
            loop.us_per_sample = seconds[loop.name] / n * 1e6
    if "ours_compiled" in calls:
        torch._dynamo.reset()
    return EpochResult(sizes=sizes, batch_size=EPOCH_BATCH, samples=n, scaled_to=EPOCH_SCALE_TO, loops=loops)


def _our_loop(loop: EpochLoop, initial: MLP, split: Split, warm_split: Split, images, labels, device):
    """engine.train_epoch as `mlptrain train` runs it, with the tutorial's optimizer settings."""
    model = copy.deepcopy(initial)
    cfg = TrainConfig(batch_size=EPOCH_BATCH, lr=EPOCH_LR, momentum=0.0, scheduler="none", precision=loop.precision)
    optimizer = build_optimizer([FlatParameters(model).param], cfg)
    scaler = grad_scaler(device, cfg.precision)
    train_model = torch.compile(model) if loop.name == "ours_compiled" else model
    epochs = itertools.count(1)

    state = TrainState(model, optimizer, scaler=scaler, train_model=train_model)

    def epoch(on: Split) -> None:
        progress = EpochProgress.begin(next(epochs), on, seed=0, lr=cfg.lr)
        train_epoch(state, on, progress, cfg, Hooks())

    return (lambda: epoch(split)), (lambda: epoch(warm_split))


def _plain_loop(loop: EpochLoop, initial: MLP, split: Split, warm_split: Split, images, labels, device):
    """What a PyTorch user writes once the data is preloaded: a randperm, index per batch, torch.nn.Linear."""
    model = to_torch(initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=EPOCH_LR)

    def epoch(on: Split) -> None:
        x, y = on.x, on.y
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        order = torch.randperm(len(on), device=device)
        for start in range(0, len(on), EPOCH_BATCH):
            idx = order[start : start + EPOCH_BATCH]
            xb, yb = x[idx], y[idx]  # (B, 784), (B,)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * yb.shape[0]  # no .item(): no host sync per batch
            correct += (logits.argmax(1) == yb).sum()

    return (lambda: epoch(split)), (lambda: epoch(warm_split))


def _tutorial_loop(loop: EpochLoop, initial: MLP, split: Split, warm_split: Split, images, labels, device):
    """The tutorial's loop as written: MNIST IDX files, ToTensor per sample, DataLoader(batch 64, shuffle)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory(prefix="mlptrain-bench-") as root:
        raw = Path(root) / "MNIST" / "raw"
        write_idx(raw / "train-images-idx3-ubyte", images)
        write_idx(raw / "train-labels-idx1-ubyte", labels)
        write_idx(raw / "t10k-images-idx3-ubyte", images[:10])  # torchvision wants all four files
        write_idx(raw / "t10k-labels-idx1-ubyte", labels[:10])
        trainset = datasets.MNIST(root, train=True, transform=transforms.ToTensor(), download=False)  # reads all
    trainloader = DataLoader(trainset, batch_size=64, shuffle=True)
    model = to_torch(initial)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=EPOCH_LR)

    def epoch(max_batches: int | None = None) -> float:
        running_loss = 0.0
        for i, (images, labels) in enumerate(trainloader):
            if i == max_batches:
                break
            images = images.view(images.shape[0], -1).to(device)  # (64, 1, 28, 28) -> (64, 784)
            labels = labels.to(device)
            optimizer.zero_grad()
            output = model(images)
            loss = criterion(output, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()  # the tutorial's per-batch host sync
        return running_loss

    return epoch, lambda: epoch(WARMUP_BATCHES)


# --- 3. roofline -----------------------------------------------------------------------------------------------


def bench_roofline(device: torch.device, plan: Plan) -> RooflineResult:
    """Useful matmul FLOP/s of our training step against the device's own large-matmul peak, per batch size."""
    sizes = mlp_sizes(ROOFLINE_HIDDEN)
    n = {"cuda": 8192, "mps": 4096}.get(device.type, 2048)
    precisions = ["fp32"]
    if (device.type == "cuda" and torch.cuda.is_bf16_supported()) or (device.type == "cpu" and plan.cpu_bf16_roofline):
        precisions.append("bf16")
    peaks: dict[str, float] = {}
    rows: list[RooflineRow] = []
    for precision in precisions:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        model = _seeded_mlp(sizes, device, fused=True)
        optimizer = build_optimizer([FlatParameters(model).param], TrainConfig(lr=0.01, momentum=0.9))
        calls: dict[str, Callable[[], object]] = {"peak": lambda a=a, b=b, c=c: torch.mm(a, b, out=c)}
        for batch_size in plan.roofline_batches:
            batches = random_batches(sizes[0], batch_size, device, count=2)
            calls[str(batch_size)] = steps(model, optimizer, batches, precision=precision)
        seconds = median_seconds(calls, device, plan.repeats, warmup=2, min_seconds=plan.min_seconds)
        peaks[precision] = 2 * n**3 / seconds["peak"]
        for batch_size in plan.roofline_batches:
            t = seconds[str(batch_size)]
            flops = useful_flops(sizes, batch_size)
            rows.append(RooflineRow(precision, batch_size, t, flops, flops / t, flops / t / peaks[precision]))
        del a, b, c
    return RooflineResult(sizes=sizes, matmul_size=n, peaks=peaks, rows=rows)


def useful_flops(sizes: Sequence[int], batch_size: int) -> int:
    """Matmul FLOPs of one training step: forward, weight gradients, and input gradients of every layer but the
    first (the data needs no gradient). Each (B, in) @ (in, out) product is 2·B·in·out."""
    products = [i * o for i, o in itertools.pairwise(sizes)]
    return 2 * batch_size * (2 * sum(products) + sum(products[1:]))


# --- 4. cost growth --------------------------------------------------------------------------------------------


def bench_growth(device: torch.device, plan: Plan) -> GrowthResult:
    """Samples/s of our training step against batch size and against width, at all threads and at one."""
    all_threads = torch.get_num_threads()
    cfg = TrainConfig(lr=0.01, momentum=0.9)

    def measure(cases: list[tuple[list[int], int]]) -> list[GrowthRow]:
        calls: dict[str, Callable[[], object]] = {}
        threads: dict[str, int] = {}
        for sizes, batch_size in cases:
            model = _seeded_mlp(sizes, device, fused=True)
            optimizer = build_optimizer([FlatParameters(model).param], cfg)
            step = steps(model, optimizer, random_batches(sizes[0], batch_size, device, count=2))
            for n in (all_threads, 1):
                key = f"{sizes}/{batch_size}/{n}"
                calls[key], threads[key] = step, n
        seconds = median_seconds(calls, device, plan.repeats, warmup=2, min_seconds=plan.min_seconds, threads=threads)
        return [
            GrowthRow(
                sizes=sizes,
                batch_size=batch_size,
                samples_per_second=batch_size / seconds[f"{sizes}/{batch_size}/{all_threads}"],
                samples_per_second_1_thread=batch_size / seconds[f"{sizes}/{batch_size}/1"],
                flops_per_second=useful_flops(sizes, batch_size) / seconds[f"{sizes}/{batch_size}/{all_threads}"],
            )
            for sizes, batch_size in cases
        ]

    by_batch = measure([(mlp_sizes(GROWTH_HIDDEN), b) for b in plan.growth_batches])
    by_width = measure([(mlp_sizes((w, w // 2)), GROWTH_WIDTH_BATCH) for w in plan.growth_widths])
    return GrowthResult(by_batch=by_batch, by_width=by_width)


# --- pieces ----------------------------------------------------------------------------------------------------


def mlp_sizes(hidden: Sequence[int]) -> list[int]:
    return [IN_FEATURES, *hidden, CLASSES]


def _seeded_mlp(sizes: Sequence[int], device: torch.device, fused: bool) -> MLP:
    torch.manual_seed(0)  # every model of the same sizes starts from the same weights
    return MLP(sizes, fused=fused).to(device)


def random_batches(in_features: int, batch_size: int, device: torch.device, count: int):
    """`count` fixed (x (B, in), y (B,)) batches; every model of a comparison cycles through the same ones."""
    g = torch.Generator().manual_seed(batch_size)
    return [
        (
            torch.randn(batch_size, in_features, generator=g).to(device),
            torch.randint(0, CLASSES, (batch_size,), generator=g).to(device),
        )
        for _ in range(count)
    ]


def steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches, precision: str = "fp32", autograd=False):
    """One training step per call, cycling through `batches`, as engine.train_step (the trainer's own) takes it."""
    cycle = itertools.cycle(batches)

    def call() -> None:
        x, y = next(cycle)
        train_step(model, optimizer, x, y, precision, autograd=autograd)

    return call


def plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches) -> Callable[[], None]:
    """One step per call of what a plain PyTorch script does: zero_grad (to None), forward, loss, backward, step."""
    cycle = itertools.cycle(batches)

    def call() -> None:
        x, y = next(cycle)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return call


def _flat_step(model: nn.Module, cfg: TrainConfig, batches, autograd: bool = False) -> Callable[[], None]:
    """A step the way the trainer takes it: the parameters flattened into one tensor, the fused optimizer."""
    return steps(model, build_optimizer([FlatParameters(model).param], cfg), batches, autograd=autograd)


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
