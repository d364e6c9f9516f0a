"""`mlptrain eval` in depth: per-class accuracy, the confusion matrix, the error grid and the recorded result."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from mlptrain.cli.main import app
from mlptrain.cli.report import show_eval
from mlptrain.inference.evaluate import ERROR_GRID_SIZE, evaluate_checkpoint

runner = CliRunner()
SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A private copy: eval writes its record next to the checkpoint."""
    return shutil.copytree(trained_run, tmp_path / "run")


def check_confusion(out: dict) -> None:
    confusion, per_class = out["confusion"], out["per_class"]
    assert len(confusion) == 10 and all(len(row) == 10 for row in confusion)
    assert all(isinstance(c, int) and c >= 0 for row in confusion for c in row)
    total = sum(map(sum, confusion))
    assert total == out["samples"]
    assert sum(confusion[i][i] for i in range(10)) / total == out["accuracy"]  # exactly: the same argmax
    assert len(per_class) == 10 and all(isinstance(a, float) and 0 <= a <= 1 for a in per_class)
    assert per_class == [row[i] / sum(row) for i, row in enumerate(confusion)]


@pytest.mark.parametrize("split", ["test", "val"])
def test_json_has_per_class_accuracy_and_the_confusion_matrix(run, split):
    result = invoke("eval", run / "best.pt", "--split", split, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    check_confusion(out)
    assert out["classes"] == [str(d) for d in range(10)]
    if split == "val":  # the diagonal reproduces training's own validation accuracy, to the last digit
        with open(run / "metrics.csv", newline="") as f:
            row = list(csv.DictReader(f))[out["epoch"] - 1]
        assert sum(out["confusion"][i][i] for i in range(10)) / out["samples"] == float(row["val_acc"])


def test_eval_records_its_result_beside_the_checkpoint(run):
    out = json.loads(invoke("eval", run / "best.pt", "--json").stdout)
    assert json.loads((run / "best.test.json").read_text()) == out
    invoke("eval", run / "last.pt", "--split", "val")
    assert (run / "last.val.json").is_file()


def test_an_unwritable_record_is_a_warning_not_a_failure(run):
    (run / "best.test.json").mkdir()  # in the way, whoever runs the tests (root ignores permissions)
    result = invoke("eval", run / "best.pt", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["samples"] == 1000
    assert result.stderr.startswith("mlptrain: warning: cannot record") and result.stderr.count("\n") == 1


def test_errors_saves_a_grid_of_confident_mistakes(run, tmp_path):
    out = tmp_path / "errors.png"
    result = invoke("eval", run / "best.pt", "--errors", out)
    assert result.exit_code == 0, result.stderr
    assert f"{ERROR_GRID_SIZE} most confident mistakes -> {out}" in result.stdout
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 400


def test_plain_output_shows_the_matrix_as_aligned_text(run):
    result = invoke("eval", run / "best.pt")
    lines = result.stdout.splitlines()
    assert "accuracy=" in lines[0] and lines[1].startswith("per-class accuracy: 0=")
    start = lines.index("confusion matrix (rows: true label, columns: predicted):")
    header, *rows = lines[start + 1 : start + 12]
    assert header.split() == ["true", *map(str, range(10)), "n", "accuracy"]
    assert [row.split()[0] for row in rows] == [str(d) for d in range(10)]
    assert len({len(row) for row in rows}) == 1  # aligned
    assert "\x1b[" not in result.stdout


def test_terminal_output_shades_the_matrix(run):
    result = evaluate_checkpoint(run / "best.pt", record=False)
    for system, diagonal in (("truecolor", "48;2;"), ("standard", "42m")):
        buf = io.StringIO()
        show_eval(Console(file=buf, force_terminal=True, color_system=system, width=120), result)
        text = buf.getvalue()
        assert "confusion matrix" in text and "accuracy" in text and diagonal in text, system


def test_fashion_mnist_shows_class_names(fashion_root, tmp_path):
    run_dir = tmp_path / "fashion"
    overrides = ["data.dataset=fashion-mnist", f"data.root={fashion_root}", "data.download=false", "data.val_size=100"]
    trained = invoke("train", SMOKE, "--run-dir", run_dir, "--quiet", *(f"--set={o}" for o in overrides))
    assert trained.exit_code == 0, trained.stderr
    out = json.loads(invoke("eval", run_dir / "best.pt", "--json").stdout)
    assert out["classes"][0] == "T-shirt/top" and out["classes"][9] == "Ankle boot"
    check_confusion(out)
    assert "9 Ankle boot" in invoke("eval", run_dir / "best.pt").stdout
