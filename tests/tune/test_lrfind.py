"""The learning-rate range test: a suggestion inside its range, a plot, no run folder."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from mlptrain.base.config import Config
from mlptrain.cli.main import app
from mlptrain.tune.lrfind import lr_range_test, suggest

SMALL = {
    "device": "cpu",
    "data": {"dataset": "synthetic", "synthetic_size": 1200, "val_size": 200},
    "model": {"hidden": [32]},
    "train": {"batch_size": 32},
}


def test_range_test_suggests_a_rate_inside_its_range():
    test = lr_range_test(Config.from_dict(SMALL), min_lr=1e-4, max_lr=10.0, steps=120)
    assert 0 < len(test.lrs) <= 120 and test.lrs[0] == 1e-4
    assert all(b > a for a, b in zip(test.lrs, test.lrs[1:], strict=False))
    assert 1e-4 <= test.steepest <= 10.0 and 1e-5 <= test.valley <= 1.0
    assert min(test.losses) < test.losses[0] and min(test.losses) < test.losses[-1]  # falls, then rises again
    assert all(math.isfinite(loss) for loss in test.losses)


def test_range_test_stops_when_the_loss_explodes():
    test = lr_range_test(Config.from_dict(SMALL), min_lr=1e-3, max_lr=1e4, steps=120)
    assert test.stopped is not None and "exploded" in test.stopped and len(test.lrs) < 120


def test_suggest_finds_the_steepest_descent_and_the_minimum():
    lrs = [10 ** (-4 + i / 10) for i in range(50)]
    losses = [2.0 - math.tanh(i - 25) for i in range(40)] + [1.0 + 0.1 * i for i in range(10)]
    steepest, valley = suggest(lrs, losses)
    assert steepest == lrs[25]
    assert valley == lrs[losses.index(min(losses[10:45]))] / 10


def test_lr_find_draws_its_plot_and_writes_no_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.json").write_text(json.dumps(SMALL))  # JSON is YAML
    result = CliRunner().invoke(app, ["lr-find", "small.json", "--out", "lr.png", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["min_lr"] <= found["steepest"] <= found["max_lr"]
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.png", "small.json"]


def test_augment_draws_a_grid_and_refuses_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.json").write_text(json.dumps(SMALL))
    result = CliRunner().invoke(
        app, ["augment", "small.json", "--set", "data.augment=affine+elastic", "--out", "g.png"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = CliRunner().invoke(app, ["augment", "small.json", "--out", "g2.png"])
    assert result.exit_code != 0 and not (tmp_path / "g2.png").exists()
