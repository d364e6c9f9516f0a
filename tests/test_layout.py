"""The package's shape: layers as subpackages (held by import-linter's contracts in pyproject.toml), small modules with
one job, and each third-party library owned by the folder or module whose job needs it."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mlptrain"
MODULES = sorted(PACKAGE.rglob("*.py"))
LAYERS = ("base", "core", "run", "inference", "tune", "sweep", "bench", "cli")  # bottom to top; features side by side
# The library and the only places of the package that may import it: a folder (every module in it) or a module.
OWNERS = {
    "rich": {"cli/"},
    "typer": {"cli/"},
    "matplotlib": {"run/plot.py"},
    # The optional extras: each imported by the one module whose feature needs it (base/extras.py checks for them).
    "onnx": {"inference/export.py"},
    "onnxscript": {"inference/export.py"},
    "onnxruntime": {"inference/export.py"},
    "safetensors": {"inference/export.py"},
    "tensorboard": {"run/tblog.py"},
    "mlflow": {"run/mlflowlog.py"},
    "optuna": {"sweep/study.py", "sweep/worker.py", "sweep/internals.py"},  # the sweep engine: study, worker, internals
    "sqlalchemy": {"sweep/study.py"},  # Optuna's storage
}
# Parts of torch that need an optional extra, and the only modules that may import them.
TORCH_PARTS = {"torch.utils.tensorboard": {"run/tblog.py"}, "torch.onnx": {"inference/export.py"}}


def imported(path: Path, full: bool = False) -> set[str]:
    """The top-level names of the packages `path` imports, anywhere in it (`full`: the whole dotted names)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name if full else alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module if full else node.module.split(".")[0])
    return names


def owned(path: Path, owners: set[str]) -> bool:
    where = path.relative_to(PACKAGE).as_posix()
    return any(where == owner or (owner.endswith("/") and where.startswith(owner)) for owner in owners)


@pytest.mark.parametrize("library", OWNERS)
def test_each_library_has_its_owner(library):
    users = {path for path in MODULES if library in imported(path)}
    strays = sorted(path.relative_to(PACKAGE).as_posix() for path in users if not owned(path, OWNERS[library]))
    assert not strays, f"{library} is imported by {strays}"


@pytest.mark.parametrize("part", TORCH_PARTS)
def test_torchs_optional_parts_have_their_owner(part):
    users = {path for path in MODULES if any(n.startswith(part) for n in imported(path, full=True))}
    strays = sorted(path.relative_to(PACKAGE).as_posix() for path in users if not owned(path, TORCH_PARTS[part]))
    assert not strays, f"{part} is imported by {strays}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_readable_at_once(path):
    source = path.read_text()
    assert source.count("\n") + 1 <= 500, f"{path.name} has grown past 500 lines: give its second job a module"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            assert node.end_lineno - start + 1 <= 60, f"{path.name}: {node.name} is over 60 lines"


def test_the_folders_are_the_layers():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, f"{len(top)} modules directly in mlptrain/: {top}; put the new one in its layer's folder"
    folders = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert folders == sorted(LAYERS), f"subpackages {folders}; the layers are {LAYERS} (see pyproject.toml)"
    for layer in LAYERS:  # thin: importing a run-folder or sweep-folder module must not load the whole layer
        body = [n for n in ast.parse((PACKAGE / layer / "__init__.py").read_text()).body if not _is_docstring(n)]
        assert not body, f"mlptrain/{layer}/__init__.py holds code; keep it to a docstring"


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's contracts (pyproject.toml's) on the package under `root`."""
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [linter, str(REPO / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layers_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("run/runs.py", "from mlptrain.sweep import table", "Layers"),  # a run folder that knows sweeps
        ("tune/lrfind.py", "from mlptrain.inference import evaluate", "Features never import each other"),
        ("core/threads.py", "from mlptrain.core.distributed import World", "No import cycle"),
        ("base/config.py", "import torch", "The base layer needs no torch"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path, module, line, contract):
    shutil.copytree(PACKAGE, tmp_path / "mlptrain", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "mlptrain" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout
