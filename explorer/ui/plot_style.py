"""One plot style for every panel: pyqtgraph plots, heatmaps and colour maps follow the theme.

`style(plot)` gives a PlotWidget, PlotItem or GraphicsLayoutWidget the current theme's background,
axis pens, text colour and font size (the UI font's, so presenter mode's bigger text reaches the
plots) and keeps it so: when `theme.apply()` changes the theme, every plot styled here is styled
again and every callback registered with `follow()` runs (heatmaps take the theme's colour map for
their role; panels redraw colours they baked into images or brushes). The colours themselves live in
`theme` (palette, colour maps by role, plot frame colours).
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from collections.abc import Callable

import pyqtgraph as pg
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import QApplication

from . import theme
from .theme import OKABE_ITO, SERIES  # noqa: F401 - re-exported: panels take colours from here

log = logging.getLogger(__name__)

AXES = ("left", "bottom", "right", "top")

# what to do again on a theme change: (weak reference to the owner, callback or None = style(owner))
_followers: list[tuple[weakref.ref, Callable[[], None] | None]] = []
_connected = False


# --- axes -----------------------------------------------------------------------------------------
FINE_STEPS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)  # for bars, whose length should fill the plot


def headroom(value: float, steps: tuple[float, ...] = (1.0, 2.0, 2.5, 5.0)) -> float:
    """The smallest "round" number (`steps` x a power of ten) at or above `value`: the top of an axis that grows
    while a run streams. An axis whose range moves at every step is laid out again in Python and repaints the
    whole plot (2-3 ms an axis per step); one that moves to round numbers only does that a few times a run."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next((m * power for m in (*steps, 10.0) if m * power >= value * (1 - 1e-9)), 10.0 * power)


# --- colours --------------------------------------------------------------------------------------
def colormap(role: str = "sequential") -> pg.ColorMap:
    """The pyqtgraph colour map for `role` (sequential, heat, diverging, cyclic) in the current theme."""
    return pg.colormap.get(theme.colormap(role))


def ink() -> QColor:
    """Text and marker colour that reads on the current plot background."""
    return QColor(theme.plot_colours().text)


def faint() -> QColor:
    """Grid, reference lines and other neutral marks."""
    return QColor(theme.plot_colours().faint)


def background() -> QColor:
    return QColor(theme.plot_colours().background)


def fill() -> QColor:
    """A text item's backing box: the plot background, slightly see-through."""
    return pg.mkColor(theme.plot_colours().fill)  # "#RRGGBBAA" (QColor would read it as #AARRGGBB)


def series(i: int) -> str:
    """The i-th categorical colour (Okabe-Ito), repeating."""
    return SERIES[i % len(SERIES)]


def font(scale: float = 1.0) -> QFont:
    """The UI font (bigger in presenter mode) times `scale`."""
    app = QApplication.instance()
    f = QFont(app.font()) if app is not None else QFont()
    size = f.pointSizeF() if f.pointSizeF() > 0 else 10.0
    f.setPointSizeF(size * scale)
    return f


# --- styling --------------------------------------------------------------------------------------
def plot_items(target) -> list[pg.PlotItem]:
    """The PlotItems of a PlotWidget, a GraphicsLayoutWidget (every plot in its layout) or a PlotItem."""
    if isinstance(target, pg.PlotItem):
        return [target]
    if isinstance(target, pg.PlotWidget):
        return [target.getPlotItem()]
    if isinstance(target, pg.GraphicsLayoutWidget):
        return [item for item in target.ci.items if isinstance(item, pg.PlotItem)]
    raise TypeError(f"cannot style a {type(target).__name__}")


def brush(*colour):
    """One shared brush object per colour (as pg.mkBrush takes it). pyqtgraph renders a scatter symbol once per pen
    and brush *object*: a new object at every redraw renders every point again and grows its symbol atlas without
    end."""
    return _brush(*(c.getRgb() if isinstance(c, QColor) else c for c in colour))


@functools.lru_cache(maxsize=1024)
def _brush(*colour):
    return pg.mkBrush(*colour)


NO_PEN = pg.mkPen(None)  # one shared "no outline" pen for scatters (see `brush`)
_DEFAULT = object()


def symbol_style(fill, outline=_DEFAULT) -> dict:
    """symbolBrush and symbolPen for a PlotDataItem with symbols, as shared objects (see `brush`): given as colours,
    pyqtgraph makes new ones at every setData (and its default outline is a colour too). `outline` None: none."""
    pen = NO_PEN if outline is None else pg.mkPen(fill if outline is _DEFAULT else outline)
    return {"symbolBrush": brush(*fill) if isinstance(fill, tuple) else brush(fill), "symbolPen": pen}


# --- grids -----------------------------------------------------------------------------------------------------
def grid(target, *, x: bool = False, y: bool = False, alpha: float = 0.25):
    """Grid lines on a plot's x and/or y axes, `alpha` of the way from the background to the axis colour; returns
    the plot. The lines are opaque, mixed from the theme's colours (`style` mixes them again on a theme change),
    and drawn behind the data: Qt's software rasteriser blends a semi-transparent 1-px line pixel by pixel, so
    pyqtgraph's own translucent grid cost 5 ms of every paint of a 700 x 500 plot (10 ms for the vocabulary
    map), 12 times what the same lines cost opaque."""
    for item in plot_items(target):
        item.showGrid(x=x or None, y=y or None, alpha=alpha)
    _opaque_grid(target)
    return target


def _opaque_grid(target) -> None:
    for item in plot_items(target):
        for name in AXES:
            axis = item.getAxis(name)
            if axis.grid is not False and not isinstance(axis.__dict__.get("generateDrawSpecs"), functools.partial):
                axis.generateDrawSpecs = functools.partial(_opaque_specs, axis)  # (this axis only)
                axis.setZValue(item.vb.zValue() - 1)  # under the view box: an opaque line never covers the data
            axis.picture = None  # drawn again in the (new) theme's colours


def _opaque_specs(axis: pg.AxisItem, painter):
    """pyqtgraph's lines and labels for an axis, each translucent grid or tick line replaced by the opaque colour
    it shows on the background (its alpha of the way from the theme's background to its colour): the same
    picture, with pyqtgraph's fainter minor lines, at a twelfth of the cost."""
    specs = pg.AxisItem.generateDrawSpecs(axis, painter)
    if specs is None:
        return None
    axis_spec, ticks, texts = specs
    back = QColor(theme.plot_colours().background).getRgbF()
    opaque = []
    for pen, p1, p2 in ticks:
        colour = pen.color()
        if colour.alpha() < 255:
            a, line = colour.alphaF(), colour.getRgbF()
            pen = pg.mkPen(pen)  # (a copy)
            pen.setColor(QColor.fromRgbF(*(back[i] * (1 - a) + line[i] * a for i in range(3))))
        opaque.append((pen, p1, p2))
    return axis_spec, opaque, texts


def style(target, *, follow: bool = True, tick_scale: float = 0.9):
    """Style a plot for the current theme (and again on every theme change when `follow`); returns it."""
    c = theme.plot_colours()
    if isinstance(target, pg.PlotWidget | pg.GraphicsLayoutWidget):
        target.setBackground(c.background)
    tick_font = font(tick_scale)
    label_pt = font().pointSizeF()
    for item in plot_items(target):
        for name in AXES:
            axis = item.getAxis(name)
            axis.setPen(c.axis)
            axis.setTextPen(c.text)  # also the axis title's colour
            axis.setTickFont(tick_font)
            axis.labelStyle["font-size"] = f"{label_pt:.1f}pt"
            axis._updateLabel()  # pyqtgraph has no public way to restyle a label without resetting its text
        _opaque_grid(item)
        legend = item.legend
        if legend is not None:
            legend.setLabelTextColor(c.text)
            legend.setLabelTextSize(f"{label_pt * tick_scale:.1f}pt")
            legend.setBrush(fill())
            legend.setPen(c.axis)
            for _sample, label in legend.items:  # setAttr above does not re-render existing labels
                label.setText(label.text)
        # a title keeps these options through later setTitle(text) calls (pyqtgraph merges them)
        item.titleLabel.opts.update(color=c.text, size=f"{label_pt:.1f}pt")
        if item.titleLabel.text:
            item.titleLabel.setText(item.titleLabel.text)
    if follow:
        _track(target, None)
    return target


def follow(owner, callback: Callable[[], None]) -> None:
    """Call `callback` (a bound method of `owner`, or a function) after every theme change while `owner`
    lives; held weakly, so following never keeps a widget alive."""
    _track(owner, callback)


def _track(owner, callback: Callable[[], None] | None) -> None:
    _connect()
    ref = weakref.ref(owner)
    if callback is not None and getattr(callback, "__self__", None) is owner:
        method = weakref.WeakMethod(callback)
        callback = lambda: method()()  # noqa: E731 - do not hold the owner through its bound method
    for i, (r, cb) in enumerate(_followers):
        if r() is owner and cb is None and callback is None:
            return  # already styled on theme changes
        if r() is None:
            _followers[i] = (ref, callback)
            return
    _followers.append((ref, callback))


def restyle_all() -> int:
    """Style every followed plot again and run every follower (theme.apply calls this through its signal);
    returns how many ran. A follower whose widget Qt already deleted is dropped."""
    alive = []
    for ref, callback in list(_followers):
        owner = ref()
        if owner is None:
            continue
        try:
            if callback is None:
                style(owner, follow=False)
            else:
                callback()
        except RuntimeError as exc:  # the C++ object is gone (its window closed)
            if "already deleted" not in str(exc):
                log.exception("restyling %s failed", type(owner).__name__)
                alive.append((ref, callback))
            continue
        alive.append((ref, callback))
    _followers[:] = alive
    return len(alive)


def _connect() -> None:
    global _connected
    if not _connected:
        theme.events().changed.connect(restyle_all)
        _connected = True
