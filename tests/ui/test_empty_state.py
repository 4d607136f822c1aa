"""Before a run, every plot of every panel says what will appear there instead of showing made-up axes."""

from __future__ import annotations

import pyqtgraph as pg
import pytest
from PySide6.QtWidgets import QApplication, QLabel

from explorer.core.api import capture
from explorer.ui.empty_state import KEEP, empty_text
from explorer.ui.panels import REGISTRY, panel_class
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background

pytest.importorskip("pytestqt")


def _covers(view) -> list[QLabel]:
    return [c for c in view.findChildren(QLabel, "lmx_empty_cover") if c.parent() is view]


@pytest.fixture(scope="module")
def run(tiny_llama):
    return capture("one two three", tiny_llama, max_new_tokens=2)


def test_every_plot_is_covered_until_a_run(qtbot, run):
    for name in REGISTRY:
        sel = Selection()
        panel = panel_class(name)(sel)
        qtbot.addWidget(panel)
        panel.resize(900, 600)
        panel.show()
        QApplication.processEvents()
        views = [v for v in panel.findChildren(pg.GraphicsView) if not v.property(KEEP)]
        for view in views:
            covers = _covers(view)
            assert len(covers) == 1 and covers[0].isVisibleTo(view), f"{name}: a plot shows empty axes"
            assert covers[0].text() == empty_text(panel.title)
            assert covers[0].size() == view.size()
        sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers,
                       heads=run.info.n_heads)
        panel.set_run(run)
        # uncovered once there is something to show (the Depth lab shows checkpoints, not the run)
        assert all(c.isVisibleTo(v) == panel.is_empty() for v in views for c in _covers(v)), name
        panel.set_run(None)
        assert all(c.isVisibleTo(v) for v in views for c in _covers(v)), name
        Background.wait_idle()
        QApplication.processEvents()
