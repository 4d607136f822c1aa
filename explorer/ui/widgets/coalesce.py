"""Results coalesced to the frame rate: at most one delivery per key per frame, the newest wins,
stale ones are dropped.

Work that finishes off the GUI thread (a background analysis, an engine job) or that a fast stream
asks for many times a frame (a redraw per step) is posted here under a key with a token (e.g. the
run's generation and step). A single-shot timer delivers, once per frame, the newest posted callable
of every key whose token is still current; older postings under the same key are never run, so a
burst of results costs one redraw, and a result for a run that is no longer on screen costs nothing.

    frames = FrameCoalescer(parent, is_current=lambda token: token == panel.generation)
    frames.post("lens", token, lambda: panel.show_lens(cols))

At the frame, the keys' callables go through the GUI thread's one budgeted queue (widgets/frame_work.py): each
runs, then the parent widget paints what it changed, and what does not fit the frame's budget runs at the next.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QWidget
from shiboken6 import isValid

from .frame_work import frame_work

FRAME_MS = 16  # one frame at 60 Hz


class FrameCoalescer(QObject):
    def __init__(self, parent: QObject | None = None, is_current: Callable[[Any], bool] | None = None,
                 frame_ms: int = FRAME_MS):
        super().__init__(parent)
        self._is_current = is_current or (lambda _token: True)
        self._pending: dict[Hashable, tuple[Any, Callable[[], None]]] = {}
        self._timer = QTimer(self, singleShot=True, interval=frame_ms)
        self._timer.timeout.connect(self._queue_pending)
        self.delivered = 0  # callables run (for tests and benchmarks)
        self.dropped = 0  # callables superseded by a newer one or stale at delivery

    def post(self, key: Hashable, token: Any, fn: Callable[[], None]) -> None:
        """Deliver `fn` at the next frame unless a newer post with `key` comes first or `token` goes stale."""
        if key in self._pending:
            self.dropped += 1
        self._pending[key] = (token, fn)
        if not self._timer.isActive():
            self._timer.start()

    def pending(self) -> int:
        return len(self._pending)

    def cancel(self, key: Hashable | None = None) -> None:
        """Forget what is pending (under `key`, or everything)."""
        if key is None:
            self.dropped += len(self._pending)
            self._pending.clear()
        elif self._pending.pop(key, None) is not None:
            self.dropped += 1

    def _queue_pending(self) -> None:
        """The frame: every pending key into the budgeted queue (it delivers what is still pending when its turn
        comes, so a newer post meanwhile wins and `flush` may deliver first)."""
        parent = self.parent()
        widget = parent if isinstance(parent, QWidget) else None
        for key in list(self._pending):
            frame_work().post((id(self), key), widget, lambda key=key: self._deliver(key))

    def _deliver(self, key: Hashable) -> None:
        if key not in self._pending or not isValid(self):  # (delivered by flush, or the panel was deleted)
            return
        token, fn = self._pending.pop(key)
        if not self._is_current(token):
            self.dropped += 1
            return
        self.delivered += 1
        fn()

    def flush(self) -> None:
        """Deliver what is pending now (the timer does this once per frame)."""
        self._timer.stop()
        for key in list(self._pending):
            self._deliver(key)
