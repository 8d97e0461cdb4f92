"""The shape of the code: imports run one way, light modules stay light, functions stay short,
and every run-folder file name is spelled once (in catsdogs.runfolder).

These read the source with ``ast``; each fails on the first change that breaks its rule.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "catsdogs"

LIGHT_MODULES = ("catsdogs", "catsdogs.constants", "catsdogs.errors", "catsdogs.io",
                 "catsdogs.runfolder", "catsdogs.config", "catsdogs.budget", "catsdogs.data.images",
                 "catsdogs.data.scan", "catsdogs.data.split", "catsdogs.data.download",
                 "catsdogs.data.records", "catsdogs.cli")
"""Modules that must import without TensorFlow or Keras (the CLI's --help, run-folder tools)."""

OPTIONAL_IMPORTS = {"onnxruntime", "ai_edge_litert.interpreter", "pandas"}
"""Third-party modules that may be imported inside a function: optional dependencies only."""

LONG_FUNCTIONS: dict[str, str] = {}
"""``module:function`` → the reason it may exceed :data:`MAX_LINES` (none today)."""
MAX_LINES = 60

RUN_FOLDER_NAMES = ("model.keras", "config.json", "splits.csv", "scan.json", "history.csv",
                    "timings.json", "metrics.json", "predictions.csv", "report.md",
                    "export.json", "model.onnx", "model.tflite", "model.int8.tflite",
                    "best.weights.h5", "history.png", "confusion_matrix.png", "roc.png",
                    "samples.png", "mistakes.png", "other.csv", "ood.png")


def module_name(file: Path) -> str:
    parts = list(file.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, ast.Module]:
    return {module_name(f): ast.parse(f.read_text(encoding="utf-8"), str(f))
            for f in sorted(SRC.rglob("*.py"))}


def imported_modules(tree: ast.AST, modules: set[str], current: str) -> set[str]:
    """catsdogs modules that ``tree`` imports anywhere (module level, in functions, or by
    ``importlib.import_module("catsdogs....")``), resolved to modules of the package."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names = [node.args[0].value]
        for name in names:
            if name.startswith("catsdogs"):
                while name not in modules and "." in name:  # `from pkg import name` → pkg
                    name = name.rsplit(".", 1)[0]
                if name in modules and name != current:
                    found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    trees = sources()
    return {m: imported_modules(t, set(trees), m) for m, t in trees.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "catsdogs.api" in graph["catsdogs"]  # the lazy API import is seen
    assert "catsdogs.api" in graph["catsdogs.cli"]
    assert find_cycle(graph) is None, f"import cycle: {' → '.join(find_cycle(graph))}"


def test_no_module_imports_the_package_root():
    """The root lazily imports the API, so a module importing it would close a cycle."""
    offenders = sorted(m for m, deps in import_graph().items() if "catsdogs" in deps)
    assert offenders == []


def test_no_function_level_imports_except_optional_dependencies():
    found = []
    for mod, tree in sources().items():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                found += [f"{mod}:{fn.name} imports {n}" for n in names
                          if n not in OPTIONAL_IMPORTS]
    assert found == []


def test_functions_are_short_or_say_why():
    long = []
    for mod, tree in sources().items():
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = fn.end_lineno - fn.lineno + 1
                key = f"{mod}:{fn.name}"
                if lines > MAX_LINES and key not in LONG_FUNCTIONS:
                    long.append(f"{key} has {lines} lines")
    assert long == []


def test_run_folder_names_are_spelled_once():
    """Every run-folder file name appears as a string only in catsdogs/runfolder.py."""
    spelled = []
    for mod, tree in sources().items():
        if mod == "catsdogs.runfolder":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                spelled += [f"{mod}: {name!r}" for name in RUN_FOLDER_NAMES
                            if node.value == name or node.value.endswith("/" + name)]
    assert spelled == []


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_do_not_import_tensorflow(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in ('tensorflow', 'keras') "
            "if m in sys.modules); print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, f"{module} imports {proc.stdout.strip()}"


def test_the_api_names_load_lazily_from_the_package():
    code = ("import sys, catsdogs; assert 'catsdogs.api' not in sys.modules; "
            "f = catsdogs.train; import catsdogs.api as api; "
            "assert f is api.train and catsdogs.load is api.load and catsdogs.Run is api.Run; "
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
