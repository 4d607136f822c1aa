"""Themes (light, dark, presenter high-contrast): the one home of the app's colours.

It owns the Okabe-Ito palette (`OKABE_ITO`, `SERIES`) and the colour maps by role
(`COLORMAPS`: sequential, heat, diverging, cyclic); `theme.colormap(role)` names the map for
the current theme (a colour-blind-safe one in presenter mode). `ui/plot_style.py` applies these
to pyqtgraph plots and heatmaps and re-styles every one of them when `apply()` changes the theme;
panels use `plot_style`, never literal colours or map names.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication, QStyle, QStyleFactory, QTabBar, QTabWidget

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


# --- the style: Qt's own Fusion, no Python in its calls ------------------------------------------------------
# Every call of a style implemented in Python (a QProxyStyle subclass: pixelMetric, styleHint, drawPrimitive) is a
# call into the interpreter from Qt's C++, thousands per second while panels paint, and each must take the GIL.
# When a background analysis holds the GIL, each such call waits for it: a table that paints in 0.4 ms took 5 to
# 11 ms while a run streamed. So the app uses the C++ Fusion style unchanged and gets what the theme needs from
# data Qt reads itself: a palette for check boxes, a presenter style sheet, and each tab bar's elide mode.
CHECK_BOX_CLASSES = ("QCheckBox", "QRadioButton", "QListWidget")  # (the list: its items' check boxes)
PRESENTER_SHEET = "QCheckBox::indicator, QRadioButton::indicator { width: 21px; height: 21px; }"  # 1.5 x 14 px


def _check_box_palette(pal: QPalette) -> QPalette:
    """Fusion draws a check box's frame in the window colour darkened by 40%: a shade darker than a black window,
    invisible. On dark themes, check boxes, radio buttons and lists of checkable items take a light window colour
    for it (their own background is the parent's, or the base colour for a list, so only their frames show it)."""
    out = QPalette(pal)
    out.setColor(QPalette.Window, QColor("#ffffff"))  # the frame: #b6b6b6 (Fusion: window.darker(140))
    return out


def keep_tab_names_whole(root) -> None:
    """Every tab bar under `root` (and `root` itself) shows whole tab names: a bar too narrow scrolls instead of
    eliding them to "Vo…"."""
    if isinstance(root, QTabBar | QTabWidget):
        root.setElideMode(Qt.ElideNone)
    for child in root.findChildren(QTabBar) + root.findChildren(QTabWidget):
        child.setElideMode(Qt.ElideNone)


_style: QStyle | None = None


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
        current = app.style()  # (a QStyleSheetStyle over ours while the presenter sheet is set)
        if _style is None or (current is not _style and current.metaObject().className() != "QStyleSheetStyle"):
            _style = QStyleFactory.create("Fusion")
            app.setStyle(_style)
        dark = name == "dark" or presenter
        pal = _palette(dark, high_contrast=presenter)
        app.setPalette(pal)
        for cls in CHECK_BOX_CLASSES:
            app.setPalette(_check_box_palette(pal) if dark else pal, cls)
        sheet = PRESENTER_SHEET if presenter else ""
        if app.styleSheet() != sheet:
            app.setStyleSheet(sheet)
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
