"""Readability at small sizes: axis labels thin out instead of overlapping, logit-lens cell text only
when cells are big enough on screen, the attention overview fills its area, the next-token panel fits."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.core.api import capture
from explorer.ui.panels.attention_overview import OverviewGrid
from explorer.ui.panels.depth import MIN_LABEL_CELL, DepthPanel
from explorer.ui.panels.next_token import NextTokenPanel
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background
from explorer.ui.widgets.heatmap import Heatmap, tick_step


@pytest.fixture(scope="module")
def run(tiny_llama):
    return capture("The capital of France is Paris. The capital of Italy is", tiny_llama, max_new_tokens=3)


def _ticks(heatmap: Heatmap, axis: str) -> list[tuple[float, str]]:
    return heatmap.plot.getAxis(axis)._tickLevels[0]


def test_tick_step_is_a_nice_number_that_fits():
    assert tick_step(0.0, 20) == 1  # size unknown yet
    assert tick_step(30, 20) == 1
    for cell, label in ((4.0, 15.0), (3.9, 15.0), (0.7, 15.0), (11.0, 60.0)):
        step = tick_step(cell, label)
        assert step * cell >= label and step in (1, 2, 5, 10, 20, 50, 100)


def test_heatmap_thins_row_labels_when_rows_are_short(qtbot):
    heatmap = Heatmap()
    qtbot.addWidget(heatmap)
    heatmap.resize(500, 700)
    heatmap.show()
    labels = [f"layer{i}" for i in range(31)]
    heatmap.set_data(np.random.default_rng(0).random((31, 8)), row_labels=labels, col_labels=list("abcdefgh"))
    qtbot.waitUntil(lambda: len(_ticks(heatmap, "left")) == 31)  # ~20 px rows: every label fits
    heatmap.resize(500, 160)
    qtbot.waitUntil(lambda: len(_ticks(heatmap, "left")) < 31)
    ticks = _ticks(heatmap, "left")
    rows = heatmap.plot.vb.height() / 31
    spacing = (ticks[1][0] - ticks[0][0]) * rows
    assert spacing >= heatmap.view.fontMetrics().height()  # neighbouring labels do not overlap
    assert ticks[0][1] == "layer0" and ticks[1][1] == f"layer{round(spacing / rows)}"


def test_lens_text_only_in_big_cells(qtbot, run):
    sel = Selection()
    panel = DepthPanel(sel)
    qtbot.addWidget(panel)
    panel.resize(900, 500)
    panel.show()
    panel.set_run(run)
    Background.wait_idle()
    qtbot.waitUntil(lambda: panel.table is not None and bool(panel.table.done.all()))

    def shown() -> int:
        return sum(item.isVisible() for item in panel._texts)

    panel.lens.plot.setRange(xRange=(0, 40), yRange=(0, panel.table.rows), padding=0)
    qtbot.wait(20)
    w, h = panel.cell_pixels()
    assert w < MIN_LABEL_CELL[0] and shown() == 0  # 40 columns across ~800 px: colour only
    panel.lens.plot.setRange(xRange=(0, 3), yRange=(0, 40), padding=0)
    qtbot.wait(20)
    w, h = panel.cell_pixels()
    assert h < MIN_LABEL_CELL[1] and shown() == 0  # wide but short cells: colour only
    panel.lens.plot.setRange(xRange=(0, 3), yRange=(0, 2), padding=0)
    qtbot.wait(20)
    w, h = panel.cell_pixels()
    assert w >= MIN_LABEL_CELL[0] and h >= MIN_LABEL_CELL[1]
    assert shown() > 0
    item = next(i for i in panel._texts if i.isVisible())
    assert item.textItem.boundingRect().height() <= h  # the text fits its cell


def test_overview_turns_sideways_in_a_wide_area_and_clicks_still_map(qtbot):
    grid = OverviewGrid()
    qtbot.addWidget(grid)
    grid.resize(700, 260)
    grid.show()
    grid.reset(30, 9, 3)
    qtbot.waitUntil(lambda: grid.transposed)
    vb = grid.plot.vb
    (x0, x1), (y0, y1) = vb.viewRange()
    sx, sy = vb.width() / (x1 - x0), vb.height() / (y1 - y0)
    assert max(sx, sy) / min(sx, sy) <= 2.0 + 1e-6
    # thumbnails fill at least one direction of the area
    h, w = grid.rgb.shape[:2]
    assert (x1 - x0) <= h * 1.001 or (y1 - y0) <= w * 1.001
    grid.select(4, 7)
    rect = grid.marker.rect()
    assert rect.x() == grid.layer_y(4) - 1 and rect.y() == grid.head_x(7) - 1  # the marker moved with the image
    grid.resize(260, 700)
    qtbot.waitUntil(lambda: not grid.transposed)


def test_next_token_panel_fits_a_small_dock_without_scrolling(qtbot, run):
    from PySide6.QtWidgets import QFrame, QScrollArea

    sel = Selection()
    panel = NextTokenPanel(sel)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setWidget(panel)
    qtbot.addWidget(area)
    area.resize(520, 380)
    area.show()
    sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers, heads=run.info.n_heads)
    panel.set_run(run)
    qtbot.wait(20)
    assert not area.verticalScrollBar().isVisible()


def test_check_boxes_keep_a_visible_frame_on_black(qtbot):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor
    from PySide6.QtWidgets import QCheckBox, QListWidget, QListWidgetItem, QStyle, QStyleOptionButton

    from explorer.ui import theme

    before = theme.state()
    theme.apply(presenter=True)  # high contrast: black window and base
    try:
        box = QCheckBox("option")
        qtbot.addWidget(box)
        box.resize(200, 50)
        option = QStyleOptionButton()
        box.initStyleOption(option)
        rect = box.style().subElementRect(QStyle.SE_CheckBoxIndicator, option, box)
        assert rect.width() >= 18  # bigger indicators in presenter mode
        image = box.grab().toImage()
        light = max(QColor(image.pixel(x, y)).lightness() for x in range(rect.left(), rect.right() + 1)
                    for y in range(rect.top(), rect.bottom() + 1))
        assert light > 180  # the unchecked box's frame shows against the black background
        items = QListWidget()  # checkable items (the interventions list): their boxes show too
        qtbot.addWidget(items)
        item = QListWidgetItem("ablate L1 H2")
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        item.setCheckState(Qt.Unchecked)
        items.addItem(item)
        items.resize(300, 100)
        items.show()
        row = items.visualItemRect(item)
        image = items.viewport().grab().toImage()
        light = max(QColor(image.pixel(x, y)).lightness() for x in range(row.left(), row.left() + row.height())
                    for y in range(row.top(), row.bottom() + 1))
        assert light > 180
    finally:
        theme.apply(name=before.name, presenter=before.presenter)
