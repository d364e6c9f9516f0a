"""A BenchResult as tables of text, every goal judged here: `report` renders them and decides nothing.

A cell is its text, or (text, ok) where ok says whether a goal was met (None: no goal applies to that cell).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlptrain.bench.cases import EPOCH_GOALS, LAYER_GOAL, ROOFLINE_GOAL, ROOFLINE_GOAL_BATCH
from mlptrain.bench.harness import SECTIONS
from mlptrain.bench.overhead import EPOCH_GOAL, EPOCHS, RUN_SETTINGS, TRIAL_GOAL_SECONDS, TRIALS
from mlptrain.bench.startup import EVAL_GOAL_SECONDS, LIGHT, MEMORY_GOAL_MB, TRAIN_GOAL_SECONDS
from mlptrain.bench.threads import THREADS_GOAL

if TYPE_CHECKING:
    from mlptrain.bench.cases import EpochResult, GrowthResult, GrowthRow, LayerResult, RooflineResult
    from mlptrain.bench.overhead import OverheadResult, Pair
    from mlptrain.bench.startup import StartupResult
    from mlptrain.bench.suite import BenchResult
    from mlptrain.bench.threads import ThreadsResult

Cell = str | tuple[str, bool | None]


@dataclass
class Table:
    """One section of the bench report, ready for rich, plain text or markdown."""

    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    left: frozenset[str] = frozenset()  # columns of words, aligned left where alignment shows; numbers go right


@dataclass
class Document:
    """What the bench shows: header lines, then tables. The markdown file adds the title, the command, a figure."""

    title: str
    command: str
    lines: list[str]
    tables: list[Table]
    figure: str  # what the figure beside the markdown file shows: its alt text


def bench_document(result: BenchResult) -> Document:
    command = f"mlptrain bench --device {result.device}" + (" --quick" if result.quick else "")
    if len(result.sections) < len(SECTIONS):
        command += "".join(f" --only {name}" for name in result.sections)
    return Document(
        title="mlptrain bench",
        command=command,
        lines=bench_header(result),
        tables=bench_tables(result),
        figure="samples/s against batch size and width",
    )


def bench_header(result: BenchResult) -> list[str]:
    """The lines above the tables: what ran where, and whether the machine was busy."""
    how = "--quick" if result.quick else "full run"
    lines = [
        f"mlptrain bench on {result.device} ({result.device_name}), torch {result.torch_version}, "
        f"{_threads(result.threads)}; {how}, median of {result.plan.repeats} repeats "
        f"({result.plan.epoch_repeats} for epochs); took {result.seconds:.0f} s",
    ]
    if result.other_cores is not None:
        cores = os.cpu_count() or 1
        busy = result.other_cores >= 0.25
        lines.append(
            f"other processes used {result.other_cores:.2f} of the {cores} cores on average meanwhile"
            + ("; runs at all threads suffer most from such competition" if busy else "")
        )
    return lines


def bench_tables(result: BenchResult) -> list[Table]:
    """A table per section that ran: layer, epoch, roofline, cost growth by batch size and by width, threads,
    start-up."""
    tables = [layer_table(result.layer)] if result.layer else []
    if result.epoch is not None:
        tables.append(epoch_table(result.epoch))
    if result.roofline is not None:
        tables.append(roofline_table(result.roofline))
    if result.growth is not None:
        tables += growth_tables(result.growth, result.threads)
    if result.auto_threads is not None:
        tables.append(threads_table(result.auto_threads))
    if result.startup is not None:
        tables.append(startup_table(result.startup))
    if result.overhead is not None:
        tables.append(overhead_table(result.overhead))
    return tables


def _meets(value: float, goal: float) -> bool:
    """Judged as shown, to two decimals: a ratio printed as 0.97 meets a goal of 0.97."""
    return round(value, 2) >= goal


def _goal(value: float, goal: float | None) -> Cell:
    """The value as shown, with whether it meets `goal` (None: no goal applies here)."""
    return f"{value:.2f}", None if goal is None else _meets(value, goal)


def layer_table(layer: list[LayerResult]) -> Table:
    rows: list[list[Cell]] = []
    for case in layer:
        s, r = case.step_seconds, case.ratios
        for path, key, ratio, plain in (
            ("per-layer", "ours_per_layer", r["per_layer"], r["per_layer_vs_plain_sgd"]),
            ("fused", "ours_fused", r["fused"], r["fused_vs_plain_sgd"]),
            ("by hand", "ours_by_hand", r["by_hand"], r["by_hand_vs_plain_sgd"]),
        ):
            rows.append(
                [
                    _arch(case.sizes),
                    str(case.batch_size),
                    str(case.threads),
                    path,
                    _ms(s[key]),
                    _ms(s["torch_same_optimizer"]),
                    _goal(ratio, LAYER_GOAL),
                    _ms(s["torch_plain_sgd"]),
                    _goal(plain, LAYER_GOAL),
                ]
            )
    return Table(
        title="Layer: one training step (forward, backward, SGD step), mlptrain.nn.Linear vs torch.nn.Linear",
        columns=[
            "model",
            "batch",
            "threads",
            "ours",
            "ours ms",
            "torch ms, same opt.",
            "ratio",
            "torch ms, optim.SGD",
            "ratio",
        ],
        rows=rows,
        notes=[
            "Same weights and batches. ratio = torch's time / ours (above 1: ours is faster); "
            f"goal ≥ {LAYER_GOAL}. 'same opt.': torch.nn.Linear layers with our flat parameters and fused "
            "SGD, so the ratio isolates the layer; 'optim.SGD': torch.optim.SGD over model.parameters(), as a "
            "plain script steps. per-layer: MLP(fused=False), one mlptrain.nn.Linear autograd node per layer; "
            "fused: MLP(fused=True) through autograd, one node for the whole network; by hand: the same "
            "maths without autograd (MLP.backprop), the step mlptrain train takes.",
        ],
        left=frozenset({"model", "ours"}),
    )


def epoch_table(epoch: EpochResult) -> Table:
    ours = epoch.loop("ours")
    rows: list[list[Cell]] = []
    for loop in epoch.loops:
        relative = loop.seconds_per_epoch / ours.seconds_per_epoch if loop.available and ours.available else None
        rows.append(
            [
                loop.name,
                str(loop.threads),
                loop.precision,
                "-" if loop.seconds_per_epoch is None else f"{loop.seconds_per_epoch:.2f}",
                "-" if loop.us_per_sample is None else f"{loop.us_per_sample:.1f}",
                "-" if relative is None else _times(relative, EPOCH_GOALS.get(loop.name)),
                loop.description + (f"; {loop.note}" if loop.note else ""),
            ]
        )
    sp = epoch.speedups
    said = [
        f"{phrase} {sp[key]:.2f}×"
        for key, phrase in (
            ("ours_vs_tutorial", "ours over the tutorial's loop"),
            ("ours_vs_plain", "ours over the plain loop"),
            ("one_thread_vs_all", f"1 thread over {ours.threads}"),
            ("bf16_vs_fp32", "bf16 over fp32"),
            ("fp16_vs_fp32", "fp16 over fp32"),
            ("compiled_vs_eager", "compiled over eager"),
            ("unaugmented_vs_augmented", "without data.augment over with it"),
        )
        if sp[key] is not None
    ]
    scaled = f", scaled from {epoch.samples:,}" if epoch.samples != epoch.scaled_to else ""
    return Table(
        title=f"Epoch: MLP {_arch(epoch.sizes)}, batch {epoch.batch_size}, SGD lr 0.01, "
        f"seconds per {epoch.scaled_to:,} samples{scaled}",
        columns=["loop", "threads", "precision", "s/epoch", "µs/sample", "time ÷ ours", "what"],
        rows=rows,
        notes=(["Speed-ups (above 1: the first is faster): " + "; ".join(said) + "."] if said else [])
        + ["Goals: " + ", ".join(f"the {name} loop ≥ {goal}× ours" for name, goal in EPOCH_GOALS.items()) + "."],
        left=frozenset({"loop", "precision", "what"}),
    )


def roofline_table(roof: RooflineResult) -> Table:
    """Fractions of the peak are judged from ROOFLINE_GOAL_BATCH up; below it no goal applies."""
    rows: list[list[Cell]] = [
        [
            row.precision,
            str(row.batch_size),
            _ms(row.step_seconds),
            f"{row.flops_per_second / 1e9:.1f}",
            _goal(row.fraction, ROOFLINE_GOAL if row.batch_size >= ROOFLINE_GOAL_BATCH else None),
        ]
        for row in roof.rows
    ]
    peaks = ", ".join(f"{p} {flops / 1e9:.0f} GFLOP/s" for p, flops in roof.peaks.items())
    return Table(
        title=f"Roofline: our training step of MLP {_arch(roof.sizes)} against the device's matmul peak",
        columns=["precision", "batch", "step ms", "useful GFLOP/s", "fraction of peak"],
        rows=rows,
        notes=[
            f"Peak: a {roof.matmul_size}×{roof.matmul_size} matmul, {peaks}. Useful FLOPs: the forward, "
            "weight-gradient and input-gradient matmuls (none for the first layer's input). "
            f"Goal ≥ {ROOFLINE_GOAL} at batch ≥ {ROOFLINE_GOAL_BATCH}.",
        ],
        left=frozenset({"precision"}),
    )


def growth_tables(growth: GrowthResult, threads: int) -> list[Table]:
    """Two tables, against batch size and against width; `threads` is the count the all-threads column ran at."""
    columns = ["model", f"samples/s ({_threads(threads)})", "samples/s (1 thread)", "GFLOP/s"]
    by_batch = Table(
        title="Cost growth with batch size: samples/s of our training step",
        columns=["batch", *columns],
        rows=[[str(row.batch_size), *_growth_cells(row)] for row in growth.by_batch],
        left=frozenset({"model"}),
    )
    by_width = Table(
        title="Cost growth with width: samples/s of our training step, hidden [w, w/2]",
        columns=["width", "batch", *columns],
        rows=[[str(row.sizes[1]), str(row.batch_size), *_growth_cells(row)] for row in growth.by_width],
        notes=[
            "GFLOP/s: useful matmul FLOPs at all threads. On a shared machine one thread can beat several at small "
            "sizes: several threads wait for each other at every operation."
        ],
        left=frozenset({"model"}),
    )
    return [by_batch, by_width]


def _growth_cells(row: GrowthRow) -> list[Cell]:
    return [
        _arch(row.sizes),
        f"{row.samples_per_second:,.0f}",
        f"{row.samples_per_second_1_thread:,.0f}",
        f"{row.flops_per_second / 1e9:.1f}",
    ]


def startup_table(startup: StartupResult) -> Table:
    """Whole commands: wall time and peak memory against import torch's, and the goals on each."""
    goals = {"train": TRAIN_GOAL_SECONDS, "eval": EVAL_GOAL_SECONDS}
    rows: list[list[Cell]] = []
    for name, cost in startup.commands.items():
        over: Cell = "" if name == "import torch" or cost.loads_torch is False else f"{startup.overhead(name):+.2f}"
        if name in goals:
            over = over, startup.overhead(name) <= goals[name]
        memory: Cell = f"{cost.median_peak_mb:,.0f}"
        if name == "train":
            extra = startup.extra_memory(name)
            memory = f"{cost.median_peak_mb:,.0f} ({extra:+,.0f})", extra <= MEMORY_GOAL_MB
        loads: Cell = {None: "", True: "yes", False: "no"}[cost.loads_torch]
        if name in LIGHT:  # must not load torch
            loads = ("no", True) if cost.loads_torch is False else ("yes", False)
        work = f"{cost.median_work:.2f}" if cost.work_seconds else ""
        rows.append([name, f"{cost.median_seconds:.2f}", work, over, memory, loads])
    return Table(
        title="Start-up: whole commands, against python -c 'import torch'",
        columns=["command", "wall s", "train+val s", "overhead s", "peak MB", "loads torch"],
        rows=rows,
        notes=[
            f"Median of {startup.rounds} round(s), the commands in turn each round. train: configs/smoke.yaml "
            "(--json); eval: its best.pt; runs, plot and config: that run and config. Overhead: wall time less "
            "import torch's and less the training and validation seconds the command reports. Goals: train "
            f"within {TRAIN_GOAL_SECONDS} s and {MEMORY_GOAL_MB:.0f} MB of import torch, eval within "
            f"{EVAL_GOAL_SECONDS} s; runs, plot, config and --help never load torch.",
        ],
        left=frozenset({"command", "loads torch"}),
    )


def overhead_table(result: OverheadResult) -> Table:
    """A run's per-epoch overhead over its mean epoch, and a sweep's per-trial overhead, against their goals."""
    runs, sweeps, quick = result.epochs, result.trials, result.quick

    def judged(text: str, met: bool) -> Cell:  # --quick measures too little to judge a goal by: no verdict
        return text if quick else (text, met)

    epoch: list[Cell] = ["epochs of mnist-best", *_pairs(runs), f"{runs.overhead:.3f}"]
    epoch += [judged(f"{result.epoch_ratio:.3f}", result.epoch_ratio <= EPOCH_GOAL), f"≤ {EPOCH_GOAL} of an epoch"]
    trial: list[Cell] = ["1-epoch smoke trials"]
    if sweeps is None:
        trial += ["skipped: needs optuna (pip install 'mlptrain[sweep]')", "", "", "", "", ""]
    else:
        trial += [*_pairs(sweeps), judged(f"{sweeps.overhead:.3f}", sweeps.overhead <= TRIAL_GOAL_SECONDS)]
        trial.append(f"{sweeps.overhead / sweeps.mean_work:.2f}")
    trial.append(f"≤ {TRIAL_GOAL_SECONDS} s a trial")
    settings = " ".join(f"--set {s}" for s in RUN_SETTINGS[quick])
    return Table(
        title="Overhead: beyond training and validation, per epoch of a run and per trial of a sweep",
        columns=["what", "units", "wall s", "train+val s", "peak MB", "overhead s per unit", "÷ mean unit", "goal"],
        rows=[epoch, trial],
        notes=[
            "Each from a short and a long command in one bench run: (Δ wall − Δ training and validation) ÷ Δ units, "
            f"so each command's start-up cancels. epochs: mlptrain train mnist-best {settings} --set "
            f"train.epochs=N, N = {' and '.join(map(str, EPOCHS[quick]))}; trials: mlptrain sweep of N random "
            f"1-epoch configs/smoke.yaml trials, one worker, N = {' and '.join(map(str, TRIALS[quick]))}."
            + (" --quick: too few units and digits to judge the goals by." if quick else ""),
        ],
        left=frozenset({"what", "goal"}),
    )


def _pairs(pair: Pair) -> list[str]:
    """The short and the long command's units, wall and work seconds and peak memory, each as 'short / long'."""
    cells = [f"{pair.units[0]} / {pair.units[1]}"] + [f"{a:.2f} / {b:.2f}" for a, b in (pair.wall, pair.work)]
    return [*cells, f"{pair.peak_mb[0]:,.0f} / {pair.peak_mb[1]:,.0f}"]


def _times(value: float, goal: float | None) -> Cell:
    """A ratio shown as 1.27×, judged against `goal` (None: no goal applies) as shown."""
    return f"{value:.2f}×" if goal is None else (f"{value:.2f}×", _meets(value, goal))


def threads_table(result: ThreadsResult) -> Table:
    """auto against the faster of one thread and all cores, per model, as the machine was and beside a busy process."""
    rows: list[list[Cell]] = [
        [
            row.model,
            _arch(row.sizes),
            str(row.batch_size),
            "1 busy process" if row.competing else "none added",
            f"{row.samples_per_second_1_thread:,.0f}",
            f"{row.samples_per_second_all:,.0f}",
            f"{row.samples_per_second_auto:,.0f}",
            f"{row.auto_threads} ({row.auto_why})",
            _goal(row.ratio, THREADS_GOAL),
        ]
        for row in result.rows
    ]
    return Table(
        title=f"Threads: samples/s of our training step at 1 thread, at all {result.cores} cores and at threads: auto",
        columns=[
            "config",
            "model",
            "batch",
            "competing",
            "1 thread",
            _threads(result.cores),
            "auto",
            "auto chose",
            "auto ÷ best",
        ],
        rows=rows,
        notes=[
            "competing: 'none added' is the machine as it was; '1 busy process' is a `while True: pass` process the "
            "bench started beside it. auto chose as a run does, from the load it measured while this process "
            "trained at one thread; then the three columns were timed interleaved. auto ÷ best: auto over the faster "
            f"of the two fixed counts, goal ≥ {THREADS_GOAL}.",
        ],
        left=frozenset({"config", "model", "competing", "auto chose"}),
    )


def _threads(n: int) -> str:
    return "1 thread" if n == 1 else f"{n} threads"


def _arch(sizes: list[int]) -> str:
    return "-".join(map(str, sizes))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.2f}"
