"""One plot style: every panel's plots follow the theme (no plot on white in the dark theme) and presenter
mode puts the colour-blind-safe map on every heatmap, read back from the image items' lookup tables."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import QEvent
from PySide6.QtGui import QColor, QImage, QPainter, QPalette
from PySide6.QtWidgets import QApplication

from explorer.core.api import capture
from explorer.ui import plot_style, theme
from explorer.ui.panels import REGISTRY
from explorer.ui.widgets.background import Background
from explorer.ui.widgets.heatmap import Heatmap

PANELS = sorted(REGISTRY)
NO_PLOTS = {"tokens"}  # text only


@pytest.fixture(scope="module")
def run(tiny_llama):
    return capture("The cat sat on the mat. The cat sat", tiny_llama, max_new_tokens=3)


def _settle() -> None:
    for _ in range(3):
        Background.wait_idle()
        QApplication.processEvents()


def _views(widget) -> list[pg.GraphicsView]:
    return widget.findChildren(pg.GraphicsView)


def _plot_items(view: pg.GraphicsView) -> list[pg.PlotItem]:
    return [item for item in view.scene().items() if isinstance(item, pg.PlotItem)]


def _image_items(widget) -> list[pg.ImageItem]:
    return [item for view in _views(widget) for item in view.scene().items() if isinstance(item, pg.ImageItem)]


def _assert_themed(panel) -> None:
    c = theme.plot_colours()
    views = _views(panel)
    assert views or type(panel).__module__.rsplit(".", 1)[-1] in NO_PLOTS, "a plot panel without plots?"
    for view in views:
        bg = view.backgroundBrush().color().name()
        assert bg == QColor(c.background).name(), (type(panel).__name__, type(view.parent()).__name__, bg)
        for item in _plot_items(view):
            for name in ("left", "bottom"):
                axis = item.getAxis(name)
                assert axis.textPen().color().name() == QColor(c.text).name(), (type(panel).__name__, name)
                assert axis.pen().color().name() == QColor(c.axis).name(), (type(panel).__name__, name)
                if axis.grid is not False:
                    _assert_opaque_grid(axis, item, c, type(panel).__name__)
            if item.legend is not None:
                for _sample, label in item.legend.items:
                    html = label.item.toHtml().lower()
                    assert f"color:{QColor(c.text).name()}" in html, (type(panel).__name__, label.text)
            if item.titleLabel.text:
                assert QColor(item.titleLabel.opts["color"]).name() == QColor(c.text).name(), type(panel).__name__


def _assert_opaque_grid(axis, item, c, where: str) -> list[str]:
    """Grid lines are opaque (a translucent 1-px line costs Qt's software rasteriser 12 times as much), each the
    colour its translucent line showed on the theme's background, and under the data. Returns their colours."""
    image = QImage(400, 300, QImage.Format_ARGB32_Premultiplied)
    painter = QPainter(image)
    try:
        _axis, ticks, _texts = axis.generateDrawSpecs(painter)
    finally:
        painter.end()
    assert ticks, where
    back, ink = QColor(c.background).getRgbF(), QColor(c.axis).getRgbF()
    for pen, _p1, _p2 in ticks:
        colour = pen.color().getRgbF()
        assert pen.color().alpha() == 255, where
        for i in range(3):  # on the line from the background to the axis colour
            assert min(back[i], ink[i]) - 1e-3 <= colour[i] <= max(back[i], ink[i]) + 1e-3, (where, pen.color().name())
    assert axis.zValue() < item.vb.zValue(), where
    return sorted({pen.color().name() for pen, _p1, _p2 in ticks})


def _lut(name: str, like: np.ndarray) -> np.ndarray:
    return pg.colormap.get(name).getLookupTable(nPts=like.shape[0], alpha=like.shape[1] == 4)


def _role_of_lut(lut: np.ndarray, which: int) -> str | None:
    for role, names in theme.COLORMAPS.items():
        if np.array_equal(lut, _lut(names[which], lut)):
            return role
    return None


@pytest.mark.parametrize("name", PANELS)
def test_plots_follow_the_theme_when_it_changes_and_when_built_in_it(make_panel, run, name):
    panel, _ = make_panel(name, run, draw=False)
    panel.set_run(run)
    _settle()
    for t in ("dark", "light"):
        theme.apply(name=t)
        _assert_themed(panel)
    theme.apply(presenter=True)
    _assert_themed(panel)
    theme.apply(name="dark", presenter=False)
    fresh, _ = make_panel(name, run, draw=False)  # built in the dark theme
    fresh.set_run(run)
    _settle()
    _assert_themed(fresh)


@pytest.mark.parametrize("name", PANELS)
def test_presenter_mode_puts_the_colour_blind_safe_map_on_every_heatmap(make_panel, run, name):
    panel, _ = make_panel(name, run, draw=False)
    panel.set_run(run)
    _settle()
    items = [i for i in _image_items(panel) if i.lut is not None]
    roles = [_role_of_lut(np.asarray(i.lut), 0) for i in items]
    assert None not in roles, f"{name}: a heatmap whose map is not the theme's for any role"
    theme.apply(presenter=True)
    for item, role in zip(items, roles, strict=True):
        assert np.array_equal(item.lut, _lut(theme.COLORMAPS[role][1], np.asarray(item.lut))), (name, role)
    theme.apply(presenter=False)
    for item, role in zip(items, roles, strict=True):
        assert np.array_equal(item.lut, _lut(theme.COLORMAPS[role][0], np.asarray(item.lut))), (name, role)


def test_attention_overview_thumbnails_repaint_in_the_safe_map(make_panel, run, qtbot):
    panel, _ = make_panel("attention", run)
    qtbot.waitUntil(lambda: len(panel._summaries) == run.info.n_layers, timeout=20000)
    _settle()

    def thumb_colours() -> set[tuple[int, int, int]]:
        grid = panel.overview
        x, y = grid.head_x(0), grid.layer_y(0)
        return {tuple(c) for c in grid.rgb[y: y + grid.size, x: x + grid.size].reshape(-1, 3).tolist()}

    def in_map(colours, name) -> bool:
        table = {tuple(c) for c in pg.colormap.get(name).map(np.linspace(0, 1, 4096), mode="byte")[:, :3].tolist()}
        return colours <= table

    assert in_map(thumb_colours(), "viridis") and not in_map(thumb_colours(), "cividis")
    theme.apply(presenter=True)
    assert in_map(thumb_colours(), "cividis") and not in_map(thumb_colours(), "viridis")


def test_heatmap_roles_and_detail_overlay_follow_presenter_mode(qtbot):
    heat = Heatmap("CET-D1", colorbar=False)
    qtbot.addWidget(heat)
    heat.set_data(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), levels=(-1.0, 1.0))
    heat.set_detail(np.zeros((2, 2), np.float32), (0, 0, 2, 2))
    assert heat.role == "diverging"
    theme.apply(presenter=True)
    for item in (heat.image, heat.detail):
        assert np.array_equal(item.lut, _lut("CET-CBD1", np.asarray(item.lut)))
    assert theme.colormap("diverging") == "CET-CBD1" and theme.colormap() == "cividis"


def test_head_view_paints_on_the_theme_base(make_panel, run):
    panel, _ = make_panel("attention", run)
    view = panel.head_view
    theme.apply(name="dark")
    QApplication.processEvents()  # the palette change reaches widgets as an event
    view.resize(300, 200)
    image = view.grab().toImage()
    assert image.pixelColor(2, image.height() - 2).name() == view.palette().color(QPalette.Base).name()
    assert view.palette().color(QPalette.Base).lightness() < 80  # dark, not the white it used to paint


def test_plot_text_scales_with_the_ui_font(qtbot):
    plot = plot_style.style(pg.PlotWidget())
    qtbot.addWidget(plot)
    normal = plot.getAxis("bottom").style["tickFont"].pointSizeF()
    theme.apply(presenter=True)
    bigger = plot.getAxis("bottom").style["tickFont"].pointSizeF()
    assert bigger == pytest.approx(normal * theme.font_scale(), rel=0.02) and bigger > normal


def test_followers_are_held_weakly(qtbot):
    import gc

    plot = plot_style.style(pg.PlotWidget())
    before = plot_style.restyle_all()
    plot.deleteLater()
    del plot
    QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()
    assert plot_style.restyle_all() < before


def test_okabe_ito_colours_are_defined_only_in_theme():
    """The palette has one home: no other module spells an Okabe-Ito colour."""
    from pathlib import Path

    import explorer

    root = Path(explorer.__file__).parent
    codes = [c.lower() for c in theme.OKABE_ITO.values()]
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "theme.py"
                 and any(code in p.read_text().lower() for code in codes)]
    assert offenders == []


@pytest.mark.parametrize("name", PANELS)
def test_every_panel_fits_a_presenter_screen(make_panel, run, name):
    """Presenter fonts are 1.5x: a panel's minimum width must stay within a 1280-pixel screen (with room for a
    dock frame), or the window is wider than the screen and clips."""
    theme.apply(name="dark", presenter=True)
    panel, _ = make_panel(name, run)
    _settle()
    assert panel.minimumSizeHint().width() <= 1200, name


def test_gridded_plots_draw_opaque_lines_in_every_theme(qtbot):
    plot = plot_style.style(plot_style.grid(pg.PlotWidget(), x=True, y=True, alpha=0.25))
    qtbot.addWidget(plot)
    item = plot.getPlotItem()
    shades = []
    for t in ("light", "dark"):
        theme.apply(name=t, presenter=False)
        for name in ("left", "bottom"):
            _assert_opaque_grid(item.getAxis(name), item, theme.plot_colours(), t)
        shades.append(_assert_opaque_grid(item.getAxis("left"), item, theme.plot_colours(), t))
    assert shades[0] != shades[1]  # mixed again for the new background



def test_the_app_style_is_qts_own_with_no_python_in_its_calls(qtbot):
    """A style written in Python (a QProxyStyle subclass) is called from C++ thousands of times a second while
    widgets paint, and each call waits for the GIL whenever a background analysis holds it."""
    for presenter in (False, True):
        theme.apply(name="dark", presenter=presenter)
        style = QApplication.style()
        assert type(style).__module__.startswith("PySide6"), type(style)
        assert style.metaObject().className() in ("QFusionStyle", "QStyleSheetStyle")
    theme.apply(name="light", presenter=False)
    assert QApplication.style().metaObject().className() == "QFusionStyle"
