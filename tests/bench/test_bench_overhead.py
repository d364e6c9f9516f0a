"""The bench's overhead section: per-epoch and per-trial overhead from a short and a long command, and the goals.
(Its commands run in test_bench_cases.py's one --quick run; here, the arithmetic and the table.)"""

from __future__ import annotations

import pytest

from mlptrain.bench.harness import SECTIONS
from mlptrain.bench.overhead import EPOCH_GOAL, TRIAL_GOAL_SECONDS, OverheadResult, Pair
from mlptrain.bench.tables import overhead_table

ISSUE_27 = Pair(units=(2, 12), wall=(3.12, 9.24), work=(1.01, 6.06), peak_mb=(700.0, 710.0))  # its numbers


def test_overhead_is_the_extra_wall_less_the_extra_work_per_extra_unit():
    assert ISSUE_27.overhead == pytest.approx(0.1071, abs=1e-4)
    assert ISSUE_27.mean_work == pytest.approx(0.505)
    trials = Pair(units=(2, 8), wall=(2.0, 2.6), work=(0.1, 0.4), peak_mb=(600.0, 600.0))
    result = OverheadResult(epochs=ISSUE_27, trials=trials)
    assert result.epoch_ratio == pytest.approx(0.1071 / 0.505, abs=1e-3)
    assert result.trials.overhead == pytest.approx(0.05)
    assert result.to_json()["epochs"] == {
        "units": (2, 12), "wall": (3.12, 9.24), "work": (1.01, 6.06), "peak_mb": (700.0, 710.0)
    }  # fmt: skip


def test_the_table_judges_each_figure_against_its_goal():
    slow = OverheadResult(ISSUE_27, Pair((2, 8), (2.0, 5.0), (0.1, 0.4), (600.0, 600.0)))
    rows = overhead_table(slow).rows
    assert rows[0][6] == ("0.212", False) and str(EPOCH_GOAL) in rows[0][7]
    assert rows[1][5] == ("0.450", False) and str(TRIAL_GOAL_SECONDS) in rows[1][7]
    fine = OverheadResult(
        Pair((2, 12), (3.0, 8.5), (1.0, 6.4), (700.0, 700.0)), Pair((2, 8), (2.0, 2.6), (0.1, 0.4), (600.0, 600.0))
    )
    rows = overhead_table(fine).rows
    assert rows[0][6][1] is True and rows[1][5][1] is True
    assert "overhead" in SECTIONS


def test_without_optuna_the_sweep_row_says_why_it_is_empty():
    rows = overhead_table(OverheadResult(ISSUE_27, None)).rows
    assert "mlptrain[sweep]" in rows[1][1] and len(rows[1]) == len(rows[0])
    assert OverheadResult(ISSUE_27, None).to_json()["trials"] is None


def test_quick_figures_get_no_verdict():
    """--quick runs 1 against 2 units on few digits: too little to judge a goal by, so no ✓ or ✗ (it showed ✓ on
    a negative overhead)."""
    quick = OverheadResult(ISSUE_27, Pair((1, 2), (2.46, 2.51), (0.11, 0.22), (690.0, 690.0)), quick=True)
    rows = overhead_table(quick).rows
    assert isinstance(rows[0][6], str) and isinstance(rows[1][5], str)
