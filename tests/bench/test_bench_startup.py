"""The bench's start-up section: its smoke config is configs/smoke.yaml, its arithmetic, its goals as judged in the
table, and one real round of it (every command run, peak memory read per process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlptrain.bench import startup
from mlptrain.bench.startup import CommandCost, StartupResult, bench_startup
from mlptrain.bench.tables import startup_table

ROOT = Path(__file__).resolve().parents[2]


def test_the_bench_smoke_config_is_configs_smoke_yaml():
    assert yaml.safe_load(startup.SMOKE_CONFIG) == yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())


def _result(train_seconds: float, train_mb: float, eval_seconds: float, runs_loads_torch: bool) -> StartupResult:
    commands = {
        "import torch": CommandCost("import torch", [2.0, 1.0, 9.0], [600.0, 600.0, 600.0]),
        "train": CommandCost("train", [train_seconds], [train_mb], [0.5], loads_torch=None),
        "eval": CommandCost("eval", [eval_seconds], [580.0], loads_torch=True),
        "runs": CommandCost("runs", [0.3], [40.0], loads_torch=runs_loads_torch),
    }
    return StartupResult(rounds=3, commands=commands)


def test_overhead_is_wall_time_less_import_torch_less_training():
    result = _result(train_seconds=3.5, train_mb=760.0, eval_seconds=2.5, runs_loads_torch=False)
    assert result.overhead("train") == pytest.approx(3.5 - 2.0 - 0.5)  # import torch's median, not its mean
    assert result.overhead("eval") == pytest.approx(0.5)
    assert result.extra_memory("train") == pytest.approx(160.0)


@pytest.mark.parametrize(
    ("train_seconds", "train_mb", "eval_seconds", "runs_torch", "marks"),
    [
        (3.9, 740.0, 2.9, False, {"train": True, "memory": True, "eval": True, "runs": True}),
        (4.1, 760.0, 3.1, True, {"train": False, "memory": False, "eval": False, "runs": False}),
    ],
)
def test_the_table_judges_each_goal(train_seconds, train_mb, eval_seconds, runs_torch, marks):
    table = startup_table(_result(train_seconds, train_mb, eval_seconds, runs_torch))
    rows = {row[0]: row for row in table.rows}
    assert rows["train"][3][1] is marks["train"] and rows["train"][4][1] is marks["memory"]
    assert rows["eval"][3][1] is marks["eval"]
    assert rows["runs"][5] == (("no", True) if not runs_torch else ("yes", False))


def test_one_real_round():
    result = bench_startup(1)
    assert list(result.commands) == ["import torch", "train", "eval", "runs", "plot", "config", "--help"]
    for cost in result.commands.values():
        assert len(cost.seconds) == len(cost.peak_mb) == 1 and cost.seconds[0] > 0
    memory = {name: cost.peak_mb[0] for name, cost in result.commands.items()}
    assert memory["--help"] < memory["import torch"] / 4 < memory["train"]  # per process, not the bench's own
    assert 0 < result.commands["train"].median_work < result.commands["train"].median_seconds
    assert all(result.commands[name].loads_torch is False for name in ("runs", "plot", "config", "--help"))
