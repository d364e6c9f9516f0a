"""The bench's tables: built from results with every goal judged (bench/tables.py), rendered by report.py."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from mlptrain.bench.cases import (
    EPOCH_GOALS,
    LAYER_GOAL,
    ROOFLINE_GOAL_BATCH,
    EpochLoop,
    EpochResult,
    LayerResult,
    RooflineResult,
    RooflineRow,
)
from mlptrain.bench.tables import Document, Table, _meets, epoch_table, layer_table, roofline_table
from mlptrain.cli import report

ROOT = Path(__file__).resolve().parents[2]


def test_a_goal_is_judged_as_printed():
    assert _meets(0.97, 0.97) and _meets(0.9749, 0.97) and _meets(0.965001, 0.97)
    assert not _meets(0.9649, 0.97) and not _meets(0.96, 0.97)


def test_layer_ratios_printed_097_meet_the_goal_and_096_do_not():
    assert LAYER_GOAL == 0.97
    torch_s = 0.9749
    case = LayerResult(
        sizes=[784, 128, 64, 10],
        batch_size=64,
        threads=1,
        step_seconds={
            "ours_per_layer": 1.0,  # ratio 0.9749, printed 0.97
            "ours_fused": torch_s / 0.9649,  # printed 0.96
            "ours_by_hand": torch_s / 1.5,
            "torch_same_optimizer": torch_s,
            "torch_plain_sgd": 0.9,
        },
    )
    table = layer_table([case])
    assert [row[3] for row in table.rows] == ["per-layer", "fused", "by hand"]
    ratio = table.columns.index("ratio")
    assert [row[ratio] for row in table.rows] == [("0.97", True), ("0.96", False), ("1.50", True)]
    assert [row[-1] for row in table.rows] == [("0.90", False), ("0.89", False), ("1.38", True)]
    assert all(isinstance(cell, str) for row in table.rows for cell in row[:ratio])


def test_roofline_is_judged_only_from_the_goal_batch_up():
    rows = [RooflineRow("fp32", b, 0.001, 10**9, 10**12, 0.4) for b in (ROOFLINE_GOAL_BATCH // 2, ROOFLINE_GOAL_BATCH)]
    table = roofline_table(RooflineResult(sizes=[784, 512, 256, 10], matmul_size=2048, peaks={"fp32": 1e12}, rows=rows))
    assert [row[-1] for row in table.rows] == [("0.40", None), ("0.40", False)]


def test_epoch_goals_judge_the_plain_and_tutorial_loops_against_ours():
    assert EPOCH_GOALS == {"plain": 1.25, "tutorial": 7.0}
    loops = [
        EpochLoop("ours", "ours", 2, "fp32", 1.0, 16.7),
        EpochLoop("ours_1_thread", "one thread", 1, "fp32", 3.0, 50.0),
        EpochLoop("plain", "plain", 2, "fp32", 1.249, 20.8),
        EpochLoop("tutorial", "tutorial", 2, "fp32", 7.0, 117.0),
        *(EpochLoop(name, name, 2, "fp32") for name in ("ours_bf16", "ours_fp16", "ours_compiled", "ours_augmented")),
    ]
    table = epoch_table(
        EpochResult(sizes=[784, 128, 64, 10], batch_size=64, samples=60_000, scaled_to=60_000, loops=loops)
    )
    relative = table.columns.index("time ÷ ours")
    assert [row[relative] for row in table.rows] == ["1.00×", "3.00×", ("1.25×", True), ("7.00×", True), *"----"]
    loops[2].seconds_per_epoch, loops[3].seconds_per_epoch = 1.2, 6.9
    table = epoch_table(
        EpochResult(sizes=[784, 128, 64, 10], batch_size=64, samples=60_000, scaled_to=60_000, loops=loops)
    )
    assert [row[relative] for row in table.rows][2:4] == [("1.20×", False), ("6.90×", False)]


def document() -> Document:
    table = Table(
        title="Speed",
        columns=["model", "ratio", "fraction", "note"],
        rows=[["a-b", ("0.97", True), ("0.40", None), "fine"], ["c", ("0.96", False), "0.50", ""]],
        notes=["Goal ≥ 0.97."],
        left=frozenset({"model", "note"}),
    )
    return Document(title="t", command="mlptrain bench --quick", lines=["ran here"], tables=[table], figure="a plot")


def test_plain_text_marks_goals_with_ticks_and_crosses():
    out = io.StringIO()
    report.show_document(Console(file=out, force_terminal=False, width=200), document())
    assert out.getvalue() == (
        "ran here\n"
        "\n"
        "Speed\n"
        "  model  ratio   fraction  note\n"
        "  a-b    0.97 ✓  0.40      fine\n"
        "  c      0.96 ✗  0.50\n"
        "Goal ≥ 0.97.\n"
    )


def test_rich_colours_goals_green_and_red():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system="standard", highlight=False)
    report.show_document(console, document())
    text = out.getvalue()
    assert "\x1b[1;32m0.97 ✓\x1b[0m" in text and "\x1b[1;31m0.96 ✗\x1b[0m" in text
    assert "\x1b[1;32m0.40" not in text and "\x1b[1;31m0.40" not in text  # no goal, no colour
    assert "│ a-b   │" in text and "│     0.50 │" in text  # "model" is aligned left, "fraction" right


def test_markdown():
    assert report.markdown(document(), figure="bench.png") == (
        "# t\n"
        "\n"
        "`mlptrain bench --quick`\n"
        "\n"
        "ran here  \n"
        "\n"
        "## Speed\n"
        "\n"
        "| model | ratio | fraction | note |\n"
        "| --- | --- | --- | --- |\n"
        "| a-b | 0.97 ✓ | 0.40 | fine |\n"
        "| c | 0.96 ✗ | 0.50 |  |\n"
        "\n"
        "Goal ≥ 0.97.\n"
        "\n"
        "![a plot](bench.png)\n"
    )
    assert "![" not in report.markdown(document())


def test_report_imports_neither_torch_nor_the_bench():
    check = (
        "import sys, mlptrain.cli.report; "
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('mlptrain.bench')]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
