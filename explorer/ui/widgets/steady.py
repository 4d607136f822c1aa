"""Word-wrapped labels keep their height while what they say changes.

A panel's status line that alternates between "computing 3/30 layers..." (one line) and a two-line note resized
everything below it at every streamed step: the plots under it were laid out, re-ticked and repainted in full each
time (a third of a frame's budget). Here a label only grows while its text changes at one width; when its width
changes (the user resized the dock, a new layout) it lets go, and the next settling starts from what its text needs
at the new width. The window's budgeted work (frame_work.paint_now) calls this for the panel it just served,
before the layout runs.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QLabel, QWidget

_WIDTH = "lmxSteadyWidth"  # the width the label's height was settled at
_BASE = "lmxSteadyBase"  # its own minimum height before it was first settled


class _LetGo(QObject):
    """On a settled label's change of width: its own minimum height again."""

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Resize and event.oldSize().width() != event.size().width():
            base = obj.property(_BASE)
            if base is not None and obj.property(_WIDTH) is not None:
                obj.setProperty(_WIDTH, None)
                obj.setMinimumHeight(int(base))
        return False


_let_go: _LetGo | None = None


def steady_labels(widget: QWidget) -> None:
    """Settle the height of every visible word-wrapped label under `widget` (see the module's note)."""
    global _let_go
    for label in widget.findChildren(QLabel):
        if not label.wordWrap() or not label.isVisible() or label.width() <= 0:
            continue
        width = label.width()
        need = label.heightForWidth(width)
        if label.property(_BASE) is None:
            if _let_go is None:
                _let_go = _LetGo()
            label.setProperty(_BASE, label.minimumHeight())
            label.installEventFilter(_let_go)
        if label.property(_WIDTH) != width:  # first seen, or resized since: what its text needs now
            label.setProperty(_WIDTH, width)
            label.setMinimumHeight(max(int(label.property(_BASE)), need))
        elif need > label.minimumHeight():
            label.setMinimumHeight(need)
