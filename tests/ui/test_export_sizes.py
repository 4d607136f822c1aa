"""Export: a PNG at a chosen scale and DPI (re-rendered, not the on-screen grab), SVG symbols as vectors,
and file dialogs that start in the documents folder."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import QStandardPaths
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication, QLabel, QVBoxLayout, QWidget

from explorer.ui.export import documents_dir, export_widget

pytest.importorskip("pytestqt")


def _panel(qtbot) -> QWidget:
    w = QWidget()
    layout = QVBoxLayout(w)
    layout.addWidget(QLabel("a title"))
    plot = pg.PlotWidget()
    plot.plot(np.arange(8), np.arange(8) ** 2, symbol="o", symbolSize=9)
    layout.addWidget(plot)
    qtbot.addWidget(w)
    w.resize(400, 300)
    w.show()
    QApplication.processEvents()
    return w


def test_png_at_a_chosen_scale_and_dpi(qtbot, tmp_path):
    w = _panel(qtbot)
    path = export_widget(w, tmp_path / "big.png", scale=2.5, dpi=300)
    image = QImage(str(path))
    assert (image.width(), image.height()) == (1000, 750)
    assert round(image.dotsPerMeterX() * 0.0254) == 300
    one = QImage(str(export_widget(w, tmp_path / "one.png")))
    assert (one.width(), one.height()) == (400, 300)
    with pytest.raises(ValueError, match="smaller"):
        export_widget(w, tmp_path / "huge.png", scale=100)


def test_svg_draws_scatter_symbols_as_vectors(qtbot, tmp_path):
    w = _panel(qtbot)
    text = export_widget(w, tmp_path / "p.svg").read_text()
    small_images = [s for s in text.split("<image")[1:] if 'width="9"' in s[:80] or 'width="10"' in s[:80]]
    assert not small_images, "symbols embedded as bitmaps"
    assert text.count("<path") >= 8  # the curve and one path per symbol
    item = next(i for i in w.findChildren(pg.PlotWidget)[0].getPlotItem().items if isinstance(i, pg.PlotDataItem))
    assert item.scatter.opts["useCache"] is True  # the screen keeps its cache


def test_dialogs_start_in_the_documents_folder():
    assert documents_dir() == (QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation) or documents_dir())
    import inspect

    from explorer.ui import file_actions, main_window, menus

    for module in (file_actions, menus, main_window):
        src = inspect.getsource(module)
        for call in ("getSaveFileName(", "getOpenFileName("):
            at = [i for i in range(len(src)) if src.startswith(call, i)]
            for i in at:
                assert "documents_dir()" in src[i - 200: i + 200], f"{module.__name__}: a dialog elsewhere"


def test_every_file_dialog_opens_in_the_documents_folder():
    """The class of issue 18's finding (dialogs opened in the current directory): every QFileDialog call in the
    app passes a start folder built from documents_dir()."""
    import ast
    from pathlib import Path

    import explorer

    root = Path(explorer.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("getOpenFileName", "getSaveFileName", "getExistingDirectory",
                                           "getOpenFileNames")):
                start = node.args[2] if len(node.args) > 2 else None
                names = {n.id for n in ast.walk(start) if isinstance(n, ast.Name)} if start is not None else set()
                calls = {n.func.id for n in ast.walk(start) if isinstance(n, ast.Call)
                         and isinstance(n.func, ast.Name)} if start is not None else set()
                if "documents_dir" not in calls and "start" not in names:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
