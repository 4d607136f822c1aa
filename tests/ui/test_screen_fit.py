"""Presenter mode is for a room: the window chooses a dock layout that fits its screen (1280x720 and 1920x1080),
nothing is clipped or squeezed, no dock needs scroll bars, tab names stay whole, toolbars wrap, and plot text
follows the UI font (presenter size, zoom) in every panel."""

from __future__ import annotations

import pyqtgraph as pg
import pytest
from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtWidgets import QApplication, QCheckBox, QPushButton, QTabBar, QWidget

from explorer.ui import screen_fit, theme
from explorer.ui.panels import REGISTRY
from explorer.ui.screen_fit import choose_plan, fit_problems
from explorer.ui.widgets.background import Background
from explorer.ui.widgets.flow import FlowLayout, labelled

SCREENS = {"720p": QRect(0, 0, 1280, 720), "1080p": QRect(0, 0, 1920, 1080)}


def _settle(rounds: int = 4) -> None:
    for _ in range(rounds):
        Background.wait_idle()
        QApplication.processEvents()


# --- the plan ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "line", "plan"), [
    ((1920, 1080), 14, "wide"),  # normal text (9 pt: 14-pixel lines)
    ((1280, 720), 14, "columns"),  # Attention over Layer depth would need scroll bars in 720 lines
    ((1920, 1080), 21, "columns"),  # presenter text on 1080 lines
    ((1280, 720), 17, "compact"),  # presenter text on 720 lines
    ((700, 400), 17, "single"),
])
def test_the_plan_follows_the_space_in_text_lines(size, line, plan):
    assert choose_plan(QSize(*size), line) == plan
    bigger = choose_plan(QSize(size[0] * 2, size[1] * 2), line)  # more room never gives a smaller plan
    assert screen_fit.PLANS.index(bigger) <= screen_fit.PLANS.index(plan)


def test_presenter_text_is_sized_for_the_screen():
    assert theme.presenter_scale(720) == pytest.approx(1.2)
    assert theme.presenter_scale(1080) == pytest.approx(1.5)
    scales = [theme.presenter_scale(h) for h in range(600, 1400, 20)]
    assert scales == sorted(scales) and min(scales) > 1.0  # never smaller than normal text


def test_zoom_scales_the_ui_font_and_plot_text(qtbot):
    from explorer.ui import plot_style

    plot = plot_style.style(pg.PlotWidget())
    qtbot.addWidget(plot)
    base_ui = QApplication.font().pointSizeF()
    base_tick = plot.getAxis("left").style["tickFont"].pointSizeF()
    theme.apply(zoom=1.4)
    assert QApplication.font().pointSizeF() == pytest.approx(base_ui * 1.4, rel=0.02)
    assert plot.getAxis("left").style["tickFont"].pointSizeF() == pytest.approx(base_tick * 1.4, rel=0.02)
    theme.apply(zoom=100)  # clamped
    assert theme.state().zoom == theme.ZOOM_RANGE[1]


# --- wrapping toolbars -----------------------------------------------------------------------------------
def test_flow_layout_wraps_instead_of_clipping(qtbot):
    host = QWidget()
    qtbot.addWidget(host)
    flow = FlowLayout(host)
    buttons = [QPushButton(f"button number {i}") for i in range(6)]
    for b in buttons:
        flow.addWidget(b)
    flow.addWidget(labelled("Layer", QCheckBox("kept with its label")))
    one_line = flow.sizeHint().width()
    host.resize(one_line // 3, 400)
    host.show()
    _settle(2)
    assert flow.heightForWidth(one_line // 3) > flow.heightForWidth(one_line) * 2  # more lines, taller
    for b in buttons:
        assert b.geometry().right() < host.width() and b.width() >= b.minimumSizeHint().width()
    assert flow.minimumSize().width() < one_line // 3


# --- the real window ---------------------------------------------------------------------------------------
@pytest.fixture
def full_window(tiny_window, monkeypatch, qtbot):
    def make(area: QRect, presenter: bool):
        monkeypatch.setattr(screen_fit, "_screen_area", lambda _w: area)
        w = tiny_window(panels=list(REGISTRY))
        theme.apply(name="dark", presenter=presenter)
        w.resize(area.size())
        w.fit.refit()
        w.apply_default_layout()
        w.prompt_bar.max_new.setValue(3)
        with qtbot.waitSignal(w.run_done, timeout=60000):
            w.run_prompt()
        _settle()
        return w

    return make


def _every_tab_fits(w) -> list[str]:
    problems = []
    for dock in w.docks.values():
        dock.raise_()
        _settle(3)
        problems += [p for p in fit_problems(w) if p not in problems]
    return problems


@pytest.mark.parametrize("screen", list(SCREENS))
def test_presenter_window_fits_the_screen_with_every_tab_shown(full_window, screen):
    area = SCREENS[screen]
    w = full_window(area, presenter=True)
    assert w.fit.plan == choose_plan(area.size())
    assert theme.state().screen_height == area.height()
    hint = w.minimumSizeHint()
    assert hint.width() <= area.width() and hint.height() <= area.height()
    assert w.width() <= area.width() and w.height() <= area.height()
    assert _every_tab_fits(w) == []
    for bar in w.findChildren(QTabBar):
        assert bar.elideMode() == Qt.ElideNone, [bar.tabText(i) for i in range(bar.count())]


def test_dark_window_on_a_720_line_screen_fits(full_window):
    w = full_window(SCREENS["720p"], presenter=False)
    assert w.fit.plan == "columns"
    assert _every_tab_fits(w) == []


def test_fit_problems_sees_a_squeezed_layout(full_window):
    """The check that the tests above rely on can fail: the wide plan squeezed into 720 presenter lines."""
    w = full_window(SCREENS["720p"], presenter=True)
    w.fit.set_plan("wide")
    _settle()
    assert _every_tab_fits(w) != []


def test_plan_changes_with_presenter_mode_and_the_users_layout_comes_back(full_window):
    w = full_window(SCREENS["1080p"], presenter=False)
    assert w.fit.plan == "wide"
    w.docks["kv_cache"].setFloating(True)  # the user's own arrangement
    theme.apply(presenter=True)
    assert w.fit.plan == "columns" and not w.docks["kv_cache"].isFloating()
    theme.apply(presenter=False)
    assert w.fit.plan == "wide" and w.docks["kv_cache"].isFloating()


def test_a_default_window_never_outgrows_a_small_screen(tiny_window, monkeypatch):
    monkeypatch.setattr(screen_fit, "_screen_area", lambda _w: QRect(0, 0, 1280, 720))
    w = tiny_window(load=False)
    assert w.width() <= 1280 and w.height() <= 720  # the 1600x1000 default would not fit


# --- plots follow the UI font in every panel -------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_plot_text_follows_the_ui_font_in_every_panel(make_panel, tiny_llama, name):
    from explorer.core.api import capture

    run = capture("The cat sat on the mat. The cat sat", tiny_llama, max_new_tokens=2)
    panel, _ = make_panel(name, run)
    _settle()
    theme.apply(name="dark", presenter=True, zoom=1.2)
    _settle(2)
    ui = QApplication.font().pointSizeF()
    axes = [item for view in panel.findChildren(pg.GraphicsView) for item in view.scene().items()
            if isinstance(item, pg.AxisItem) and item.isVisible()]
    for axis in axes:
        tick = axis.style["tickFont"]
        assert tick is not None and tick.pointSizeF() >= 0.8 * ui, (name, axis.orientation)
