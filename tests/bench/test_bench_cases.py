"""`mlptrain bench` runs and returns well-formed numbers. Never how fast: timings do not belong in tests.

One CLI run of `bench --quick --json --out` (the --quick code path, with fewer repeats and samples patched in
so it takes seconds) feeds most tests; the rest check the pieces the numbers are made of.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from mlptrain.bench import harness, suite
from mlptrain.bench.cases import useful_flops
from mlptrain.bench.tables import bench_document
from mlptrain.cli import report
from mlptrain.cli.main import app

runner = CliRunner()
EPOCH_LOOPS = {
    "ours",
    "ours_1_thread",
    "ours_bf16",
    "ours_fp16",
    "ours_compiled",
    "ours_augmented",
    "plain",
    "tutorial",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """(CLI result, BenchResult, --out path) of one `bench --quick --json --out` with the work cut down."""
    out = tmp_path_factory.mktemp("bench") / "reports" / "bench.md"  # its folder does not exist yet
    captured = {}
    real_run = suite.run

    def run(*args, **kwargs):
        captured["result"] = real_run(*args, **kwargs)
        return captured["result"]

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        # The same sizes as --quick (the tests check them), a fraction of its repeats and samples.
        mp.setattr(
            harness,
            "QUICK",
            dataclasses.replace(harness.QUICK, repeats=1, min_seconds=0.001, epoch_samples=300, epoch_repeats=1),
        )
        mp.setattr("mlptrain.bench.cases.WARMUP_BATCHES", 1)
        mp.setattr("mlptrain.bench.threads.MIN_SECONDS", 0.001)
        mp.setattr(
            "mlptrain.bench.threads.THREAD_MODELS", (("smoke", (16,), 8), ("mnist", (32, 16), 8), ("wide", (64,), 8))
        )
        mp.setattr(suite, "run", run)
        result = runner.invoke(app, ["bench", "--quick", "--json", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert torch.get_num_threads() == threads  # the 1-thread measurements restore the count
    return result, captured["result"], out


MODELS = ("smoke", "mnist", "wide")


def numbers(value, path="$"):
    """Every (path, number) in a JSON value; booleans are not numbers."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def test_json_is_one_object_of_finite_positive_numbers(quick_run):
    result, _, _ = quick_run
    out = json.loads(result.stdout)  # the whole of stdout parses: nothing else was printed
    assert out["quick"] is True and out["device"] == "cpu"
    found = dict(numbers(out))
    assert len(found) > 100
    for path, value in found.items():
        assert math.isfinite(value), path
        if path != "$.other_cores":  # 0 on an otherwise idle machine
            assert value > 0, path
    assert "bench: layer" in result.stderr  # progress goes to stderr, never into the JSON


def test_json_has_every_section_with_the_promised_sizes(quick_run):
    out = json.loads(quick_run[0].stdout)
    plan = harness.QUICK
    threads = [out["threads"], 1] if out["threads"] > 1 else [out["threads"]]

    cases = [(case["sizes"][1:-1], case["batch_size"], case["threads"]) for case in out["layer"]]
    assert cases == [(list(h), b, n) for h, b in plan.layer_cases for n in threads]
    for case in out["layer"]:
        assert set(case["step_seconds"]) == {
            "ours_per_layer",
            "ours_fused",
            "ours_by_hand",
            "torch_same_optimizer",
            "torch_plain_sgd",
        }
        assert set(case["ratios"]) == {
            "per_layer",
            "fused",
            "by_hand",
            "per_layer_vs_plain_sgd",
            "fused_vs_plain_sgd",
            "by_hand_vs_plain_sgd",
        }
        assert case["goal"] == 0.97

    epoch = out["epoch"]
    assert epoch["sizes"] == [784, 128, 64, 10] and epoch["batch_size"] == 64 and epoch["scaled_to"] == 60_000
    loops = {loop["name"]: loop for loop in epoch["loops"]}
    assert set(loops) == EPOCH_LOOPS
    for name in ("ours", "ours_1_thread", "plain", "tutorial", "ours_bf16", "ours_augmented"):  # bf16: any CPU
        assert loops[name]["available"], loops[name]
    assert not loops["ours_compiled"]["available"] and "--quick" in loops["ours_compiled"]["note"]
    assert loops["ours_1_thread"]["threads"] == 1
    for key in ("ours_vs_plain", "ours_vs_tutorial", "one_thread_vs_all", "bf16_vs_fp32", "unaugmented_vs_augmented"):
        assert epoch["speedups"][key] > 0
    assert epoch["speedups"]["compiled_vs_eager"] is None

    rows = out["auto_threads"]["rows"]  # the threads section's own sizes: tests/bench/test_bench_threads.py
    assert [(row["model"], row["competing"]) for row in rows] == [(m, c) for c in (False, True) for m in MODELS]

    roof = out["roofline"]
    assert roof["sizes"] == [784, 512, 256, 10] and roof["goal"] == 0.7
    assert [row["batch_size"] for row in roof["rows"]] == list(plan.roofline_batches)
    assert {row["precision"] for row in roof["rows"]} == set(roof["peaks"]) == {"fp32"}
    for row in roof["rows"]:
        # The numbers hang together; their size is a measurement (a busy machine can slow the peak's timing more
        # than the step's, so no bound on the fraction belongs in a test).
        assert row["useful_flops"] == useful_flops(roof["sizes"], row["batch_size"])
        assert row["flops_per_second"] == pytest.approx(row["useful_flops"] / row["step_seconds"])
        assert row["fraction"] == pytest.approx(row["flops_per_second"] / roof["peaks"][row["precision"]])
        assert row["fraction"] > 0

    growth = out["growth"]
    assert [row["batch_size"] for row in growth["by_batch"]] == list(plan.growth_batches)
    assert all(row["sizes"] == [784, 128, 64, 10] for row in growth["by_batch"])
    assert [row["sizes"][1:3] for row in growth["by_width"]] == [[w, w // 2] for w in plan.growth_widths]
    assert all(row["batch_size"] == 256 for row in growth["by_width"])


def test_out_writes_markdown_and_plot(quick_run):
    _, _, out = quick_run
    text = out.read_text()
    for heading in (
        "## Layer",
        "## Epoch",
        "## Roofline",
        "## Cost growth with batch size",
        "## Cost growth with width",
    ):
        assert heading in text
    assert "`mlptrain bench --device cpu --quick`" in text
    assert "![samples/s against batch size and width](bench.png)" in text
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_overhead_section_runs_a_short_and_a_long_train_and_sweep(quick_run):
    from mlptrain.bench.overhead import EPOCHS, TRIALS

    out = json.loads(quick_run[0].stdout)["overhead"]
    assert out["epochs"]["units"] == list(EPOCHS[True]) and out["trials"]["units"] == list(TRIALS[True])
    for pair in (out["epochs"], out["trials"]):
        assert pair["wall"][1] > pair["work"][1] > 0 and min(pair["peak_mb"]) > 0
    assert "## Overhead" in quick_run[2].read_text()


def test_tables_plain_and_rich(quick_run):
    _, result, _ = quick_run
    plain = io.StringIO()
    report.show_document(Console(file=plain, force_terminal=False, width=200), bench_document(result))
    text = plain.getvalue()
    assert "\x1b[" not in text
    for title in ("Layer:", "Epoch:", "Roofline:", "Cost growth with batch size", "hidden [w, w/2]"):
        assert title in text
    assert "tutorial" in text and "skipped under --quick" in text

    rich = io.StringIO()
    report.show_document(
        Console(file=rich, force_terminal=True, width=200, color_system="standard"), bench_document(result)
    )
    assert "\x1b[1;32m" in rich.getvalue() or "\x1b[1;31m" in rich.getvalue()  # ratios coloured by their goal


def test_cuda_without_a_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = runner.invoke(app, ["bench", "--device", "cuda", "--quick"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlptrain: error: ") and "cuda" in lines[0]


def test_out_must_name_a_markdown_file(tmp_path):
    result = runner.invoke(app, ["bench", "--quick", "--out", str(tmp_path / "report.txt")])
    assert result.exit_code == 2
    assert "--out" in result.stderr and ".md" in result.stderr
    assert "bench:" not in result.stderr  # refused before measuring anything


def test_only_runs_the_sections_named_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(
        harness,
        "QUICK",
        dataclasses.replace(harness.QUICK, repeats=1, min_seconds=0.001, epoch_samples=300, epoch_repeats=1),
    )
    out = tmp_path / "bench.md"
    args = ["bench", "--quick", "--json", "--device", "cpu", "--only", "roofline", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    numbers_ = json.loads(result.stdout)
    assert numbers_["roofline"] is not None and numbers_["sections"] == ["roofline"]
    assert numbers_["layer"] == [] and all(numbers_[k] is None for k in ("epoch", "growth", "auto_threads", "startup"))
    report = out.read_text()
    assert "--only roofline" in report and "Roofline" in report
    assert "Epoch" not in report and "Layer" not in report  # no empty tables for the sections not run
    assert not out.with_suffix(".png").exists()  # the plot is the growth section's


def test_only_an_unknown_section_is_refused_before_measuring():
    result = runner.invoke(app, ["bench", "--quick", "--only", "epochs"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--only epochs" in lines[0] and "epoch, roofline" in lines[0]


def test_useful_flops_counts_forward_weight_and_input_gradients():
    # forward 2·(784·512 + 512·256 + 256·10), the same for weight gradients, input gradients without layer 1
    per_sample = 2 * 535_040 + 2 * 535_040 + 2 * 133_632
    assert useful_flops([784, 512, 256, 10], 1) == per_sample
    assert useful_flops([784, 512, 256, 10], 512) == 512 * per_sample
