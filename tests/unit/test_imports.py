"""The import graph, built from the source with ``ast``: no cycle between bertmt's and launch's modules, and
the command line, the run lifecycle and the cluster launchers import no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file, lazy imports included)."""
    files = {_module(p): p for d in ("bertmt", "launch") for p in (REPO / d).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            deps |= {n for n in names if n in files and n != name}
        graph[name] = deps
    return graph


def test_the_import_graph_has_no_cycle():
    graph, state, stack = _graph(), {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert "bertmt.run" in graph and "bertmt.cli" in graph  # the graph was built


def test_the_cli_run_lifecycle_and_launchers_import_no_torch():
    code = (
        "import sys, bertmt.cli, bertmt.run, bertmt.rundir, launch.sweep, launch.summary, launch.render, "
        "launch.submitit_job, launch.hostfile, launch.tune, launch.tune_spec, launch.study, "
        "launch.tune_summary, launch.tune_worker; "
        "print(sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_data_model_and_mtl_import_neither_the_config_engine_nor_run():
    """data/, model/ and mtl/ are building blocks: they take Task objects and plain settings."""
    forbidden = ("bertmt.config", "bertmt.engine", "bertmt.run", "bertmt.rundir")
    graph = _graph()
    found = {
        (module, dep)
        for module, deps in graph.items()
        if module.startswith(("bertmt.data", "bertmt.model", "bertmt.mtl"))
        for dep in deps
        if dep.startswith(forbidden)
    }
    assert not found
    assert any(m.startswith("bertmt.data.") for m in graph)  # the packages were seen


def test_the_trainer_imports_the_optional_optimiser_library_only_when_a_run_uses_it():
    """pytorch-optimizer (Lion, AdaFactor, SophiaH) pulls in more of transformers: 0.5-1 s of start-up
    that every training process (hundreds in the test suite) would pay for AdamW runs too."""
    code = "import sys, bertmt.engine.trainer; print('pytorch_optimizer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
