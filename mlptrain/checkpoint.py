"""Self-contained checkpoints: written atomically, read with weights_only=True, checked before use.

A checkpoint holds everything needed to rebuild, score or resume the model without the original config file:
the weights, the resolved config, the data's size and normalisation, the epoch and its metrics, the optimizer
and scheduler state, and the versions that wrote it.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mlptrain import __version__
from mlptrain.config import Config
from mlptrain.errors import CheckpointError, ConfigError
from mlptrain.files import atomic_write
from mlptrain.nn import MLP

FORMAT = "mlptrain-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = (
    "config",
    "data",
    "model",
    "epoch",
    "metrics",
    "history",
    "best",
    "optimizer",
    "scheduler",
    "rng",
    "progress",
)


def save_checkpoint(path: Path, **fields: Any) -> None:
    """Atomically write a checkpoint holding `fields` (see _REQUIRED) plus the format and versions."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": {"mlptrain": __version__, "torch": str(torch.__version__)},  # TorchVersion is not plain data
        **fields,
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint; every problem becomes a one-line CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        hint = f"; did you mean {path / 'best.pt'}?" if (path / "best.pt").is_file() else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # weights_only: tensors and plain containers only; a pickle that would run code is refused, never run.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        if found:
            raise CheckpointError(
                f"{path}: refused: it holds a Python object ({found.group(1)}) that only a full unpickle could "
                "rebuild, and unpickling can run arbitrary code; mlptrain loads plain weights_only checkpoints"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint: corrupt or not a torch file") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint: truncated or not a torch file ({_first_line(e)})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a torch file, but not an mlptrain checkpoint")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported; this mlptrain "
            f"({__version__}) reads version {FORMAT_VERSION}"
        )
    missing = [key for key in _REQUIRED if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    try:
        ckpt["config"] = Config.from_dict(ckpt["config"], source="its config")
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    data = ckpt["data"]
    if not isinstance(data, dict) or not all(isinstance(data.get(k), (int, float)) for k in _DATA_KEYS):
        raise CheckpointError(f"{path}: incomplete checkpoint, its data section needs {', '.join(_DATA_KEYS)}")
    return ckpt


_DATA_KEYS = ("in_features", "num_classes", "mean", "std")


def model_sizes(config: Config, in_features: int, num_classes: int) -> list[int]:
    return [in_features, *config.model.hidden, num_classes]


def build_model(config: Config, in_features: int, num_classes: int) -> MLP:
    m = config.model
    return MLP(model_sizes(config, in_features, num_classes), m.activation, m.dropout, m.bias, m.fused)


def model_from_checkpoint(ckpt: dict[str, Any], path: Path, device: torch.device) -> MLP:
    """Rebuild the MLP from the checkpoint's own config and load its weights, refusing any mismatch."""
    data = ckpt["data"]
    model = build_model(ckpt["config"], int(data["in_features"]), int(data["num_classes"]))
    state = ckpt["model"]
    expected = model.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        raise CheckpointError(f"{path}: its weights do not match the MLP its config describes ({_sizes(model)})")
    for key, tensor in expected.items():
        if not isinstance(state[key], torch.Tensor) or state[key].shape != tensor.shape:
            got = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            raise CheckpointError(
                f"{path}: weight {key} has shape {got} but its config describes {tuple(tensor.shape)} ({_sizes(model)})"
            )
    model.load_state_dict(state)
    return model.to(device)


def _sizes(model: MLP) -> str:
    return "layer sizes " + "-".join(map(str, model.sizes))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
