"""Themes (light, dark, presenter high-contrast) and the colour-map preference panels read.

Panels that draw with a colour map call `theme.colormap()` ("viridis" normally, "cividis",
colour-blind safe, in presenter mode) and may follow changes with
`theme.events().colormap_changed.connect(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPalette, QPen
from PySide6.QtWidgets import QApplication, QProxyStyle, QStyle

THEMES = ("light", "dark")


@dataclass(frozen=True)
class ThemeState:
    name: str = "light"  # "light" | "dark"
    presenter: bool = False
    colormap: str = "viridis"


class ThemeEvents(QObject):
    colormap_changed = Signal(str)
    theme_changed = Signal(str)  # "light" | "dark" | "presenter"


_state = ThemeState()
_events: ThemeEvents | None = None
_base_point_size: float | None = None


def events() -> ThemeEvents:
    global _events
    if _events is None:
        _events = ThemeEvents()
    return _events


def colormap() -> str:
    """The colour map panels should use: "cividis" in presenter mode, else the user's choice (viridis)."""
    return _state.colormap


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


def apply(name: str | None = None, presenter: bool | None = None, colormap_name: str | None = None) -> ThemeState:
    """Apply a theme to the QApplication and announce colour-map changes."""
    global _state, _base_point_size
    app = QApplication.instance()
    name = name or _state.name
    presenter = _state.presenter if presenter is None else presenter
    cmap = colormap_name or ("cividis" if presenter else "viridis")
    old = _state
    _state = ThemeState(name=name, presenter=presenter, colormap=cmap)
    if app is not None:
        global _style
        if _style is None or app.style() is not _style:
            _style = _Style("Fusion")
            app.setStyle(_style)
        app.setPalette(_palette(name == "dark" or presenter, high_contrast=presenter))
        if _base_point_size is None:
            _base_point_size = app.font().pointSizeF() or 10.0
        font = QFont(app.font())
        font.setPointSizeF(_base_point_size * (1.5 if presenter else 1.0))
        app.setFont(font)
    if old.colormap != cmap:
        events().colormap_changed.emit(cmap)
    if (old.name, old.presenter) != (name, presenter):
        events().theme_changed.emit("presenter" if presenter else name)
    return _state
