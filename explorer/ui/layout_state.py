"""The window's layout as plain data (docks and window rectangle), never Qt's binary state; and the
window's settings restore/save (WindowState, a mixin of MainWindow).

Why: `QMainWindow.restoreState` parses Qt's binary dock state, and a few changed bytes crash it
(segmentation fault, found by mutating a saved state). A settings file must never be able to do
that, so the layout is stored as small validated records and rebuilt with addDockWidget /
tabifyDockWidget / resizeDocks, the calls the default layout uses:

    {"docks": [{"name", "area", "order", "group", "visible", "floating", "current", "size": [w, h],
                "rect": [x, y, w, h] (floating only)}],
     "window": [x, y, w, h], "maximized": bool}

Within an area, tab groups are stacked in `order` (vertically on the left/right, horizontally at the
top/bottom); nested splits inside one area are not kept (they come back stacked).
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QObject, QPoint, QRect, Qt
from PySide6.QtGui import QGuiApplication

from . import theme
from .settings import recent

log = logging.getLogger(__name__)
MAX_STORED_PROMPT = 1_000_000  # characters; a longer prompt is not kept in the settings
DEFAULT_SIZE = (1600, 1000)  # the first window's size, within the screen's available area
AREAS = {"left": Qt.LeftDockWidgetArea, "right": Qt.RightDockWidgetArea, "top": Qt.TopDockWidgetArea,
         "bottom": Qt.BottomDockWidgetArea}
_AREA_NAMES = {int(v.value) if hasattr(v, "value") else int(v): k for k, v in AREAS.items()}


def _area_name(area) -> str:
    key = int(area.value) if hasattr(area, "value") else int(area)
    return _AREA_NAMES.get(key, "right")


def capture(window) -> dict[str, Any]:
    """The docks of `window` (a MainWindow: `window.docks` name -> QDockWidget) as plain records.

    A tab group's position and size are those of its shown tab (the hidden tabs keep stale geometry);
    a closed dock is recorded as hidden and stays where the default layout puts it.
    """
    groups: list[list] = []
    seen = set()
    for dock in window.docks.values():
        if dock in seen:
            continue
        members = [dock, *[d for d in window.tabifiedDockWidgets(dock) if d not in seen]]
        seen.update(members)
        groups.append(members)
    records = []
    for group, members in enumerate(groups):
        shown = [d for d in members if not d.isHidden()]
        lead = next((d for d in shown if not d.visibleRegion().isEmpty()), shown[0] if shown else members[0])
        geo = lead.geometry()
        for dock in members:
            area = _area_name(window.dockWidgetArea(dock))
            record = {"name": dock.name, "area": area, "group": group, "visible": not dock.isHidden(),
                      "floating": dock.isFloating(), "current": dock is lead,
                      "size": [max(0, geo.width()), max(0, geo.height())],
                      "order": geo.y() if area in ("left", "right") else geo.x()}
            if dock.isFloating():
                g = dock.geometry()
                record["rect"] = [g.x(), g.y(), g.width(), g.height()]
            records.append(record)
    ranks = {v: i for i, v in enumerate(sorted({r["order"] for r in records}))}
    for r in records:
        r["order"] = ranks[r["order"]]
    if window.isMaximized() or window.isFullScreen():
        normal = window.normalGeometry()
        rect = [normal.x(), normal.y(), normal.width(), normal.height()]
    else:  # the frame's position with the client size: move() and resize() take exactly these
        rect = [window.x(), window.y(), window.width(), window.height()]
    return {"docks": records, "window": rect, "maximized": window.isMaximized()}


def apply_docks(window, data: dict[str, Any]) -> bool:
    """Rebuild the shown docks from validated records (the window has its default layout already).

    Each tab group is added with its current tab first (the first dock of a group stays the visible tab),
    groups are stacked in their recorded order, then sized. Hidden docks stay where the default layout put
    them, only hidden, so View > (panel) brings one back in its usual place.
    """
    docks = window.docks
    records = [r for r in data.get("docks", []) if r["name"] in docks]
    if not records:
        return False
    shown = [r for r in records if r["visible"]]
    by_group: dict[tuple[str, int], list[dict]] = {}
    for r in sorted(shown, key=lambda r: (r["area"], r["order"], not r["current"])):
        by_group.setdefault((r["area"], r["group"]), []).append(r)
    for r in shown:
        dock = docks[r["name"]]
        dock.setFloating(False)
        window.removeDockWidget(dock)
    sized = []
    for (area, _), members in by_group.items():
        members.sort(key=lambda r: (r["floating"], not r["current"]))
        first = docks[members[0]["name"]]
        orientation = Qt.Vertical if area in ("left", "right") else Qt.Horizontal
        window.addDockWidget(AREAS[area], first, orientation)
        for r in members[1:]:
            window.tabifyDockWidget(first, docks[r["name"]])
        sized.append((first, members[0], orientation))
    for r in records:
        dock = docks[r["name"]]
        dock.setVisible(r["visible"])
        if r["visible"] and r["floating"] and r.get("rect"):
            dock.setFloating(True)
            x, y, w, h = r["rect"]
            if _on_screen(QRect(x, y, w, h)):
                dock.setGeometry(x, y, w, h)
            else:
                dock.resize(max(1, w), max(1, h))
    for first, _, _ in sized:
        first.raise_()
    for orientation in (Qt.Horizontal, Qt.Vertical):
        pairs = [(dock, rec["size"][0 if orientation == Qt.Horizontal else 1]) for dock, rec, _ in sized
                 if not rec["floating"]]
        if len(pairs) > 1:
            window.resizeDocks([p[0] for p in pairs], [max(1, p[1]) for p in pairs], orientation)
    return True


def _on_screen(rect: QRect) -> bool:
    """True when the rectangle's top-left area lies on some screen (a window is never put out of reach)."""
    return QGuiApplication.screenAt(rect.topLeft() + QPoint(min(40, rect.width() // 2), 10)) is not None


def apply_window(window, data: dict[str, Any]) -> None:
    """Size (and place, when that spot is on a screen) the window, never bigger than its screen's available area;
    called once it is shown."""
    rect = data.get("window")
    if rect:
        x, y, w, h = rect
        room = window.fit.area().size() if hasattr(window, "fit") else None
        window.resize(min(w, room.width()) if room else w, min(h, room.height()) if room else h)
        if _on_screen(QRect(x, y, w, h)):
            window.move(x, y)
    if data.get("maximized"):
        window.showMaximized()


class WindowState(QObject):
    """Owns the window's layout and settings: restores them at start, saves them at close, resets the layout."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self._pending_layout: dict | None = None  # placed once the window is shown

    def restore(self) -> None:
        """Every value was validated by the store (type, range, size); a widget refusing one is noted, not fatal."""
        s = self.w.settings
        self.w.prompt_bar.set_recent(recent(s, "recent_prompts"))
        state = s.value("prompt_state")
        if isinstance(state, dict):
            self.w.prompt_bar.from_state(state)
        name = s.value("theme", "light")
        zoom = s.value("zoom", 1.0)
        theme.apply(name=name if name in theme.THEMES else "light", presenter=False,
                    zoom=zoom if isinstance(zoom, (int, float)) and not isinstance(zoom, bool) else 1.0)
        layout = s.value("layout")
        self._pending_layout = layout if isinstance(layout, dict) else None
        room = self.w.fit.area().size()
        if self._pending_layout is not None and self._pending_layout.get("window"):
            w, h = self._pending_layout["window"][2:]
        else:
            w, h = DEFAULT_SIZE
        self.w.resize(min(w, room.width()), min(h, room.height()))  # a 720p screen gets a window that fits it
        self.w.fit.refit()
        # docks arranged under another plan (a bigger screen, other text size) would not fit this one
        if self._pending_layout is not None and self._pending_layout.get("docks") \
                and s.value("layout_plan", "wide") == self.w.fit.plan:
            apply_docks(self.w, self._pending_layout)

    def store_setting(self, key: str, value) -> bool:
        """Store a value; one the store refuses (too long, out of range) is logged and skipped, never raised."""
        try:
            self.w.settings.setValue(key, value)
        except (ValueError, TypeError) as exc:
            log.warning("setting %s not stored: %s", key, exc)
            return False
        return True

    def save_settings(self) -> None:
        s = self.w.settings
        state = {k: v for k, v in self.w.prompt_bar.to_state().items()
                 if not (isinstance(v, str) and len(v) > MAX_STORED_PROMPT)}  # a 16 MB prompt stays out
        self.store_setting("prompt_state", state)
        layout = capture(self.w)
        previous = s.value("layout")
        if self.w.isFullScreen() and isinstance(previous, dict) and previous.get("window"):
            layout["window"], layout["maximized"] = previous["window"], previous.get("maximized", False)
        self.store_setting("layout", layout)
        self.store_setting("layout_plan", self.w.fit.plan or "wide")
        s.sync()

    def reset_layout(self) -> None:
        self.w.apply_default_layout()
        layout = dict(self.w.settings.value("layout") or {})
        if layout.pop("docks", None) is not None:
            self.store_setting("layout", layout)

    def shown(self) -> None:
        """The window is shown: place it now (placing before the first show loses the frame size)."""
        if self._pending_layout is not None:  # placing before the first show loses the frame size
            layout, self._pending_layout = self._pending_layout, None
            apply_window(self.w, layout)
