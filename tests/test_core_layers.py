"""The core's layering: every module imports alone, the top level never reaches up into analysis/,
and the modules' imports form no circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "explorer" / "core"
TOP = sorted(p for p in CORE.glob("*.py") if p.stem != "__init__")
ALL = TOP + sorted(p for p in (CORE / "analysis").glob("*.py") if p.stem != "__init__")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _imports(path: Path) -> set[str]:
    return _imports_of(path.read_text(encoding="utf-8"), _module(path))


def _imports_of(text: str, module: str) -> set[str]:
    """Every core module `text` imports, anywhere in the file (function bodies and TYPE_CHECKING too)."""
    package = module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("explorer")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("explorer"):
                continue
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}  # `from . import sampling` names a module
    known = {_module(p) for p in ALL} | {"explorer.core.analysis"}
    return {m for m in out if m in known}


def test_the_scanner_sees_relative_lazy_and_type_only_imports():
    text = ("from typing import TYPE_CHECKING\nfrom . import sampling\nfrom .analysis.depth import logit_lens\n"
            "if TYPE_CHECKING:\n    from .runner import Session\n"
            "def f():\n    import explorer.core.analysis.kv\n    from ..core.run import Run\n")
    assert _imports_of(text, "explorer.core.budget") == {
        "explorer.core.sampling", "explorer.core.analysis.depth", "explorer.core.runner",
        "explorer.core.analysis.kv", "explorer.core.run"}


def test_top_level_core_never_imports_analysis():
    offenders = [f"{p.name}: {m}" for p in TOP for m in _imports(p) if m.startswith("explorer.core.analysis")]
    assert not offenders, "explorer/core/*.py imports from explorer/core/analysis: " + ", ".join(offenders)


def test_core_imports_form_no_circle():
    graph = {_module(p): _imports(p) - {_module(p)} for p in ALL}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_each_core_module_imports_alone():
    """Each module imported first, into an interpreter holding no explorer module (torch and numpy stay
    loaded, so this takes seconds): none fails on a half-initialised neighbour of a circle."""
    modules = [_module(p) for p in ALL]
    code = (
        "import importlib, sys, traceback\n"
        "import numpy, torch, transformers\n"
        "bad = []\n"
        f"for name in {modules!r}:\n"
        "    for m in [m for m in sys.modules if m == 'explorer' or m.startswith('explorer.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        bad.append(name + ': ' + traceback.format_exc(limit=2))\n"
        "print('BAD:', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "BAD: []", out.stdout[-3000:]
    assert len(modules) >= 30


def test_one_blas_limiter():
    """threadpoolctl is used in one place: core/numeric.py's single_blas_thread."""
    users = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "explorer").rglob("*.py"))
             if "threadpoolctl" in p.read_text(encoding="utf-8")]
    assert users == ["explorer/core/numeric.py"]


def test_the_blas_limiter_limits_to_one_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from explorer.core.numeric import single_blas_thread

    before = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    if not before:
        pytest.skip("numpy reports no BLAS library here")
    with single_blas_thread():
        assert {p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"} == {1}
    assert [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"] == before
