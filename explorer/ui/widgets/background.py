"""Heavy analyses off the GUI thread: submit a function, get its result (or error) by signal.

Results come back through a queued signal to the GUI thread; a newer job with the same key
supersedes an older one: if it has not started, it is skipped, and if it has, its result is dropped,
so fast scrubbing never piles up stale work.

Only for analyses of arrays (a Run, numpy): work that uses the model is an engine job
(`Panel.services.submit_job`, core/engine.py), so that the model is only ever used on the engine thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QCoreApplication, QEvent, QObject, QRunnable, QThreadPool, Signal
from PySide6.QtWidgets import QWidget
from shiboken6 import isValid

from .collector import collect_on_gui_thread
from .frame_work import frame_work

log = logging.getLogger(__name__)


class _Relay(QObject):
    done = Signal(object, object)  # (job id, result)
    failed = Signal(object, str)  # (job id, message)


BACKGROUND_NICE = 10  # pool threads yield the CPU to the GUI thread (and the engine) when cores are busy
_thread_state = threading.local()


def _lower_priority() -> None:
    """Once per pool thread: a higher nice value for this thread only (Linux: setpriority on a thread id)."""
    if getattr(_thread_state, "niced", False):
        return
    _thread_state.niced = True
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       max(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), BACKGROUND_NICE))


class _Job(QRunnable):
    def __init__(self, job_id: int, fn: Callable[[], Any], relay: _Relay):
        super().__init__()
        self.job_id, self.fn, self.relay = job_id, fn, relay

    def run(self) -> None:
        _lower_priority()
        try:
            result = self.fn()
        except Exception as exc:  # reported to the GUI, never raised in a pool thread
            log.exception("background job failed")
            self._tell(self.relay.failed, f"{type(exc).__name__}: {exc}")
        else:
            self._tell(self.relay.done, result)

    def _tell(self, signal, value) -> None:
        try:
            signal.emit(self.job_id, value)
        except RuntimeError:  # the panel that asked was closed and deleted meanwhile: nobody to tell
            log.debug("background job %s finished after its panel was deleted", self.job_id)


class Background(QObject):
    """One per panel: `submit(key, fn, on_done, on_error)`; the latest job per key wins."""

    _pool: QThreadPool | None = None

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._relay = _Relay(self)
        self._relay.done.connect(self._on_done)
        self._relay.failed.connect(self._on_failed)
        self._ids = itertools.count()
        self._latest: dict[str, int] = {}
        self._callbacks: dict[int, tuple[str, Callable, Callable | None]] = {}

    @classmethod
    def pool(cls) -> QThreadPool:
        if cls._pool is None:
            collect_on_gui_thread()  # before any pool thread can allocate (see there)
            cls._pool = QThreadPool()
            cls._pool.setMaxThreadCount(1)  # analyses share 2 cores with the model; one at a time
        return cls._pool

    def submit(self, key: str, fn: Callable[[], Any], on_done: Callable[[Any], None],
               on_error: Callable[[str], None] | None = None, priority: int = 0) -> int:
        """Queue `fn`; a higher `priority` runs before queued jobs of lower priority (e.g. live updates
        ahead of progressive fill-in)."""
        job_id = next(self._ids)
        self._latest[key] = job_id
        self._callbacks[job_id] = (key, on_done, on_error)
        latest = self._latest

        def unless_superseded():  # a newer job with this key was queued meanwhile: skip the work
            return fn() if latest.get(key) == job_id else None

        self.pool().start(_Job(job_id, unless_superseded, self._relay), priority)
        return job_id

    # A result is shown through the GUI thread's budgeted queue (frame_work.py): results that land together are
    # shown a few per slot, each followed by its panel's paint, instead of all in one block that input waits for.
    def _on_done(self, job_id: int, result: Any) -> None:
        key, on_done, _ = self._callbacks.pop(job_id, (None, None, None))
        if key is not None and self._latest.get(key) == job_id:
            self._show(key, lambda: on_done(result))

    def _on_failed(self, job_id: int, message: str) -> None:
        key, _, on_error = self._callbacks.pop(job_id, (None, None, None))
        if key is not None and self._latest.get(key) == job_id and on_error is not None:
            self._show(key, lambda: on_error(message))

    def _show(self, key: str, deliver: Callable[[], None]) -> None:
        """A newer result under the same key replaces this one if it is still waiting in the queue."""
        parent = self.parent()

        def run() -> None:
            if isValid(self):  # (the panel that asked was deleted meanwhile)
                deliver()

        frame_work().post((id(self), key), parent if isinstance(parent, QWidget) else None, run)

    @classmethod
    def wait_idle(cls, msecs: int = 30000) -> bool:
        """For tests and screenshots: wait until every submitted job has finished and its result is shown."""
        done = cls.pool().waitForDone(msecs)
        QCoreApplication.sendPostedEvents(None, QEvent.Type.MetaCall)  # the results' queued signals
        frame_work().run_all()
        return done
