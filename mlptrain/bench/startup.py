"""What a user waits for: whole commands as processes, wall time and peak memory, against `import torch`.

`python -c "import torch"`, `mlptrain train` of the smoke config, `mlptrain eval` of its run and the commands that
must not load torch at all (runs, plot, config, --help) run in turn, round after round, so a burst of load from
elsewhere lands on all of them alike; each figure is the median of its rounds. A command's overhead is its wall
time less `import torch`'s and less the seconds it spent training and validating (what its --json reports).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

# configs/smoke.yaml, written out for a bench that runs from an installed package (tests/bench/test_bench_startup.py
# checks the two agree).
SMOKE_CONFIG = """\
name: smoke
seed: 0
device: cpu
data:
  dataset: synthetic
  synthetic_size: 6000
  val_size: 1000
model:
  hidden: [256]
train:
  epochs: 5
  batch_size: 128
  lr: 0.1
"""
TRAIN_GOAL_SECONDS = 1.5  # train's overhead over import torch, less its training and validation
EVAL_GOAL_SECONDS = 1.0  # eval's overhead over import torch
MEMORY_GOAL_MB = 150.0  # train's peak resident memory over import torch's
LIGHT = {"runs": ["runs", "{runs}"], "plot": ["plot", "{run}", "--out", "{png}"], "config": ["config", "{config}"]}
LIGHT["--help"] = ["--help"]
# Runs the command as its own child and reports its wall time, peak resident memory and exit code. The peak is
# only the command's own when the process that forks it is small: a child inherits its parent's high-water mark
# across fork and exec, so timed straight from the bench (or pytest) every command would "peak" at their size.
LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{time.perf_counter() - start} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""
WHICH_LOADS_TORCH = (
    "import sys\nfrom mlptrain.cli.main import _run\nsys.argv = ['mlptrain', *sys.argv[1:]]\ncode = _run()\n"
    "sys.stderr.write('TORCH_LOADED=%d\\n' % ('torch' in sys.modules))\nsys.exit(code)\n"
)


@dataclass
class CommandCost:
    """One command's rounds: wall seconds, peak resident MB, and seconds of training and validation (train)."""

    name: str
    seconds: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)
    work_seconds: list[float] = field(default_factory=list)
    loads_torch: bool | None = None  # checked for the commands that must not load it; None: not checked

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_peak_mb(self) -> float:
        return statistics.median(self.peak_mb)

    @property
    def median_work(self) -> float:
        return statistics.median(self.work_seconds) if self.work_seconds else 0.0


@dataclass
class StartupResult:
    rounds: int
    commands: dict[str, CommandCost]

    def overhead(self, name: str) -> float:
        """Wall seconds of `name` beyond import torch's and its own training and validation."""
        cost, torch_ = self.commands[name], self.commands["import torch"]
        return cost.median_seconds - torch_.median_seconds - cost.median_work

    def extra_memory(self, name: str) -> float:
        return self.commands[name].median_peak_mb - self.commands["import torch"].median_peak_mb

    def to_json(self) -> dict:
        return {"rounds": self.rounds, "commands": {k: asdict(v) for k, v in self.commands.items()}}


def bench_startup(rounds: int) -> StartupResult:
    """Time every command `rounds` times, in turn, in a temporary folder it removes after."""
    with tempfile.TemporaryDirectory(prefix="mlptrain-startup-") as tmp:
        folder = Path(tmp)
        config = folder / "smoke.yaml"
        config.write_text(SMOKE_CONFIG)
        places = {"runs": folder / "runs", "config": config, "png": folder / "curves.png"}
        places["run"] = places["runs"] / "smoke"
        commands = {name: CommandCost(name) for name in ("import torch", "train", "eval", *LIGHT)}
        for r in range(rounds):
            measure(commands["import torch"], ["-c", "import torch"], folder)
            train = ["-m", "mlptrain", "train", str(config), "--run-dir", str(places["run"]), "--json"]
            if r:
                train.append("--force")
            result = measure(commands["train"], train, folder)
            commands["train"].work_seconds.append(_work_seconds(result))
            measure(commands["eval"], ["-m", "mlptrain", "eval", str(places["run"] / "best.pt"), "--json"], folder)
            for name, argv in LIGHT.items():
                measure(commands[name], ["-m", "mlptrain", *[a.format(**places) for a in argv]], folder)
        for name, argv in LIGHT.items():
            commands[name].loads_torch = _loads_torch([a.format(**places) for a in argv], folder)
    return StartupResult(rounds=rounds, commands=commands)


def measure(cost: CommandCost, argv: list[str], cwd: Path) -> str:
    """Run `python ARGV` once, adding its wall seconds and peak memory to `cost`; returns its standard output."""
    env = {**os.environ, "CI": "true"}  # plain output, as when piped
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        launch = [sys.executable, "-c", LAUNCHER, report.name, sys.executable, *argv]
        done = subprocess.run(launch, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
        seconds, peak_kib, code = report.read().split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({code}): {done.stderr.strip()[-500:]}")
    cost.seconds.append(float(seconds))
    cost.peak_mb.append(float(peak_kib) / (2**20 if sys.platform == "darwin" else 2**10))  # bytes there, KiB here
    return done.stdout


def _work_seconds(train_json: str) -> float:
    epochs = json.loads(train_json)["epochs"]
    return sum(e["train_seconds"] + e["val_seconds"] for e in epochs)


def _loads_torch(argv: list[str], cwd: Path) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", WHICH_LOADS_TORCH, *argv], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    return "TORCH_LOADED=1" in out.stderr
