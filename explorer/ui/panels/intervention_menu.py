"""Right-click menus on heads and layers, the bus that carries their requests, and model jobs.

Other panels attach a menu with one call (`attach_head_menu(widget, locate)` / `attach_layer_menu`);
a choice is emitted on `bus().requested` as an `InterventionRequest`; the Interventions panel turns
it into an `Intervention` (it holds the run, the pinned run B and the position scope).

`ModelJobs` runs functions that need the model on the worker's own thread (the worker is a QObject
with an event loop), so they never overlap a run's capture; they get (session, cancel, progress).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QPoint, Qt, Signal, Slot
from PySide6.QtWidgets import QMenu, QWidget


@dataclass(frozen=True)
class InterventionRequest:
    action: str  # "zero_head" | "mean_head" | "scale_head" | "patch_head" | "zero_attn" | "zero_mlp" | "patch_resid"
    layer: int
    head: int | None = None


class _Bus(QObject):
    requested = Signal(object)  # InterventionRequest
    open_head = Signal(int, int)  # (layer, head) a result that wants the head shown


_BUS: _Bus | None = None


def bus() -> _Bus:
    global _BUS
    if _BUS is None:
        _BUS = _Bus()
    return _BUS


HEAD_ACTIONS = (("zero_head", "Ablate head L{l}.H{h} (zero)"), ("mean_head", "Mean-ablate head L{l}.H{h}"),
                ("scale_head", "Scale head L{l}.H{h}..."), ("patch_head", "Patch head L{l}.H{h} from run B..."))
LAYER_ACTIONS = (("zero_attn", "Ablate attention block L{l}"), ("zero_mlp", "Ablate MLP block L{l}"),
                 ("patch_resid", "Patch residual after L{l} from run B..."))


def head_menu(parent: QWidget, layer: int, head: int) -> QMenu:
    menu = QMenu(parent)
    for action, text in HEAD_ACTIONS:
        menu.addAction(text.format(l=layer, h=head)).triggered.connect(
            lambda _c=False, a=action: bus().requested.emit(InterventionRequest(a, layer, head)))
    return menu


def layer_menu(parent: QWidget, layer: int) -> QMenu:
    menu = QMenu(parent)
    for action, text in LAYER_ACTIONS:
        menu.addAction(text.format(l=layer)).triggered.connect(
            lambda _c=False, a=action: bus().requested.emit(InterventionRequest(a, layer)))
    return menu


def attach_head_menu(widget: QWidget, locate: Callable[[QPoint], tuple[int, int] | None]) -> None:
    """Right-click on `widget` opens the head menu for the head `locate(point)` returns (None: no menu)."""
    widget.setContextMenuPolicy(Qt.CustomContextMenu)

    def show(point: QPoint) -> None:
        cell = locate(point)
        if cell is not None:
            head_menu(widget, *cell).exec(widget.mapToGlobal(point))
    widget.customContextMenuRequested.connect(show)


def attach_layer_menu(widget: QWidget, locate: Callable[[QPoint], int | None]) -> None:
    widget.setContextMenuPolicy(Qt.CustomContextMenu)

    def show(point: QPoint) -> None:
        layer = locate(point)
        if layer is not None:
            layer_menu(widget, layer).exec(widget.mapToGlobal(point))
    widget.customContextMenuRequested.connect(show)


def plot_locator(view, plot, cell: Callable[[float, float], Any]) -> Callable[[QPoint], Any]:
    """For a pyqtgraph GraphicsLayoutWidget `view` with PlotItem `plot`: widget point -> cell(x, y) in data units."""
    def locate(point: QPoint):
        p = plot.vb.mapSceneToView(view.mapToScene(point))
        return cell(p.x(), p.y())
    return locate


def table_head_locator(table) -> Callable[[QPoint], tuple[int, int] | None]:
    """For a table whose columns 0 and 1 hold layer and head (as Qt.UserRole data, else as text)."""
    def locate(point: QPoint):
        row = table.rowAt(point.y())
        if row < 0 or table.item(row, 0) is None or table.item(row, 1) is None:
            return None
        values = []
        for col in (0, 1):
            item = table.item(row, col)
            data = item.data(Qt.UserRole)
            values.append(int(data) if data is not None else int(item.text()))
        return values[0], values[1]
    return locate


# --- jobs that need the model --------------------------------------------------------------------------
class _Runner(QObject):
    progress = Signal(int, int, int)  # (job, done, total)
    done = Signal(int, object)
    failed = Signal(int, str)
    _start = Signal(int, object, object)

    def __init__(self, worker) -> None:
        super().__init__()
        self.worker = worker
        self._start.connect(self._run)

    @Slot(int, object, object)
    def _run(self, job: int, fn, cancel) -> None:
        session = getattr(self.worker, "session", None)
        if session is None:
            self.failed.emit(job, "No model is loaded yet.")
            return
        try:
            result = fn(session, cancel, lambda d, t: self.progress.emit(job, d, t))
        except Exception as exc:  # shown in the panel, never raised on the worker thread
            self.failed.emit(job, f"{type(exc).__name__}: {exc}")
        else:
            self.done.emit(job, result)


class ModelJobs(QObject):
    """`submit(fn, on_done, on_error, on_progress)`; fn(session, cancel, progress) runs on the worker thread."""

    def __init__(self, host, parent: QObject | None = None):
        super().__init__(parent)
        self.runner = _Runner(host.worker)
        self.runner.moveToThread(host.thread)
        self.runner.progress.connect(self._progress)
        self.runner.done.connect(self._done)
        self.runner.failed.connect(self._failed)
        self._jobs: dict[int, tuple] = {}
        self._next = 0
        self.cancel_event: threading.Event | None = None

    def submit(self, fn, on_done, on_error=None, on_progress=None) -> int:
        self._next += 1
        self.cancel_event = threading.Event()
        self._jobs[self._next] = (on_done, on_error, on_progress)
        self.runner._start.emit(self._next, fn, self.cancel_event)
        return self._next

    def cancel(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def _progress(self, job: int, done: int, total: int) -> None:
        cb = self._jobs.get(job, (None, None, None))[2]
        if cb is not None:
            cb(done, total)

    def _done(self, job: int, result) -> None:
        on_done = self._jobs.pop(job, (None,))[0]
        if on_done is not None:
            on_done(result)

    def _failed(self, job: int, message: str) -> None:
        callbacks = self._jobs.pop(job, (None, None))
        if callbacks[1] is not None:
            callbacks[1](message)


def find_main(widget: QWidget):
    """The main window (the first ancestor, or top-level window, with a worker host and `submit`)."""
    from PySide6.QtWidgets import QApplication

    w = widget
    while w is not None:
        if hasattr(w, "host") and hasattr(w, "submit"):
            return w
        w = w.parentWidget()
    for top in QApplication.topLevelWidgets():
        if hasattr(top, "host") and hasattr(top, "submit") and top.isAncestorOf(widget):
            return top
    return None


def find_host(widget: QWidget):
    """The main window's WorkerHost (None outside the app)."""
    return getattr(find_main(widget), "host", None)
