"""Themes (light, dark, presenter high-contrast): the one home of the app's colours.

It owns the Okabe-Ito palette (`OKABE_ITO`, `SERIES`) and the colour maps by role
(`COLORMAPS`: sequential, heat, diverging, cyclic); `theme.colormap(role)` names the map for
the current theme (a colour-blind-safe one in presenter mode). `ui/plot_style.py` applies these
to pyqtgraph plots and heatmaps and re-styles every one of them when `apply()` changes the theme;
panels use `plot_style`, never literal colours or map names.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPalette, QPen
from PySide6.QtWidgets import QApplication, QProxyStyle, QStyle

THEMES = ("light", "dark")

# Okabe & Ito (2008), colour-blind safe: the only categorical colours panels use
OKABE_ITO = {
    "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
    "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "grey": "#999999",
}
# categorical series in drawing order (lines, bars, heads): most distinct first
SERIES = tuple(OKABE_ITO[k] for k in ("blue", "orange", "green", "vermillion", "purple", "sky", "yellow", "grey"))

# colour map by role: (normal, colour-blind safe for presenter mode); all perceptually uniform
COLORMAPS = {
    "sequential": ("viridis", "cividis"),  # 0 .. max (attention, probabilities)
    "heat": ("inferno", "cividis"),  # a magnitude on dark background
    "diverging": ("CET-D1", "CET-CBD1"),  # negative .. 0 .. positive
    "cyclic": ("CET-C2", "CET-CBC1"),  # angles (RoPE)
}
# map names that older code passes for a role
_ROLE_OF = {names[0]: role for role, names in COLORMAPS.items()} | {"cividis": "sequential"}


ZOOM_RANGE = (0.6, 2.5)  # View > Zoom in / out multiplies every font by this factor (plots included)


@dataclass(frozen=True)
class ThemeState:
    name: str = "light"  # "light" | "dark"
    presenter: bool = False
    colormap: str = "viridis"
    zoom: float = 1.0  # the user's text size factor (View > Zoom)
    screen_height: int = 1080  # pixels of the window's screen: presenter text is sized for it


class ThemeEvents(QObject):
    colormap_changed = Signal(str)
    theme_changed = Signal(str)  # "light" | "dark" | "presenter"
    changed = Signal()  # once per apply() that changed anything (plot_style re-styles every plot on it)


_state = ThemeState()
_events: ThemeEvents | None = None
_base_point_size: float | None = None


def events() -> ThemeEvents:
    global _events
    if _events is None:
        _events = ThemeEvents()
    return _events


def role_of(name_or_role: str) -> str:
    """The colour-map role of a role name or of a map name ("viridis" -> "sequential"); KeyError if unknown."""
    if name_or_role in COLORMAPS:
        return name_or_role
    return _ROLE_OF[name_or_role]


def colormap(role: str = "sequential") -> str:
    """The name of the colour map for `role` in the current theme: its colour-blind-safe map in presenter
    mode (cividis, CET-CBD1, CET-CBC1), else the normal one; the sequential map may be the user's choice."""
    role = role_of(role)
    if role == "sequential":
        return _state.colormap  # viridis, cividis in presenter mode, or the map passed to apply()
    normal, safe = COLORMAPS[role]
    return safe if _state.presenter else normal


@dataclass(frozen=True)
class PlotColours:
    """Colours of a plot's frame in the current theme (the data colours come from SERIES / colormap)."""

    background: str
    text: str  # tick labels, axis titles, text items
    axis: str  # axis lines and ticks
    faint: str  # grid lines, neutral reference lines, "not selected"
    fill: str  # a text item's backing box


_PLOT_COLOURS = {
    "light": PlotColours("#ffffff", "#1a1a1a", "#6b6b6b", "#b0b0b0", "#ffffffdc"),
    "dark": PlotColours("#1e1e1e", "#e6e6e6", "#a0a0a0", "#5a5a5a", "#1e1e1edc"),
    "presenter": PlotColours("#000000", "#ffffff", "#d8d8d8", "#6a6a6a", "#000000dc"),
}


def plot_colours() -> PlotColours:
    return _PLOT_COLOURS["presenter" if _state.presenter else _state.name]


def presenter_scale(screen_height: int) -> float:
    """Presenter text size for a screen: 1.5x on 1080-line screens and up, 1.2x on 720-line ones, linear in
    between. Projected, the picture is the same size whatever its lines: 1.2x of 9 pt is 14 px, 2.0% of 720 lines,
    more than 1.5x (18 px, 1.7%) is of 1080; and at 1.2x every panel fits a 720-line screen without scrolling."""
    lo, hi = (760, 1.2), (1000, 1.5)
    t = min(1.0, max(0.0, (screen_height - lo[0]) / (hi[0] - lo[0])))
    return round(lo[1] + t * (hi[1] - lo[1]), 3)


def font_scale() -> float:
    """How much bigger than normal text is now: the zoom, times presenter_scale() in presenter mode."""
    return (presenter_scale(_state.screen_height) if _state.presenter else 1.0) * _state.zoom


def state() -> ThemeState:
    return _state


def is_dark() -> bool:
    return _state.name == "dark" or _state.presenter


def _palette(dark: bool, high_contrast: bool) -> QPalette:
    pal = QPalette()
    if dark:
        window, base, text = ("#000000", "#000000", "#ffffff") if high_contrast else ("#2b2b2b", "#1e1e1e", "#e6e6e6")
        button, highlight = ("#1a1a1a", "#ffd400") if high_contrast else ("#3a3a3a", "#3d7bd9")
        highlighted_text = "#000000" if high_contrast else "#ffffff"
    else:
        window, base, text, button, highlight, highlighted_text = (
            "#f3f3f3", "#ffffff", "#1a1a1a", "#e8e8e8", "#2f6fd0", "#ffffff")
    roles = {
        QPalette.Window: window, QPalette.WindowText: text, QPalette.Base: base,
        QPalette.AlternateBase: button, QPalette.Text: text, QPalette.Button: button,
        QPalette.ButtonText: text, QPalette.Highlight: highlight, QPalette.HighlightedText: highlighted_text,
        QPalette.ToolTipBase: base, QPalette.ToolTipText: text, QPalette.PlaceholderText: "#8a8a8a",
        QPalette.Link: "#ffd400" if high_contrast else highlight,
    }
    for role, colour in roles.items():
        pal.setColor(role, QColor(colour))
    pal.setColor(QPalette.Disabled, QPalette.Text, QColor("#808080"))
    pal.setColor(QPalette.Disabled, QPalette.ButtonText, QColor("#808080"))
    pal.setColor(QPalette.Disabled, QPalette.WindowText, QColor("#808080"))
    return pal


class _Style(QProxyStyle):
    """Fusion, plus a visible frame on check boxes and radio buttons in dark themes (Fusion draws it a
    shade darker than the window: invisible on black) and bigger indicators in presenter mode."""

    _BIGGER = (QStyle.PM_IndicatorWidth, QStyle.PM_IndicatorHeight, QStyle.PM_ExclusiveIndicatorWidth,
               QStyle.PM_ExclusiveIndicatorHeight)

    def styleHint(self, hint, option=None, widget=None, return_data=None) -> int:  # noqa: N802 - Qt override
        if hint == QStyle.SH_TabBar_ElideMode:
            return int(Qt.ElideNone.value)  # tab names stay whole: a tab bar too narrow scrolls instead
        return super().styleHint(hint, option, widget, return_data)

    def pixelMetric(self, metric, option=None, widget=None) -> int:  # noqa: N802 - Qt override
        value = super().pixelMetric(metric, option, widget)
        return round(value * 1.5) if _state.presenter and metric in self._BIGGER else value

    def drawPrimitive(self, element, option, painter, widget=None) -> None:  # noqa: N802 - Qt override
        super().drawPrimitive(element, option, painter, widget)
        if is_dark() and element in (QStyle.PE_IndicatorCheckBox, QStyle.PE_IndicatorRadioButton):
            painter.save()
            painter.setRenderHint(QPainter.Antialiasing)
            enabled = bool(option.state & QStyle.State_Enabled)
            painter.setPen(QPen(option.palette.color(QPalette.WindowText) if enabled else QColor("#707070"), 1.5))
            painter.setBrush(Qt.NoBrush)
            rect = QRectF(option.rect).adjusted(1, 1, -1, -1)
            if element == QStyle.PE_IndicatorCheckBox:
                painter.drawRoundedRect(rect, 2, 2)
            else:
                painter.drawEllipse(rect)
            painter.restore()


_style: _Style | None = None


def apply(name: str | None = None, presenter: bool | None = None, colormap_name: str | None = None, *,
          zoom: float | None = None, screen_height: int | None = None) -> ThemeState:
    """Apply a theme (and text zoom, and the screen presenter text is sized for) to the QApplication and
    announce what changed; arguments left out keep their current values."""
    global _state, _base_point_size
    app = QApplication.instance()
    name = name or _state.name
    presenter = _state.presenter if presenter is None else presenter
    cmap = colormap_name or ("cividis" if presenter else "viridis")
    zoom = _state.zoom if zoom is None else min(ZOOM_RANGE[1], max(ZOOM_RANGE[0], float(zoom)))
    screen_height = _state.screen_height if screen_height is None else max(200, int(screen_height))
    old = _state
    _state = ThemeState(name=name, presenter=presenter, colormap=cmap, zoom=zoom, screen_height=screen_height)
    if app is not None:
        global _style
        if _style is None or app.style() is not _style:
            _style = _Style("Fusion")
            app.setStyle(_style)
        app.setPalette(_palette(name == "dark" or presenter, high_contrast=presenter))
        if _base_point_size is None:
            _base_point_size = app.font().pointSizeF() or 10.0
        font = QFont(app.font())
        font.setPointSizeF(_base_point_size * font_scale())
        app.setFont(font)
    if old.colormap != cmap:
        events().colormap_changed.emit(cmap)
    if (old.name, old.presenter) != (name, presenter):
        events().theme_changed.emit("presenter" if presenter else name)
    if old != _state:
        events().changed.emit()
    return _state
