"""A dock per registered panel: title bar with a "What am I looking at?" (?) toggle.

A panel whose import or construction fails becomes a dock that shows the error, so one broken
panel never stops the window from opening.
"""

from __future__ import annotations

import logging
import traceback

from PySide6.QtCore import QEvent, QSize, Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractScrollArea,
    QBoxLayout,
    QDockWidget,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLayout,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QStyle,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import theme
from .panels import Panel, panel_class
from .panels.base import PanelServices
from .selection import Selection
from .widgets.flow import FlowLayout

log = logging.getLogger(__name__)


class _TitleBar(QWidget):
    def __init__(self, dock: PanelDock):
        super().__init__(dock)
        self.dock = dock
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 0, 2, 0)  # every pixel of height counts on a 720-line presenter screen
        row.setSpacing(2)
        self.label = QLabel(f"<b>{dock.windowTitle()}</b>")
        row.addWidget(self.label)
        row.addStretch(1)
        self.help_button = QToolButton()
        self.help_button.setText("?")
        self.help_button.setCheckable(True)
        self.help_button.setToolTip("What am I looking at?")
        self.help_button.setAccessibleName(f"Help for {dock.windowTitle()}")
        row.addWidget(self.help_button)
        for icon, tip, slot in ((QStyle.SP_TitleBarNormalButton, "Float / dock", self._float),
                                (QStyle.SP_TitleBarCloseButton, "Close panel (View menu brings it back)",
                                 dock.close)):
            button = QToolButton()
            button.setIcon(self.style().standardIcon(icon))
            button.setToolTip(tip)
            button.setAutoRaise(True)
            button.clicked.connect(slot)
            row.addWidget(button)

    def _float(self) -> None:
        self.dock.setFloating(not self.dock.isFloating())


class _Fit(QWidget):
    """Holds a panel in its dock's scroll area so the area scrolls only when the panel's *minimum* height at this
    width does not fit. (Qt's scroll area asks a height-for-width widget, a panel with a wrapping row or label,
    for its preferred height instead, and shows scroll bars where the panel would fit.)"""

    def __init__(self, panel: QWidget):
        super().__init__()
        self.panel = panel
        panel.setParent(self)
        panel.installEventFilter(self)
        self._min_height = -1
        self._recheck = QTimer(self, singleShot=True, interval=0)
        self._recheck.timeout.connect(self._check)

    def _needed(self, width: int) -> QSize:
        """The panel's minimum size plus the extra lines its wrapping rows and labels need at their current widths
        (Qt's own minimumHeightForWidth counts every tab page and splitter at its preferred height instead)."""
        hint = self.panel.minimumSizeHint().expandedTo(self.panel.minimumSize())
        if width > 0 and self.panel.layout() is not None:
            try:
                hint.setHeight(hint.height() + _extra(self.panel.layout(), max(width, hint.width())))
            except Exception:  # noqa: BLE001 - an error inside a Qt size hint must never reach Qt
                log.exception("sizing %s failed", type(self.panel).__name__)
        return hint

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return self._needed(self.width())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return self.panel.sizeHint()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.panel.setGeometry(self.rect())
        self._recheck.start()  # once the panel's rows have their new widths

    def _check(self) -> None:
        needed = self._needed(self.width()).height()
        if needed != self._min_height:  # a new width wraps differently: the scroll area asks again
            self._min_height = needed
            self.updateGeometry()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if obj is self.panel and event.type() == QEvent.LayoutRequest:
            self.updateGeometry()
            self._recheck.start()
        return False


def _extra(item, width: int) -> int:
    """Pixels that wrapping rows (FlowLayout) and word-wrapped labels under a layout item need beyond their
    minimum height, at their current width (`width` for one not laid out yet): summed down vertical layouts,
    the largest across horizontal ones and over a tab widget's pages."""
    if isinstance(item, QLayout):
        widget, layout = None, item
    elif isinstance(item, QWidget):
        widget, layout = item, None
    else:  # a QLayoutItem: a widget's, a layout's or a spacer
        widget, layout = item.widget(), item.layout()
    if widget is not None:
        if widget.isHidden():
            return 0
        w = widget.width() if widget.testAttribute(Qt.WA_Resized) or widget.isVisible() else width
        if isinstance(widget, QLabel):
            return max(0, widget.heightForWidth(w) - widget.minimumSizeHint().height()) if widget.wordWrap() else 0
        if isinstance(widget, QTabWidget | QStackedWidget):
            pages = [widget.widget(i) for i in range(widget.count())]
            return max((_extra(page, w) for page in pages if page is not None), default=0)
        if isinstance(widget, QSplitter):
            parts = [_extra(widget.widget(i), w) for i in range(widget.count())]
            return (sum(parts) if widget.orientation() == Qt.Vertical else max(parts)) if parts else 0
        if isinstance(widget, QAbstractScrollArea):
            return 0  # it scrolls by design
        layout = widget.layout()
        width = w
    if layout is None:
        return 0
    if isinstance(layout, FlowLayout):
        w = layout.geometry().width() or width
        return max(0, layout.heightForWidth(w) - layout.minimumSize().height())
    parts = [_extra(layout.itemAt(i), width) for i in range(layout.count())]
    vertical = isinstance(layout, QBoxLayout) and layout.direction() in (QBoxLayout.TopToBottom,
                                                                        QBoxLayout.BottomToTop)
    return (sum(parts) if vertical else max(parts, default=0))


class PanelDock(QDockWidget):
    """Holds one panel (or the error that stopped it) plus its help text."""

    def __init__(self, name: str, selection: Selection, parent: QWidget | None = None,
                 services: PanelServices | None = None):
        self.name = name
        self.panel: Panel | None = None
        self.error: str | None = None
        try:
            cls = panel_class(name)
            title = getattr(cls, "title", name)
            panel = cls(selection)
            if services is not None:
                panel.services = services  # the same services for every panel: run, re-run, open panel, jobs
            panel.defer_when_hidden = True  # a background tab skips per-token work until shown
        except Exception as exc:  # noqa: BLE001 - any panel failure becomes a message in its dock
            log.exception("panel %s failed to load", name)
            title, panel = name.replace("_", " ").title(), None
            self.error = f"{type(exc).__name__}: {exc}"
            self._traceback = traceback.format_exc(limit=4)
        super().__init__(title, parent)
        self.setObjectName(f"dock-{name}")  # saveState/restoreState key
        self.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetFloatable
                         | QDockWidget.DockWidgetClosable)
        holder = QWidget()
        layout = QVBoxLayout(holder)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.help_label = QLabel(getattr(panel, "help_text", "") or "This panel has no help text yet.")
        self.help_label.setWordWrap(True)
        self.help_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.help_label.setStyleSheet("padding: 6px; border-bottom: 1px solid palette(mid);"
                                      "background: palette(alternate-base);")
        self.help_label.hide()
        layout.addWidget(self.help_label)
        if panel is not None:
            self.panel = panel
            theme.keep_tab_names_whole(panel)
            # a scroll area lets the dock shrink below the panel's minimum size (the panel scrolls)
            self.scroll = QScrollArea()
            self.scroll.setWidgetResizable(True)
            self.scroll.setFrameShape(QFrame.NoFrame)
            self.scroll.setWidget(_Fit(panel))
            layout.addWidget(self.scroll, 1)
            self.visibilityChanged.connect(lambda visible: visible and panel.catch_up())
        else:
            message = QLabel(f"The <b>{title}</b> panel could not be loaded:<br><code>{self.error}</code>"
                             "<br><br>The other panels work; see the log for details.")
            message.setWordWrap(True)
            message.setAlignment(Qt.AlignTop | Qt.AlignLeft)
            message.setStyleSheet("color: #b00020; padding: 8px;")
            message.setTextInteractionFlags(Qt.TextSelectableByMouse)
            layout.addWidget(message, 1)
        self.setWidget(holder)
        self.title_bar = _TitleBar(self)
        self.setTitleBarWidget(self.title_bar)
        self.title_bar.help_button.toggled.connect(self.help_label.setVisible)

    def set_help_visible(self, visible: bool) -> None:
        self.title_bar.help_button.setChecked(visible)

    def help_visible(self) -> bool:
        return self.title_bar.help_button.isChecked()
