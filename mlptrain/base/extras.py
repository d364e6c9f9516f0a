"""The optional extras (`pip install 'mlptrain[NAME]'`): which packages each brings, and the one-line refusal when
a feature that needs one is asked for without it. Nothing is imported until a feature asks."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mlptrain.base.errors import ConfigError

if TYPE_CHECKING:
    from mlptrain.base.config import Config

# The extra (pyproject.toml's optional-dependencies) that installs each optional package.
EXTRAS = {
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
    "safetensors": "export",
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "sqlalchemy": "mlflow",  # MLflow's database stores (sqlite:, postgresql:), which mlflow-skinny leaves out
    "alembic": "mlflow",
}


def require(packages: tuple[str, ...], what: str) -> None:
    """Import `packages`, or refuse `what` (e.g. '--format onnx') in one line naming the missing ones and the
    extra that installs them (a ConfigError: exit 2)."""
    missing = [name for name in packages if not _importable(name)]
    if missing:
        extras = sorted({EXTRAS[name] for name in missing})
        install = " ".join(f"'mlptrain[{extra}]'" for extra in extras)
        names = " and ".join(missing) if len(missing) < 3 else ", ".join(missing[:-1]) + f" and {missing[-1]}"
        raise ConfigError(f"{what} needs {names}, not installed here: pip install {install}")


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def check_config(config: Config) -> None:
    """Refuse, in one line and before anything starts, a run whose config asks for what is not installed here."""
    if config.output.tensorboard:
        require(("tensorboard",), "output.tensorboard: true")
    if config.output.mlflow:
        uri = config.output.mlflow
        database = uri is True or uri.startswith(("sqlite:", "postgresql"))
        require(("mlflow", "sqlalchemy", "alembic") if database else ("mlflow",), "output.mlflow")
