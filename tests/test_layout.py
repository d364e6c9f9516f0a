"""The package's shape: small modules with one job, and each third-party library owned by the module that uses it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlptrain"
MODULES = sorted(PACKAGE.rglob("*.py"))
# The library and the only modules of the package that may import it.
OWNERS = {
    "rich": {"report.py", "live.py"},
    "matplotlib": {"plot.py"},
    "typer": {"cli.py", "cliparts.py", "cli_recipe.py", "cli_sweep.py"},  # cli_recipe: augment, lr-find; cli_sweep
    # The optional extras: each imported by the one module whose feature needs it (extras.py checks for them).
    "onnx": {"export.py"},
    "onnxscript": {"export.py"},
    "onnxruntime": {"export.py"},
    "safetensors": {"export.py"},
    "tensorboard": {"tblog.py"},
    "optuna": {"study.py", "study_worker.py"},  # the sweep engine: the study, one worker
    "sqlalchemy": {"study.py"},  # Optuna's storage
}
# Parts of torch that need an optional extra, and the only modules that may import them.
TORCH_PARTS = {"torch.utils.tensorboard": {"tblog.py"}, "torch.onnx": {"export.py"}}


def imported(path: Path, full: bool = False) -> set[str]:
    """The top-level names of the packages `path` imports, anywhere in it (`full`: the whole dotted names)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name if full else alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module if full else node.module.split(".")[0])
    return names


@pytest.mark.parametrize("library", OWNERS)
def test_each_library_has_its_owner(library):
    users = {path.name for path in MODULES if library in imported(path)}
    assert users <= OWNERS[library], f"{library} is imported by {sorted(users - OWNERS[library])}"


@pytest.mark.parametrize("part", TORCH_PARTS)
def test_torchs_optional_parts_have_their_owner(part):
    users = {path.name for path in MODULES if any(n.startswith(part) for n in imported(path, full=True))}
    assert users <= TORCH_PARTS[part], f"{part} is imported by {sorted(users - TORCH_PARTS[part])}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_readable_at_once(path):
    source = path.read_text()
    assert source.count("\n") + 1 <= 500, f"{path.name} has grown past 500 lines: give its second job a module"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            assert node.end_lineno - start + 1 <= 60, f"{path.name}: {node.name} is over 60 lines"
