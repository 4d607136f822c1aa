"""explorer/core must stay importable without Qt: a notebook user gets the engine alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "explorer" / "core"
FORBIDDEN = ("PySide6", "PySide2", "PyQt5", "PyQt6", "pyqtgraph", "qtpy", "superqt", "shiboken6", "shiboken2",
             "qtawesome")


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ) and node.args and isinstance(node.args[0], ast.Constant):
            names.append(str(node.args[0].value))
    return names


def test_core_sources_import_no_qt():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 10, "the core package was not found"
    offenders = []
    for path in files:
        for name in _imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(CORE.parent.parent)}: {name}")
    assert not offenders, "explorer/core imports Qt: " + ", ".join(offenders)


def test_the_checker_sees_qt_imports():
    tree = ast.parse("import PySide6.QtCore\nfrom pyqtgraph import ImageItem\nimportlib.import_module('qtpy')")
    roots = {n.split(".")[0] for n in _imported_modules(tree)}
    assert {"PySide6", "pyqtgraph", "qtpy"} <= roots


def test_importing_the_core_loads_no_qt_module():
    modules = [f"explorer.core.{p.stem}" for p in sorted(CORE.glob("*.py")) if p.stem != "__init__"]
    modules += [f"explorer.core.analysis.{p.stem}" for p in sorted((CORE / "analysis").glob("*.py"))
                if p.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import explorer\nexplorer.capture, explorer.load_run\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print('QT:' + ','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=CORE.parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "QT:", out.stdout
