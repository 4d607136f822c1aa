"""A layout chosen for the screen: which dock arrangement fits the space the window has, in text lines.

Four plans, measured in lines of the UI font (so presenter mode's bigger text and View > Zoom count):

    wide     Tokens over Next token on the left; Attention over the other panels (tabbed) on the right
    columns  Tokens over Next token on the left; every other panel in one full-height tab group on the right
    compact  two full-height tab groups side by side: Tokens + Next token | everything else
    single   every panel in one tab group (a very small screen or a very big zoom)

Measured here (DejaVu Sans, 14 px lines at 9 pt): a 1920x1080 screen is 137 x 77 lines (wide); 1280x720 is
91 x 51 (columns); presenter mode on 1920x1080 (21 px lines) 91 x 51 (columns) and on 1280x720 (18 px) 71 x 40
(compact). Below the wide plan's height, Attention and Layer depth stacked would need scroll bars.

`ScreenFit` (owned by the main window) picks the plan at start and again when the theme or zoom changes or
the window moves to another screen; a plan change re-lays the docks (a layout the user arranged under a plan
comes back when that plan does), keeps the window inside the screen's available area and the dock tab bars
whole (names never elided; a bar too narrow for its tabs scrolls). `fit_problems(window)` lists what does not
fit (clipped or squeezed controls, docks that need scroll bars, elided tabs, toolbars wider than the window):
the tests and scripts/screenshots.py use it.
"""

from __future__ import annotations

import contextlib
import logging

from PySide6.QtCore import QObject, QRect, QSize, Qt, QTimer
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractScrollArea,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLabel,
    QTabBar,
    QToolBar,
    QWidget,
)

from . import theme

log = logging.getLogger(__name__)
PLANS = ("wide", "columns", "compact", "single")
# (columns, rows) in text lines of the available screen area that each plan needs, first that fits wins
NEEDS = {"wide": (78, 60), "columns": (78, 46), "compact": (50, 26), "single": (0, 0)}
# default dock placement by panel name (a panel class may also set `dock_area = "left" | "right" | "bottom"`)
_LEFT_HINTS = ("token",)  # Tokens and Next token: the left column (wide, columns) / left tab group (compact)
_RIGHT_TOP_HINTS = ("attention",)
_RAISE_HINTS = ("depth",)  # the tab shown first in the tabbed group


def line_height() -> int:
    """Pixels of one line of the UI font (the unit plans are measured in)."""
    app = QApplication.instance()
    return max(1, QFontMetrics(app.font()).height()) if app is not None else 16


def choose_plan(available: QSize, line: int | None = None) -> str:
    """The plan for a screen area of `available` pixels with text lines `line` pixels tall."""
    line = line or line_height()
    cols, rows = available.width() / line, available.height() / line
    return next(plan for plan in PLANS if cols >= NEEDS[plan][0] and rows >= NEEDS[plan][1])


NOMINAL_SCREEN = QRect(0, 0, 1920, 1080)  # offscreen (tests, scripts) has no real screen: windows take any size


def _screen_area(window: QWidget) -> QRect:
    if QApplication.platformName() in ("offscreen", "minimal"):
        return NOMINAL_SCREEN
    screen = window.screen() or QApplication.primaryScreen()
    return screen.availableGeometry() if screen is not None else QRect(0, 0, 1600, 1000)


def default_layout(w, plan: str) -> None:
    """The default docks of `w` (a MainWindow) for a plan (View > Reset layout). Tokens and Next token
    go left, the other panels right: wide stacks the left pair and puts Attention over the rest (tabbed);
    columns stacks the left pair beside one full-height tab group; compact makes two full-height tab groups;
    single tabs every panel in one group. A tab group shows Attention, else Layer depth, first."""
    left, right_top, rest = [], [], []
    for name, dock in w.docks.items():
        area = getattr(dock.panel, "dock_area", None)
        if area == "left" or (area is None and any(h in name for h in _LEFT_HINTS)):
            left.append(dock)
        elif area == "right" or (area is None and any(h in name for h in _RIGHT_TOP_HINTS)):
            right_top.append(dock)
        else:
            rest.append(dock)
    if rest:
        shown = next((d for d in rest if any(h in d.name for h in _RAISE_HINTS)), rest[0])
        rest.remove(shown)
        rest.insert(0, shown)  # the first dock of a tab group stays the visible tab
    if not right_top and rest:
        right_top.append(rest.pop(0))
    for dock in w.docks.values():
        dock.setFloating(False)
        w.removeDockWidget(dock)
    if plan == "single":
        left, right_top, rest = [], [], left + right_top + rest
    elif plan in ("compact", "columns"):
        right_top, rest = [], right_top + rest
    # columns of the left and right areas, top to bottom; each entry a tab group (first dock shown)
    stacked_left = plan in ("wide", "columns")
    columns = [[[d] for d in left] if stacked_left else [left], [[d] for d in right_top] + [rest]]
    columns = [[g for g in col if g] for col in columns]
    groups = []
    for area, column in zip((Qt.LeftDockWidgetArea, Qt.RightDockWidgetArea), columns, strict=True):
        for group in column:
            w.addDockWidget(area, group[0], Qt.Vertical)
            for dock in group[1:]:
                w.tabifyDockWidget(group[0], dock)
            groups.append(group)
    for dock in w.docks.values():
        dock.show()
    for group in groups:
        group[0].raise_()
    width, height = max(w.width(), 800), max(w.height(), 500)
    if all(columns):  # the left column a little over a third of the width
        w.resizeDocks([columns[0][0][0], columns[1][0][0]], [width * 37 // 100, width * 63 // 100], Qt.Horizontal)
    for column, top in ((columns[0], 40), (columns[1], 43)):  # Next token's bars and the tabbed group
        if len(column) == 2:  # (layer depth first) get a little more than Tokens and Attention
            w.resizeDocks([column[0][0], column[1][0]], [height * top // 100, height * (100 - top) // 100],
                          Qt.Vertical)
    w.fit.fix_tab_bars()


class ScreenFit(QObject):
    """Keeps the window's dock layout, size and tab bars right for its screen and text size."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self.plan: str | None = None  # the plan the docks are laid out for
        self.area_override: QRect | None = None  # tests and screenshots: pretend the screen is this big
        self._saved: dict[str, dict] = {}  # plan -> the docks as the user left them under it
        self._screen = None
        self._watching = False  # the window handle's screenChanged is connected
        self._busy = False
        self._tabs_timer = QTimer(self, singleShot=True, interval=0)
        self._tabs_timer.timeout.connect(self.fix_tab_bars)
        theme.events().changed.connect(self.refit)

    def area(self) -> QRect:
        return self.area_override if self.area_override is not None else _screen_area(self.w)

    def wanted_plan(self) -> str:
        return choose_plan(self.area().size())

    def watch_screen(self) -> None:
        """Follow the window to another screen (and that screen's size changes); call once it has a handle."""
        handle = self.w.windowHandle()
        if handle is not None and not self._watching:
            self._watching = True
            handle.screenChanged.connect(lambda _s: self.refit())
        screen = self.w.screen()
        if screen is not None and screen is not self._screen:
            if self._screen is not None:
                with contextlib.suppress(RuntimeError, TypeError):
                    self._screen.availableGeometryChanged.disconnect(self._screen_resized)
            self._screen = screen
            screen.availableGeometryChanged.connect(self._screen_resized)

    def _screen_resized(self, _rect) -> None:
        self.refit()

    def refit(self) -> None:
        """Size presenter text for the screen, choose the plan, re-lay the docks if it changed, stay on screen."""
        if self._busy:
            return
        self._busy = True
        try:
            self.watch_screen()
            height = self.area().height()
            if theme.state().screen_height != height:
                theme.apply(screen_height=height)  # presenter text sized for this screen
            self.set_plan(self.wanted_plan())
            self.keep_on_screen()
        finally:
            self._busy = False
        self._tabs_timer.start()

    def set_plan(self, plan: str, *, force: bool = False) -> None:
        if plan == self.plan and not force:
            return
        from .layout_state import apply_docks, capture

        if self.plan is not None and not force:
            self._saved[self.plan] = capture(self.w)
        old, self.plan = self.plan, plan
        saved = self._saved.get(plan)
        if saved is not None and not force:
            self.w.apply_default_layout()
            apply_docks(self.w, saved)
        else:
            self.w.apply_default_layout()
        log.info("layout plan %s -> %s for %s", old, plan, self.area().size().toTuple())
        self._tabs_timer.start()

    def keep_on_screen(self) -> None:
        """A normal window never outgrows the screen's available area (a 1600x1000 default on a 720p screen)."""
        if self.w.isFullScreen() or self.w.isMaximized():
            return
        area = self.area()
        frame = self.w.frameGeometry().size() - self.w.geometry().size()
        room = QSize(area.width() - frame.width(), area.height() - frame.height())
        size = self.w.size().boundedTo(room)
        if size != self.w.size():
            self.w.resize(size)

    def fix_tab_bars(self) -> None:
        """Dock tab bars (made by QMainWindow, which elides their names) keep names whole and scroll instead."""
        for bar in self.w.findChildren(QTabBar, options=Qt.FindDirectChildrenOnly):
            bar.setElideMode(Qt.ElideNone)
            bar.setUsesScrollButtons(True)
            bar.setExpanding(False)


# --- what does not fit -------------------------------------------------------------------------------
_SQUEEZABLE = (QAbstractButton, QComboBox, QAbstractSpinBox, QLabel)


def _label(widget: QWidget) -> str:
    text = ""
    for getter in ("text", "currentText", "windowTitle"):
        try:
            text = str(getattr(widget, getter)())
        except (AttributeError, TypeError):  # no such method, or a child object that happens to use the name
            continue
            if text:
                break
    return f"{type(widget).__name__}({text[:30]!r})"


def fit_problems(window) -> list[str]:
    """Everything on screen in `window` that does not fit: empty when the layout fits its window."""
    problems = []
    width = window.width()
    for bar in window.findChildren(QToolBar):
        if bar.isVisible() and bar.minimumSizeHint().width() > width:
            problems.append(f"toolbar {bar.objectName()} needs {bar.minimumSizeHint().width()} px of {width}")
    if window.minimumSizeHint().width() > width or window.minimumSizeHint().height() > window.height():
        problems.append(f"window minimum {window.minimumSizeHint().toTuple()} > {window.size().toTuple()}")
    for bar in window.findChildren(QTabBar):
        if not bar.isVisible():
            continue
        for i in range(bar.count()):
            text = bar.tabText(i).replace("&&", "&")
            needed = bar.fontMetrics().horizontalAdvance(text)
            if bar.elideMode() != Qt.ElideNone and bar.tabRect(i).width() < needed:
                problems.append(f"tab {text!r} elided")
    for name, dock in getattr(window, "docks", {}).items():
        if dock.isHidden() or dock.visibleRegion().isEmpty() or getattr(dock, "panel", None) is None:
            continue
        scroll = dock.scroll
        for bar, what in ((scroll.horizontalScrollBar(), "horizontal"), (scroll.verticalScrollBar(), "vertical")):
            if bar.isVisible() and bar.maximum() > 0:
                problems.append(f"dock {name} scrolls ({what}: panel {scroll.widget().size().toTuple()} in "
                                f"{scroll.viewport().size().toTuple()})")
        problems += [f"dock {name}: {p}" for p in widget_problems(dock.panel)]
    return problems


def widget_problems(root: QWidget) -> list[str]:
    """Controls under `root` that are cut by their parent or squeezed below their minimum size."""
    problems = []
    for child in root.findChildren(QWidget):
        if not child.isVisible() or child.visibleRegion().isEmpty():
            continue
        parent = child.parentWidget()
        if parent is None or isinstance(parent, QAbstractScrollArea | QTabBar):  # a tab bar's arrows are narrow
            continue
        if isinstance(parent.parentWidget(), QAbstractScrollArea):
            continue  # a scroll area's contents may be larger than its view: that is what it is for
        g = child.geometry()
        if isinstance(child, _SQUEEZABLE) and (g.right() > parent.width() + 1 or g.bottom() > parent.height() + 1):
            problems.append(f"{_label(child)} cut by its parent ({g.getRect()} in {parent.size().toTuple()})")
        if isinstance(child, QLabel) and child.wordWrap() and child.text().strip() \
                and child.height() < child.heightForWidth(child.width()) - 2:
            problems.append(f"{_label(child)} cut: {child.height()} px of {child.heightForWidth(child.width())}")
        hint = child.minimumSizeHint()
        if isinstance(child, _SQUEEZABLE) and hint.isValid() and child.width() < hint.width() - 1 \
                and not (isinstance(child, QLabel) and (child.wordWrap() or not child.text().strip())):
            problems.append(f"{_label(child)} squeezed to {child.width()} px of {hint.width()}")
    return problems
