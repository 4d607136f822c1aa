"""Tables fill in one pass: refilling the head-statistics table of a 30 x 9 model must not re-measure
every row after each cell (it made 14.7 million pixelMetric calls and froze the GUI for ~2 minutes)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtWidgets import QApplication, QHeaderView, QProxyStyle, QTableWidget

from explorer.core.analysis.attention import STAT_NAMES, LayerSummary
from explorer.ui.main_window import MainWindow
from explorer.ui.panels import REGISTRY, panel_class
from explorer.ui.panels.attention_overview import HeadStatsTable
from explorer.ui.selection import Selection
from explorer.ui.settings import open_settings

pytest.importorskip("pytestqt")


class _Counting(QProxyStyle):
    def __init__(self):
        super().__init__("Fusion")
        self.calls = 0

    def pixelMetric(self, *args):
        self.calls += 1
        return super().pixelMetric(*args)


def _summaries(layers: int, heads: int) -> list[LayerSummary]:
    rng = np.random.default_rng(0)
    return [LayerSummary(i, rng.random((heads, len(STAT_NAMES))), np.zeros((heads, 4, 4))) for i in range(layers)]


def test_refilling_head_statistics_measures_rows_once(qtbot, tmp_path):
    """In the window (every panel docked), with Head statistics showing, as after each run."""
    app = QApplication.instance()
    old_style = app.style().name()
    window = MainWindow(open_settings(tmp_path / "s.json"), autoload=False, autorun=False)
    qtbot.addWidget(window)
    window.resize(1600, 1000)
    window.show()
    qtbot.waitExposed(window)
    attention = window.docks["attention"].panel
    table = attention.stats
    attention.tabs.setCurrentWidget(table)
    app.processEvents()
    assert isinstance(table, HeadStatsTable) and table.table.isVisible()
    style = _Counting()
    app.setStyle(style)
    try:
        summaries = _summaries(30, 9)
        table.set_summaries(summaries, 3)  # the first run (filled a chunk of rows per event-loop turn)
        qtbot.waitUntil(lambda: table.table.rowCount() == 30 * 9 and table.table.isSortingEnabled(), timeout=10000)
        style.calls = 0
        table.set_summaries(summaries, 3)  # the next run: the old code re-measured every row after each cell
        qtbot.waitUntil(lambda: table.table.rowCount() == 30 * 9 and table.table.isSortingEnabled(), timeout=10000)
        app.processEvents()
        cells = 30 * 9 * (4 + len(STAT_NAMES))
        assert table.table.rowCount() == 30 * 9
        assert style.calls < 10 * cells, f"{style.calls} pixelMetric calls to fill {cells} cells"
    finally:
        app.setStyle(old_style)
        window.close()


def test_no_panel_table_resizes_to_contents_per_cell(qtbot):
    """The class: no table in any registered panel keeps a header in ResizeToContents mode."""
    for name in REGISTRY:
        panel = panel_class(name)(Selection())
        qtbot.addWidget(panel)
        for table in panel.findChildren(QTableWidget):
            for header in (table.horizontalHeader(), table.verticalHeader()):
                modes = {header.sectionResizeMode(i) for i in range(header.count())}
                assert QHeaderView.ResizeToContents not in modes, f"{name}: {table.objectName() or table}"
