"""`mlptrain export`: a checkpoint's model as a file that other tools load (ONNX, a torch.export program,
safetensors weights), checked before it takes its place by loading it back with the runtime a user would use.

onnx, onnxscript, onnxruntime and safetensors come with the optional `export` extra and are imported only here,
only for the format that needs them.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mlptrain import __version__
from mlptrain.base.config import MAX_BATCH
from mlptrain.base.errors import ConfigError, DataMissing, RunFailed
from mlptrain.base.extras import require
from mlptrain.base.files import atomic_write, make_dirs
from mlptrain.core.data import Split
from mlptrain.core.engine import predict_logits
from mlptrain.core.memory import check_fits
from mlptrain.core.nn import ACTIVATIONS, MLP, to_torch
from mlptrain.inference.evaluate import checkpoint_split
from mlptrain.run.checkpoint import load_model
from mlptrain.run.checkpoint_entries import checkpoint_classes

FORMATS = {".onnx": "onnx", ".pt2": "pt2", ".safetensors": "safetensors"}  # OUT's suffix -> format
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "pt2": (), "safetensors": ("safetensors",)}
RUNTIMES = {"onnx": "onnxruntime", "pt2": "torch.export.load", "safetensors": "safetensors + torch.nn.Sequential"}
INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
TOLERANCE = 1e-4  # the largest logit difference (fp32) an export may show against the checkpoint's own model
VAL_IMAGES = 1000  # the fixed batch of validation images compared when the dataset has no test split here
PT2_METADATA = "mlptrain.json"  # the extra file of a .pt2 that holds the metadata
# What the exported model takes, by --raw-pixels: normalised pixels (as training saw them), or raw ones.
INPUTS = {None: "normalized", 1: "pixels-0-1", 255: "pixels-0-255"}


@dataclass
class ExportResult:
    checkpoint: Path
    path: Path
    format: str
    bytes: int
    input: str  # one of INPUTS' values
    sizes: list[int]
    batch: int | None  # the fixed batch size, or None for any
    opset: int | None  # ONNX only: the default domain's operator set
    export_seconds: float  # building and serialising the file
    verify_seconds: float  # loading it back and running the comparison images through it
    runtime: str  # what loaded it back
    compared: str  # which images, in words
    samples: int
    max_abs_diff: float  # the largest |exported - checkpoint| over every logit
    disagreements: int  # images whose predicted class differs
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME

    def to_json(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint),
            "path": str(self.path),
            "format": self.format,
            "bytes": self.bytes,
            "input": self.input,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "sizes": self.sizes,
            "batch": self.batch,
            "opset": self.opset,
            "export_seconds": self.export_seconds,
            "verify_seconds": self.verify_seconds,
            "runtime": self.runtime,
            "compared": self.compared,
            "samples": self.samples,
            "max_abs_diff": self.max_abs_diff,
            "predictions_agree": self.disagreements == 0,
            "disagreements": self.disagreements,
        }


def export_format(out: Path, fmt: str | None) -> str:
    """The format asked for, else the one OUT's suffix names."""
    if fmt is not None:
        return fmt
    found = FORMATS.get(Path(out).suffix.lower())
    if found is None:
        raise ConfigError(f"{out}: give a file name ending in .onnx, .pt2 or .safetensors, or say --format")
    return found


def pixel_scale(text: str | None) -> int | None:
    """--raw-pixels' value: None (normalised input), 1 (pixels in [0, 1]) or 255 (pixels in 0-255)."""
    if text is None:
        return None
    if text.strip() in ("1", "255"):
        return int(text)
    raise ConfigError(f"--raw-pixels {text}: say --raw-pixels (pixels in [0, 1]) or --raw-pixels=255 (0-255)")


def export_checkpoint(
    path: Path,
    out: Path,
    fmt: str | None = None,
    raw_pixels: int | None = None,
    batch: int | None = None,
    data_root: Path | None = None,
) -> ExportResult:
    """Write the checkpoint's model (evaluation mode: no dropout) to `out` and check it: the file is loaded back
    with its runtime, and the checkpoint's test split (else a fixed batch of its validation images) goes through
    both; a largest logit difference over TOLERANCE is a RunFailed, and `out` is then left as it was."""
    path, out = Path(path), Path(out)
    fmt = export_format(out, fmt)
    if batch is not None and fmt == "safetensors":
        raise ConfigError("--batch applies to onnx and pt2: a safetensors file holds weights, not a batch shape")
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise ConfigError(f"--batch {batch}: must be at least 1 and at most {MAX_BATCH:,}")
    if out.exists() and path.exists() and out.resolve() == path.resolve():
        raise ConfigError(f"{out} is the checkpoint itself; give another file name")
    require(NEEDS[fmt], f"--format {fmt}")
    cpu = torch.device("cpu")
    ckpt, model = load_model(path, cpu)
    if batch is not None:  # the check runs whole batches of it, padded
        check_fits(model.sizes, cpu, batch, training=False, key=f"--batch {batch:,}", remedy="give a smaller N")
    split, compared = _comparison_images(ckpt, model, data_root)
    mean, std = float(ckpt["data"]["mean"]), float(ckpt["data"]["std"])
    inputs = exported_input(split.x, mean, std, raw_pixels)  # (N, in) what the file is fed
    expected = predict_logits(model, split)  # (N, classes) the checkpoint's own model, fp32
    meta = metadata(ckpt, model, raw_pixels)
    t0 = time.perf_counter()
    network = plain_network(model, mean, std, raw_pixels)
    data, opset = _WRITERS[fmt](network, _example(inputs, batch), batch, meta)
    export_seconds = time.perf_counter() - t0
    result = ExportResult(
        path, out, fmt, len(data), INPUTS[raw_pixels], model.sizes, batch, opset, export_seconds, 0.0,
        RUNTIMES[fmt], compared, len(split), 0.0, 0,
    )  # fmt: skip
    make_dirs(out.parent)
    atomic_write(out, lambda f: f.write(data), check=lambda written: _verify(result, written, inputs, expected))
    return result


def _example(inputs: torch.Tensor, batch: int | None) -> torch.Tensor:
    """What the exporter traces: two rows for any batch size, or exactly `batch` rows (zeros past the images)."""
    if batch is None:
        return inputs[:2]
    if batch <= len(inputs):
        return inputs[:batch]
    return torch.cat([inputs, inputs.new_zeros(batch - len(inputs), inputs.shape[1])])


def _comparison_images(ckpt: dict, model: MLP, data_root: Path | None) -> tuple[Split, str]:
    """The checkpoint's test split, or, where the dataset has none here, a fixed batch of its validation images."""
    cpu = torch.device("cpu")
    try:
        split = checkpoint_split(ckpt, model, "test", data_root, cpu)
        return split, f"the test split ({len(split):,} images)"
    except DataMissing:
        split = checkpoint_split(ckpt, model, "val", data_root, cpu)
        split = Split(split.x[:VAL_IMAGES], split.y[:VAL_IMAGES])
        return split, f"the first {len(split):,} validation images (no test split found)"


def exported_input(x: torch.Tensor, mean: float, std: float, scale: int | None) -> torch.Tensor:
    """What the exported model is fed for the normalised images x (N, in): x itself, or its pixels back in
    [0, 1] (scale 1) or 0-255 (scale 255), rounded to the whole bytes the dataset holds."""
    if scale is None:
        return x
    pixels = (x * std + mean).mul_(255).round_().clamp_(0, 255)  # the dataset's bytes
    return pixels if scale == 255 else pixels / 255


def plain_network(model: MLP, mean: float, std: float, scale: int | None = None) -> nn.Sequential:
    """The model as torch.nn.Linear and activation modules, no dropout, in evaluation mode, every Linear with a
    bias (zeros where the model has none, so one loader fits every export). With `scale`, the normalisation
    (p / scale - mean) / std is folded into the first layer, which then takes raw pixels p."""
    network = to_torch(model, dropout=False).eval()
    linears = [layer for layer in network if isinstance(layer, nn.Linear)]
    for layer in linears:
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.out_features))
    if scale is not None:
        first = linears[0]
        with torch.no_grad():  # W (p/s - m)/σ + b = (W / sσ) p + (b - W·1 m/σ), worked in float64
            weight, bias = first.weight.double(), first.bias.double()
            first.weight.copy_(weight / (scale * std))
            first.bias.copy_(bias - weight.sum(1) * (mean / std))
    for p in network.parameters():
        p.requires_grad_(False)
    return network


def metadata(ckpt: dict, model: MLP, scale: int | None) -> dict[str, str]:
    """What the file says about itself (strings, as ONNX and safetensors metadata hold them)."""
    dataset = ckpt["config"].data.dataset
    return {
        "format": "mlptrain-export",
        "mlptrain_version": __version__,
        "sizes": json.dumps(model.sizes),
        "activation": model.activation_name,
        "activation_module": ACTIVATIONS[model.activation_name].__name__,
        "input": INPUTS[scale],
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "mean": repr(float(ckpt["data"]["mean"])),
        "std": repr(float(ckpt["data"]["std"])),
        "classes": json.dumps(checkpoint_classes(ckpt)),
        "dataset": dataset,
        "epoch": str(int(ckpt["epoch"])),
    }


def _dynamic(batch: int | None) -> dict | None:
    """torch.export's shapes: any batch size (the first dimension), unless `batch` fixes it."""
    return None if batch is not None else {"input": {0: torch.export.Dim("batch", min=1)}}


def _onnx_bytes(network: nn.Sequential, example: torch.Tensor, batch: int | None, meta: dict) -> tuple[bytes, int]:
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines are not ours to print
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=_dynamic(batch),
        )
    proto = program.model_proto
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return proto.SerializeToString(), opset


def _pt2_bytes(network: nn.Sequential, example: torch.Tensor, batch: int | None, meta: dict) -> tuple[bytes, None]:
    program = torch.export.export(network, (example,), dynamic_shapes=_dynamic(batch))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={PT2_METADATA: json.dumps(meta)})
    return buffer.getvalue(), None


def _safetensors_bytes(network: nn.Sequential, example: torch.Tensor, batch: int | None, meta: dict):
    import safetensors.torch

    # nn.Sequential's own names (0.weight, 0.bias, 2.weight...): a plain Sequential loads them as they are.
    state = {key: tensor.contiguous() for key, tensor in network.state_dict().items()}
    return safetensors.torch.save(state, metadata=meta), None


_WRITERS = {"onnx": _onnx_bytes, "pt2": _pt2_bytes, "safetensors": _safetensors_bytes}


def _verify(result: ExportResult, written: Path, inputs: torch.Tensor, expected: torch.Tensor) -> None:
    """Load the written file back with its runtime and compare its logits with the checkpoint's (in result)."""
    t0 = time.perf_counter()
    try:
        got = _RUNNERS[result.format](written, inputs, result.batch)
    except Exception as e:  # a file its own runtime cannot load or run is a failed export, whatever the reason
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise RunFailed(
            f"{result.path}: {result.runtime} cannot run the exported file ({first}); nothing written"
        ) from None
    result.verify_seconds = time.perf_counter() - t0
    result.max_abs_diff = float((got - expected).abs().max())
    result.disagreements = int((got.argmax(1) != expected.argmax(1)).sum())
    if not result.max_abs_diff <= TOLERANCE:  # also refuses a NaN
        raise RunFailed(
            f"{result.path}: the exported model's logits differ from the checkpoint's by up to "
            f"{result.max_abs_diff:.3g} (more than {TOLERANCE:g}) on {result.compared}; nothing written"
        )


def _in_batches(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int | None) -> torch.Tensor:
    """run() over x (N, in) in chunks; a fixed `batch` gets exactly that many rows each (the last one padded)."""
    size = batch or 4096
    chunks = []
    for start in range(0, len(x), size):
        chunk = x[start : start + size]
        rows = len(chunk)
        if batch is not None and rows < batch:
            chunk = torch.cat([chunk, chunk.new_zeros(batch - rows, chunk.shape[1])])
        chunks.append(run(chunk)[:rows])
    return torch.cat(chunks)


def _run_onnx(path: Path, x: torch.Tensor, batch: int | None) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _in_batches(
        lambda chunk: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: chunk.numpy()})[0]), x, batch
    )


def _run_pt2(path: Path, x: torch.Tensor, batch: int | None) -> torch.Tensor:
    with open(path, "rb") as f:  # a path is read by its suffix, and the file is still a temp file here
        module = torch.export.load(f).module()
    with torch.no_grad():
        return _in_batches(module, x, batch)


def _run_safetensors(path: Path, x: torch.Tensor, batch: int | None) -> torch.Tensor:
    with torch.no_grad():
        return _in_batches(load_sequential(path), x, batch)


_RUNNERS = {"onnx": _run_onnx, "pt2": _run_pt2, "safetensors": _run_safetensors}


def load_sequential(path: Path) -> nn.Sequential:
    """A plain torch.nn.Sequential from an exported .safetensors file: the README's five lines, as a function."""
    import safetensors.torch

    meta = safetensors.safe_open(str(path), "pt").metadata()
    sizes, act = json.loads(meta["sizes"]), getattr(torch.nn, meta["activation_module"])
    model = torch.nn.Sequential(*[m for i, o in itertools.pairwise(sizes) for m in (torch.nn.Linear(i, o), act())][:-1])
    model.load_state_dict(safetensors.torch.load_file(str(path)))
    return model.eval()
