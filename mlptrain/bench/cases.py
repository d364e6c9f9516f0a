"""What `mlptrain bench` measures: our layer against torch.nn.Linear, whole epochs, roofline, cost growth.

Each case builds its models and batches, times them with the harness and returns its numbers; nothing prints.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mlptrain.base.config import AugmentConfig, TrainConfig
from mlptrain.bench.harness import Plan, median_seconds, thread_counts
from mlptrain.core.augment import Augmenter
from mlptrain.core.data import IN_FEATURES, NUM_CLASSES, Split, normalize, write_idx
from mlptrain.core.engine import (
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
from mlptrain.core.nn import MLP, to_torch

CLASSES = NUM_CLASSES
LAYER_GOAL = 0.97  # torch.nn.Linear's step time over ours: ours is never meaningfully slower
ROOFLINE_GOAL, ROOFLINE_GOAL_BATCH = 0.7, 512  # fraction of the matmul peak, from this batch size up
EPOCH_GOALS = {"plain": 1.25, "tutorial": 7.0}  # a loop's epoch time over ours, at least
ROOFLINE_HIDDEN = (512, 256)
EPOCH_HIDDEN, EPOCH_BATCH, EPOCH_LR = (128, 64), 64, 0.01  # the tutorial's model, batch and plain SGD
EPOCH_SCALE_TO = 60_000  # epoch times are reported for MNIST's 60,000 training images
GROWTH_HIDDEN, GROWTH_WIDTH_BATCH = (128, 64), 256
WARMUP_BATCHES = 20  # an epoch loop's warm-up: this many batches, plus the short last batch the epoch ends on


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
            "unaugmented_vs_augmented": ratio("ours_augmented", "ours"),
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
    from mlptrain.core.synthetic import make_digits

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
        EpochLoop("ours_augmented", "the same, data.augment: affine+elastic (on the device)", all_threads, "fp32"),
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
    augment = None
    if loop.name == "ours_augmented":  # a blank pixel is the smallest normalised value
        augment = Augmenter(AugmentConfig(kind="affine+elastic"), 28, float(split.x.min()), seed=0)

    def epoch(on: Split) -> None:
        progress = EpochProgress.begin(next(epochs), on, seed=0, lr=cfg.lr)
        train_epoch(state, on, progress, cfg, Hooks(), augment=augment)

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
