"""Follow one `mlptrain train` call through the library: which modules and layer folders it visits, in what order,
and how often a call goes back up the import layers (a module calling one that imports it, directly or not: a
callback).

    .venv/bin/python tools/call_path.py [configs/smoke.yaml]

Prints the modules in the order the call first enters them, the hand-offs between modules, the counts, and the same
for the layer folders (mlptrain/base, core, run, the features, cli).
"""

from __future__ import annotations

import ast
import sys
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mlptrain"


def imports() -> dict[str, set[str]]:
    """module -> the mlptrain modules it imports (at run time: TYPE_CHECKING blocks left out)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("mlptrain", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        checking = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
        skip = {id(n) for node in checking for n in ast.walk(node)}
        found = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlptrain"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("mlptrain"))
        graph[name] = found
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def above(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """module -> every module that imports it, directly or through others."""
    importers: dict[str, set[str]] = {m: set() for m in graph}
    for m in graph:
        todo, seen = list(graph[m]), set()
        while todo:
            d = todo.pop()
            if d in seen:
                continue
            seen.add(d)
            importers[d].add(m)
            todo += graph.get(d, ())
    return importers


def trace(config: str) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    def profile(frame, event, arg):
        if event != "call":
            return
        callee = frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        if callee.startswith("mlptrain") and caller.startswith("mlptrain") and callee != caller:
            calls.append((caller, callee))

    from mlptrain.cli.main import _run  # not main(), which leaves with os._exit once torch is loaded

    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = ["mlptrain", "train", config, "--run-dir", f"{tmp}/run", "--quiet"]
        sys.setprofile(profile)
        try:
            _run()
        finally:
            sys.setprofile(None)
    return calls


def main() -> None:
    config = sys.argv[1] if len(sys.argv) > 1 else "configs/smoke.yaml"
    importers = above(imports())
    calls = trace(config)
    # Collapse repeats (the loop calls the same hand-off every batch): one hand-off per distinct (caller, callee)
    # pair in first-seen order.
    pairs = list(dict.fromkeys(calls))
    visited = list(dict.fromkeys(m for pair in pairs for m in pair))
    upward = [(a, b) for a, b in pairs if b in importers and a in _lower_than(b, importers)]
    print(f"modules visited ({len(visited)}): " + " -> ".join(m.removeprefix("mlptrain.") for m in visited))
    print(f"distinct hand-offs between modules: {len(pairs)}")
    print(f"hand-offs back up the import layers (a callee that imports its caller): {len(upward)}")
    for a, b in upward:
        print(f"  {a.removeprefix('mlptrain.')} -> {b.removeprefix('mlptrain.')}")
    folders = [(folder(a), folder(b)) for a, b in pairs if folder(a) != folder(b)]
    steps = list(dict.fromkeys(folders))
    print("layer folders visited: " + " -> ".join(dict.fromkeys(f for step in steps for f in step)))
    print(f"distinct hand-offs between folders: {len(steps)}; " + ", ".join(f"{a} -> {b}" for a, b in steps))
    climbs = [(a, b) for a, b in steps if LAYERS.get(b, -1) > LAYERS.get(a, -1) >= 0]
    print(f"hand-offs up the layers (a callback): {len(climbs)}; " + ", ".join(f"{a} -> {b}" for a, b in climbs))


# The layer folders, bottom up; the features share a layer.
LAYERS = {"base": 0, "core": 1, "run": 2, "inference": 3, "tune": 3, "sweep": 3, "bench": 3, "cli": 4}


def folder(module: str) -> str:
    """The layer folder of `module` (mlptrain.run.trainer -> run), or the module's own name above them."""
    return module.removeprefix("mlptrain.").split(".")[0]


def _lower_than(module: str, importers: dict[str, set[str]]) -> set[str]:
    """Modules that `module` imports, directly or not."""
    return {m for m, users in importers.items() if module in users}


if __name__ == "__main__":
    main()
