"""Figures: training leaves curves.png, `mlptrain plot` redraws it anywhere, the error grid copes with any count."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mlptrain.base.metrics import EpochStats, History
from mlptrain.cli.main import app
from mlptrain.run.plot import save_curves, save_error_grid

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_png(path: Path, min_size: tuple[int, int] = (400, 300)) -> None:
    """A real PNG that PIL decodes, at least `min_size` pixels, of a size a figure plausibly has."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
    assert 5_000 < path.stat().st_size < 2_000_000


def rows(n: int) -> list[EpochStats]:
    return [EpochStats(e, 1 / e, 1 - 0.5 / e, 1.1 / e, 1 - 0.6 / e, 0.01, 1.0, 0.1, 1000.0) for e in range(1, n + 1)]


def test_training_writes_curves_png(trained_run):
    assert_png(trained_run / "curves.png", min_size=(800, 300))


def test_plot_out_writes_the_figure_elsewhere(trained_run, tmp_path):
    out = tmp_path / "figure.png"
    result = invoke("plot", trained_run, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert str(out) in result.stdout
    assert_png(out, min_size=(800, 300))


def test_plot_defaults_to_the_run_folder_and_needs_only_metrics_and_config(trained_run, tmp_path):
    run = tmp_path / "copy"
    run.mkdir()
    for name in ("config.yaml", "metrics.csv"):
        shutil.copy(trained_run / name, run / name)
    assert invoke("plot", run).exit_code == 0
    assert_png(run / "curves.png")


def test_plot_writes_other_formats_by_suffix(trained_run, tmp_path):
    out = tmp_path / "curves.svg"
    assert invoke("plot", trained_run, "--out", out).exit_code == 0
    assert out.read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        (lambda d: None, "no such folder"),
        (lambda d: d.mkdir(), "not a run folder"),
        (lambda d: (d.mkdir(), (d / "config.yaml").write_text("name: x\n")), "no finished epoch"),
    ],
)
def test_plot_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, setup, needle):
    folder = tmp_path / "r"
    setup(folder)
    result = invoke("plot", folder)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and needle in result.stderr and str(folder) in result.stderr


def test_plot_refuses_an_unknown_image_format(trained_run, tmp_path):
    result = invoke("plot", trained_run, "--out", tmp_path / "curves.xyz")
    assert result.exit_code == 2 and ".xyz" in result.stderr and "png" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_curves_of_one_epoch_many_epochs_and_a_diverged_run(tmp_path):
    save_curves(tmp_path / "one.png", History("val_acc", rows(1)), "one")
    save_curves(tmp_path / "many.png", History("val_acc", rows(200)), "many")
    diverged = [*rows(3), replace(rows(4)[-1], train_loss=math.nan, val_loss=math.nan)]
    assert History("val_loss", diverged).best_epoch == 3
    save_curves(tmp_path / "diverged.png", History("val_loss", diverged), "diverged")
    for name in ("one", "many", "diverged"):
        assert_png(tmp_path / f"{name}.png")


@pytest.mark.parametrize("count", [0, 3, 32])
def test_error_grid_of_any_count(tmp_path, count):
    import torch

    images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8).numpy()
    labels = [i % 10 for i in range(count)]
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    path = tmp_path / "errors.png"
    save_error_grid(path, images, labels, labels[::-1], [0.9] * count, names, title="test")
    assert_png(path, min_size=(300, 150))


def drawn(monkeypatch):
    """Keep the figures plot.py makes instead of writing them: [(figure, path)]."""
    import mlptrain.run.plot as plot

    figures = []
    monkeypatch.setattr(plot, "_save", lambda fig, path: figures.append((fig, path)))
    return figures


def test_curves_have_a_log_loss_an_accuracy_fitted_to_validation_and_a_learning_rate(monkeypatch, tmp_path):
    figures = drawn(monkeypatch)
    epochs = [EpochStats(e, 2 / e, 0.4 if e == 1 else 0.95, 1.5 / e, 0.92 + 0.002 * e, 0.1 / e, 1.0, 0.1, 1e3)
              for e in range(1, 11)]  # fmt: skip
    save_curves(tmp_path / "c.png", History("val_acc", epochs), "run")
    ((fig, _),) = figures
    loss_ax, acc_ax, lr_ax = fig.axes[:3]
    assert loss_ax.get_yscale() == "log"
    low, high = acc_ax.get_ylim()
    assert 88 < low < 92.2 and 94 <= high <= 100  # the 92–94% plateau fills the panel; epoch 1's 40% is off it
    assert list(lr_ax.lines[0].get_ydata()) == [0.1 / e for e in range(1, 11)]
    assert "learning rate" in lr_ax.get_ylabel()


def test_runs_plot_puts_keys_that_vary_together_in_one_panel(monkeypatch, tmp_path):
    from mlptrain.run.plot import save_metric_plot

    figures = drawn(monkeypatch)
    runs = [{f"k{i}": (n if i % 2 else f"v{n}") for i in range(8)} for n in range(3)]  # 3 runs, 8 keys, one split
    runs = [{**settings, "model.activation": act} for settings, act in zip(runs, ["relu", "relu", "gelu"], strict=True)]
    points = [(settings, 0.9 + 0.01 * i) for i, settings in enumerate(runs)]
    save_metric_plot(tmp_path / "r.png", points, [*runs[0].keys()], "val_acc", "runs", best=2)
    ((fig, _),) = figures
    axes = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(axes) == 2  # the eight keys that split the runs alike, and model.activation
    labels = [t.get_text() for ax in axes for t in ax.get_xticklabels()]
    assert "relu" in labels and not any('"' in label for label in labels)  # no JSON quotes
    assert any(text.get_text().startswith("best ") for ax in axes for text in ax.texts)  # the best run is labelled


def texts(fig) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text)]


def test_a_sweeps_range_keys_get_a_panel_each_log_where_the_range_is_and_short_numbers(monkeypatch, tmp_path):
    """A TPE sweep over a log range of train.lr and a range of model.dropout: every trial differs in both, so they
    used to share one panel of ten full-precision pairs overprinted on its x axis."""
    import random

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from mlptrain.run.plot import save_scores_plot
    from mlptrain.run.runs import Scores

    figures = drawn(monkeypatch)
    rng = random.Random(0)
    points = [({"train.lr": 10 ** rng.uniform(-3, -0.3), "model.dropout": rng.uniform(0, 0.5)}, 0.1 + 0.02 * i)
              for i in range(10)]  # fmt: skip
    ranges = {"train.lr": True, "model.dropout": False}
    save_scores_plot(tmp_path / "s.png", Scores("val_acc", [*ranges], points, 9, "trials", ranges), "sweep")
    ((fig, _),) = figures
    FigureCanvasAgg(fig).draw()  # the tick labels are made when drawn
    lr_ax, dropout_ax = [ax for ax in fig.axes if ax.get_xlabel()]
    assert (lr_ax.get_xlabel(), lr_ax.get_xscale()) == ("train.lr", "log")
    assert (dropout_ax.get_xlabel(), dropout_ax.get_xscale()) == ("model.dropout", "linear")
    for ax in (lr_ax, dropout_ax):
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert len(labels) >= 3 and all(len(label.lstrip("−-")) <= 6 for label in labels), labels


def test_a_drawn_float_in_a_slot_label_shows_four_significant_digits():
    from mlptrain.run.plot import _value_text

    assert [_value_text(v) for v in (0.07264183744487, 0.1, 1e-05, [0.461596, 3])] == [
        "0.07264", "0.1", "1e-05", "[0.4616, 3]",
    ]  # fmt: skip


def test_the_accuracy_panel_holds_a_training_accuracy_above_validation(monkeypatch, tmp_path):
    figures = drawn(monkeypatch)
    epochs = [EpochStats(e, 1 / e, 0.95 + 0.004 * e, 1.2 / e, 0.90 + 0.002 * e, 0.1, 1.0, 0.1, 1e3)
              for e in range(1, 11)]  # fmt: skip
    save_curves(tmp_path / "c.png", History("val_acc", epochs), "run")
    ((fig, _),) = figures
    low, high = fig.axes[1].get_ylim()
    assert high >= 99 and low < 90.2  # the train line up to 99% stays in the panel, as the validation line does


@pytest.mark.parametrize(
    ("augment", "smoothing", "needles"),
    [("affine", 0.1, ["affine-augmented", "label smoothing 0.1"]), ("none", 0.2, ["label smoothing 0.2"]),
     ("elastic", 0.0, ["elastic-augmented"]), ("none", 0.0, [])],
)  # fmt: skip
def test_the_curves_say_what_the_training_loss_includes(monkeypatch, tmp_path, augment, smoothing, needles):
    from datetime import datetime

    from mlptrain.base.config import Config
    from mlptrain.run.plot import plot_run
    from mlptrain.run.runs import RunSummary

    figures = drawn(monkeypatch)
    config = Config().to_dict()
    config["data"]["augment"]["kind"], config["train"]["label_smoothing"] = augment, smoothing
    plot_run(RunSummary(tmp_path, datetime.now(), config, History("val_acc", rows(3))))
    ((fig, _),) = figures
    notes = [text for text in texts(fig) if "measured on the training batches" in text]
    assert len(notes) == (1 if needles else 0) and all(needle in notes[0] for needle in needles)


def test_the_lr_plot_marks_on_the_curve_every_rate_its_legend_marks(monkeypatch, tmp_path):
    """minimum / 10 is never one of the rates tried: its legend showed a square that the curve did not have."""
    from types import SimpleNamespace

    from mlptrain.run.plot import save_lr_plot

    figures = drawn(monkeypatch)
    lrs = [1e-4 * 1.3**k for k in range(41)]  # a tenth of one is none of the others
    losses = [2.3 - 0.5 * math.exp(-(((k - 30) / 8) ** 2)) for k in range(41)]
    save_lr_plot(tmp_path / "lr.png", SimpleNamespace(lrs=lrs, losses=losses, steepest=lrs[22], valley=lrs[30] / 10,
                                                      stopped=None), "lr-find")  # fmt: skip
    ((fig, _),) = figures
    ax = fig.axes[0]
    legend = {text.get_text().split(":")[0]: line.get_marker() for text, line in
              zip(ax.get_legend().get_texts(), ax.get_legend().get_lines(), strict=True)}  # fmt: skip
    on_curve = {line.get_marker(): line.get_xydata()[0] for line in ax.lines if len(line.get_xdata()) == 1}
    assert legend["steepest descent"] in on_curve and legend["minimum / 10"] in on_curve
    x, y = on_curve[legend["minimum / 10"]]
    assert x == pytest.approx(lrs[30] / 10) and min(losses) < y < max(losses)
