"""The shape of the package: light imports, one-way layers, no import cycles, files readable in one sitting.

    pytest tests/test_imports.py

`import raykd` (and the CLI, config and deployment modules) must not import vLLM, Ray, torch or MLflow;
raykd/loss/ is pure torch (no Ray, MLflow, transformers or vLLM, even inside functions) and raykd/config/
pure pydantic. Imports point one way: the graph of raykd's modules, with the imports inside functions
counted too, has no cycle, and neither has the graph of its subpackages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "raykd"
HEAVY = ("vllm", "ray", "torch", "mlflow", "transformers")
MAX_LINES = 400
MAX_TOP_MODULES = 12


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _imported(path: Path) -> list[tuple[str, bool]]:
    """(dotted name, at module level?) of every import in a file, those inside functions included."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, id(node) in top)] + [(f"{node.module}.{a.name}", id(node) in top) for a in node.names]
    return out


def _raykd_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph(module_level_only: bool = False) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in MODULES.items():
        for name, at_top in _imported(path):
            target = _raykd_module(name) if name.startswith("raykd.") else None
            if target and target != mod and (at_top or not module_level_only):
                graph[mod].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def _imports_in_subprocess(modules: list[str]) -> list[str]:
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    return [m for m in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout.strip().split(",") if m]


def test_light_imports():
    heavy = _imports_in_subprocess(["raykd", "raykd.cli", "raykd.config", "raykd.signals", "raykd.teacher.service",
                                    "raykd.train.loop", "raykd.train.loop_config", "raykd.teacher.build"])
    assert heavy == [], f"heavy modules imported: {heavy}"


def test_loss_is_pure_torch():
    loss = sorted(m for m in MODULES if m.startswith("raykd.loss"))
    assert set(_imports_in_subprocess(loss)) <= {"torch"}
    for mod in loss:
        for name, _ in _imported(MODULES[mod]):
            root = name.split(".")[0]
            assert root not in ("ray", "mlflow", "transformers", "vllm"), f"{mod} imports {name}"
            if root == "raykd":
                assert name.startswith(("raykd.loss", "raykd.config")), f"{mod} imports {name}: loss/ is a bottom layer"


def test_config_and_signal_format_import_no_framework():
    pure = sorted(m for m in MODULES if m.startswith("raykd.config")) + ["raykd.signals.format"]
    assert _imports_in_subprocess(pure) == []
    for mod in pure:
        for name, _ in _imported(MODULES[mod]):
            assert name.split(".")[0] not in HEAVY, f"{mod} imports {name}"
            if mod.startswith("raykd.config") and name.startswith("raykd"):
                assert name.startswith("raykd.config"), f"{mod} imports {name}: config/ is the bottom layer"


def test_no_import_cycles_between_modules_or_subpackages():
    assert _cycle(_graph(module_level_only=True)) is None
    assert (cycle := _cycle(_graph())) is None, f"import cycle (imports inside functions counted): {cycle}"
    packages: dict[str, set[str]] = defaultdict(set)
    for mod, targets in _graph().items():
        for target in targets:
            a, b = mod.split(".")[:2], target.split(".")[:2]
            if len(a) == 2 and len(b) == 2 and a != b:
                packages[a[1]].add(b[1])
    assert (cycle := _cycle(packages)) is None, f"subpackages import each other: {cycle}"


def test_files_stay_readable_and_the_top_stays_small():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


@pytest.mark.parametrize("package", sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()))
def test_every_subpackage_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((PKG / package / "__init__.py").read_text())) or ""
    assert "Owns" in doc and "May import" in doc, f"raykd/{package}/__init__.py: say what it owns and may import"
