"""`mlptrain export`: each format loaded back with the runtime a user would use (onnxruntime, torch.export.load,
safetensors + a plain nn.Sequential) predicts as the checkpoint does; --raw-pixels, dynamic and fixed batches, the
metadata, the loading lines docs/export.md shows, and every refusal in one line."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mlptrain.base.config import Config
from mlptrain.base.errors import DataMissing
from mlptrain.cli.main import app
from mlptrain.core.engine import predict_logits
from mlptrain.inference import export
from mlptrain.inference.evaluate import checkpoint_split
from mlptrain.run import trainer
from mlptrain.run.checkpoint import load_model

runner = CliRunner()
EXPORT_PAGE = (Path(__file__).resolve().parents[2] / "docs" / "export.md").read_text()
FORMATS = ["onnx", "pt2", "safetensors"]
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlptrain: error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory) -> Path:
    """Every path the export must fold: two hidden layers, gelu, no bias, dropout (off in every export)."""
    raw = {
        "name": "odd",
        "device": "cpu",
        "data": {"dataset": "synthetic", "synthetic_size": 900, "val_size": 150},
        "model": {"hidden": [48, 24], "activation": "gelu", "bias": False, "dropout": 0.3},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.05},
    }
    run_dir = tmp_path_factory.mktemp("odd") / "run"
    trainer.train(Config.from_dict(raw), run_dir=run_dir)
    return run_dir


def reference(checkpoint: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(the test split's normalised images (N, in), the checkpoint's own logits for them, the checkpoint)."""
    ckpt, model = load_model(checkpoint, torch.device("cpu"))
    split = checkpoint_split(ckpt, model, "test", None, torch.device("cpu"))
    return split.x, predict_logits(model, split), ckpt


def run_exported(path: Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """The exported file run as a user would, without mlptrain."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(["logits"], {"pixels": x.numpy()})[0])
    if fmt == "pt2":
        with torch.no_grad():
            return torch.export.load(str(path)).module()(x)
    with torch.no_grad():
        return readme_sequential(path)(x)


def readme_sequential(path: Path) -> torch.nn.Module:
    """docs/export.md's Python block that loads a .safetensors export into a plain nn.Sequential, run as written."""
    block = re.search(r"<!-- safetensors loading -->\n```python\n(.*?)```", EXPORT_PAGE, re.DOTALL)
    assert block, "docs/export.md shows how to load a .safetensors export"
    code = block.group(1)
    assert len(code.strip().splitlines()) == 5
    scope: dict = {}
    exec(code.replace('"model.safetensors"', repr(str(path))), scope)
    return scope["model"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_back_with_its_runtime_and_predicts_alike(trained_run, tmp_path, fmt):
    out = tmp_path / f"model{SUFFIX[fmt]}"
    result = invoke("export", trained_run / "best.pt", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == fmt and report["predictions_agree"] and report["max_abs_diff"] <= 1e-4
    assert report["compared"].startswith("the test split") and report["bytes"] == out.stat().st_size
    x, expected, _ = reference(trained_run / "best.pt")
    got = run_exported(out, fmt, x)
    assert (got - expected).abs().max() <= 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left behind


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scale", [1, 255])
def test_raw_pixels_equal_normalised_input_through_the_original(odd_run, tmp_path, fmt, scale):
    out = tmp_path / f"raw{SUFFIX[fmt]}"
    flag = "--raw-pixels" if scale == 1 else "--raw-pixels=255"
    result = invoke("export", odd_run / "best.pt", out, flag, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["input"] == f"pixels-0-{scale}"
    x, expected, ckpt = reference(odd_run / "best.pt")
    pixels = (x * ckpt["data"]["std"] + ckpt["data"]["mean"]).mul(255).round()  # the dataset's bytes, 0-255
    got = run_exported(out, fmt, pixels if scale == 255 else pixels / 255)
    assert (got - expected).abs().max() <= 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_any_batch_size_by_default_and_a_fixed_one_on_request(odd_run, tmp_path, fmt):
    x, expected, _ = reference(odd_run / "best.pt")
    dynamic = tmp_path / f"any{SUFFIX[fmt]}"
    assert invoke("export", odd_run / "best.pt", dynamic).exit_code == 0
    for rows in (1, 37):
        assert (run_exported(dynamic, fmt, x[:rows]) - expected[:rows]).abs().max() <= 1e-4
    fixed = tmp_path / f"fixed{SUFFIX[fmt]}"
    result = invoke("export", odd_run / "best.pt", fixed, "--batch", 5, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["batch"] == 5
    assert (run_exported(fixed, fmt, x[:5]) - expected[:5]).abs().max() <= 1e-4
    with pytest.raises(Exception):  # noqa: B017 - each runtime has its own error for a wrong shape
        run_exported(fixed, fmt, x[:6])


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_a_fixed_batch_larger_than_the_compared_images_is_that_batch(odd_run, tmp_path, fmt):
    x, expected, _ = reference(odd_run / "best.pt")
    rows = len(x) + 3  # the exporter traced the images it had, fewer rows than asked for
    fixed = tmp_path / f"big{SUFFIX[fmt]}"
    result = invoke("export", odd_run / "best.pt", fixed, "--batch", rows, "--json")
    assert result.exit_code == 0, result.stderr
    padded = torch.cat([x, x[:3]])
    assert (run_exported(fixed, fmt, padded)[: len(x)] - expected).abs().max() <= 1e-4


def test_onnx_names_its_input_and_output_and_records_opset_and_metadata(trained_run, tmp_path):
    import onnx

    out = tmp_path / "m.onnx"
    report = json.loads(invoke("export", trained_run / "best.pt", out, "--json").stdout)
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["pixels"] and [o.name for o in model.graph.output] == ["logits"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # a named, dynamic dimension
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert report["opset"] == opset >= 18
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == "mlptrain-export" and meta["input"] == "normalized"
    assert json.loads(meta["sizes"]) == [784, 256, 10] and json.loads(meta["classes"]) == [str(d) for d in range(10)]


def test_safetensors_holds_torch_names_and_says_what_it_takes(odd_run, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "w.safetensors"
    assert invoke("export", odd_run / "best.pt", out, "--raw-pixels=255").exit_code == 0
    with safe_open(str(out), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    # nn.Sequential's names: Linear, GELU, Linear, GELU, Linear; a zero bias where the model has none
    assert keys == {f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert meta["activation"] == "gelu" and meta["activation_module"] == "GELU" and meta["input"] == "pixels-0-255"
    assert json.loads(meta["sizes"]) == [784, 48, 24, 10] and meta["dataset"] == "synthetic"
    for key in ("mean", "std", "mlptrain_version", "classes", "epoch"):
        assert meta[key]


def test_pt2_loads_without_mlptrain_and_carries_its_metadata(trained_run, tmp_path):
    out = tmp_path / "m.pt2"
    assert invoke("export", trained_run / "best.pt", out).exit_code == 0
    extra = {export.PT2_METADATA: ""}
    torch.export.load(str(out), extra_files=extra)
    assert json.loads(extra[export.PT2_METADATA])["input"] == "normalized"
    names = [n.target for n in torch.export.load(str(out)).graph.nodes if n.op == "call_function"]
    assert not any("mlptrain" in str(t) or "dropout" in str(t) for t in names)


def test_the_format_comes_from_the_suffix_unless_format_says(trained_run, tmp_path):
    out = tmp_path / "model.bin"
    assert "give a file name ending in .onnx" in one_error_line(invoke("export", trained_run / "best.pt", out))
    result = invoke("export", trained_run / "best.pt", out, "--format", "safetensors", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["format"] == "safetensors"


def test_a_missing_extra_is_one_line_naming_it(trained_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails, as when not installed
    line = one_error_line(invoke("export", trained_run / "best.pt", tmp_path / "m.onnx"))
    assert "onnxruntime" in line and "pip install 'mlptrain[export]'" in line
    monkeypatch.setitem(sys.modules, "safetensors", None)
    line = one_error_line(invoke("export", trained_run / "best.pt", tmp_path / "m.safetensors"))
    assert "safetensors" in line and "pip install 'mlptrain[export]'" in line
    assert list(tmp_path.iterdir()) == []
    assert invoke("export", trained_run / "best.pt", tmp_path / "m.pt2").exit_code == 0  # pt2 needs torch alone


@pytest.mark.parametrize(
    ("what", "needle"),
    [("text", "not a readable checkpoint"), ("missing", "checkpoint not found"), ("folder", "is a folder")],
)
def test_what_is_not_a_checkpoint_is_refused_in_one_line(tmp_path, trained_run, what, needle):
    path = {"text": tmp_path / "notes.pt", "missing": tmp_path / "none.pt", "folder": trained_run}[what]
    if what == "text":
        path.write_text("not a checkpoint")
    assert needle in one_error_line(invoke("export", path, tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()


def test_other_bad_requests_are_one_line(trained_run, tmp_path):
    best = tmp_path / "best.pt"
    shutil.copy(trained_run / "best.pt", best)
    assert "--batch applies to onnx and pt2" in one_error_line(
        invoke("export", best, tmp_path / "w.safetensors", "--batch", 4)
    )
    assert "the checkpoint itself" in one_error_line(invoke("export", best, best, "--format", "pt2"))
    assert "--raw-pixels 3" in one_error_line(invoke("export", best, tmp_path / "m.onnx", "--raw-pixels=3"))


def test_a_file_that_disagrees_fails_and_is_not_left(trained_run, tmp_path, monkeypatch):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"an older export")
    real = export._RUNNERS["safetensors"]
    monkeypatch.setitem(export._RUNNERS, "safetensors", lambda path, x, batch: real(path, x, batch) + 1e-3)
    line = one_error_line(invoke("export", trained_run / "best.pt", out), code=1)
    assert "differ from the checkpoint's by up to 0.001" in line and "nothing written" in line
    assert out.read_bytes() == b"an older export" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_without_a_test_split_a_fixed_batch_of_validation_images_is_compared(odd_run, tmp_path, monkeypatch):
    def no_test(ckpt, model, split, data_root, device):
        if split == "test":
            raise DataMissing("no test files here")
        return checkpoint_split(ckpt, model, split, data_root, device)

    monkeypatch.setattr(export, "checkpoint_split", no_test)
    result = invoke("export", odd_run / "best.pt", tmp_path / "m.pt2", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 150 and "validation images" in report["compared"]  # val_size 150 < VAL_IMAGES


def test_export_from_another_folder_with_relative_paths(trained_run, tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    shutil.copytree(trained_run, tmp_path / "run")
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = invoke("export", "../run/best.pt", "out/model.onnx")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "elsewhere" / "out" / "model.onnx").is_file()
    assert "verified with onnxruntime" in result.stdout and "every prediction agrees" in result.stdout
