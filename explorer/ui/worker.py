"""The Qt adapter of the engine (core.engine.Engine): the window's and the panels' one way to the model.

    GUI --load / submit(run) / submit_job(request, callbacks)--> Engine (its own thread, one job at a time)
    Engine --events--> [queued signal] --> EngineHost on the GUI thread --> run signals / job callbacks

Every event crosses to the GUI thread through one queued signal, so every signal below and every job
callback is delivered on the GUI thread. Runs coalesce: a newer run replaces a queued one and cancels the
one in progress; Stop cancels the active run, which the runner notices between layers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, Qt, Signal

from ..core import engine as eng
from ..core.budget import DEFAULT_BUDGET
from ..core.engine_process import import_job_modules
from ..core.events import RunRequest
from ..core.run import Run

log = logging.getLogger(__name__)
RUN_KEY = "run"
import_job_modules()  # the engine's jobs, registered here too: the thread engine and `submit_job` checks


@dataclass
class _Callbacks:
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[str], None] | None = None
    on_progress: Callable[[float, str], None] | None = None


class JobHandle:
    """A submitted model job: `cancel()` it; `done` once its result, error or cancellation arrived."""

    def __init__(self, host: EngineHost, job_id: int):
        self.host, self.id, self.done = host, job_id, False

    def cancel(self) -> None:
        self.host.engine.cancel(self.id)


class SideHandle(JobHandle):
    """A job in a side process of its own (core/side_jobs.py); its id is negative (never an engine job's)."""

    def __init__(self, host: EngineHost, job_id: int):
        super().__init__(host, job_id)
        self.side = None

    def cancel(self) -> None:
        if self.side is not None:
            self.side.cancel()


class EngineHost(QObject):
    """Owns the Engine; re-emits its events on the GUI thread."""

    load_progress = Signal(float, str)
    model_loaded = Signal(object)  # ModelInfo
    load_failed = Signal(str, str, str)  # (spec, message, opt-in that would allow it: "", "trust_remote_code"...)
    run_started = Signal(int, object)  # (run id, empty Run)
    step = Signal(int, object)  # (run id, StepEvent)
    run_finished = Signal(int, str)  # (run id, finish reason, "cancelled" when stopped)
    run_failed = Signal(int, object, str)  # (run id, exception, message); -1: a truncation found no room
    truncated = Signal(object, int)  # (RunRequest that fits, tokens dropped)
    capture_reduced = Signal(int, str)  # (run id, message): the run stores less to fit the memory budget
    engine_lost = Signal(str)  # the engine process stopped and was restarted (the message says why)
    _event = Signal(object)  # an engine event, from the engine thread

    def __init__(self, parent: QObject | None = None, *, session=None, threads: int | None = None,
                 kind: str | None = None):
        """`kind`: "process" (the engine in its own process: the app's default) or "thread" (in this process:
        tests, and a given `session`); None: $LM_EXPLORER_ENGINE, else "process"."""
        super().__init__(parent)
        self.capture_budget = DEFAULT_BUDGET  # bytes; set by the window from its settings
        self.active_id = -1  # the run whose events the GUI should apply
        self._kinds: dict[int, Any] = {}  # job id -> its request (load / run / truncate) or _Callbacks
        self._starting: dict[int, Run] = {}  # run job id -> its empty Run, until its first step (engine thread)
        self._loaded: eng.LoadModel | None = None  # the last model load that succeeded (reloaded after a crash)
        self._event.connect(self._dispatch, Qt.QueuedConnection)
        self.kind = engine_kind(kind, session)
        if self.kind == "process":
            from ..core.engine_process import ProcessEngine

            self.engine = ProcessEngine(self._from_engine, threads=threads)
        else:
            self.engine = eng.Engine(self._from_engine, session=session, threads=threads)
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    @property
    def session(self):
        """The engine's Session (None before a model is loaded, and always with the engine in its own process).
        Read it for information only: jobs that use the model go through `submit_job`."""
        return self.engine.session

    # --- the window's requests ----------------------------------------------------------------------------
    def load(self, spec: str, trust_remote_code: bool = False, allow_pickle: bool = False) -> int:
        if self._shut:
            return -1
        request = eng.LoadModel(spec, trust_remote_code, allow_pickle)
        job = self.engine.submit(request, key="load", priority=1)
        self._kinds[job] = request
        return job

    def submit(self, request: RunRequest, previous: Run | None) -> int:
        """Start a run (cancelling the one in progress); returns its id (-1: the engine is shut down)."""
        if self._shut:
            return -1
        job = self.engine.submit(eng.StreamRun(request, previous, self.capture_budget), key=RUN_KEY)
        self._kinds[job] = RUN_KEY
        self.active_id = job
        return job

    def truncate(self, request: RunRequest) -> int:
        if self._shut:
            return -1
        job = self.engine.submit(eng.TruncateToFit(request))
        self._kinds[job] = "truncate"
        return job

    def stop(self) -> None:
        if self.active_id != -1:
            self.engine.cancel(self.active_id)

    def detach(self) -> None:
        """Cancel the run in progress and ignore everything it still sends (no run is active after this)."""
        self.stop()
        self.active_id = -1

    # --- the panels' requests --------------------------------------------------------------------------------
    def submit_job(self, request: Any, on_done: Callable[[Any], None] | None = None,
                   on_error: Callable[[str], None] | None = None,
                   on_progress: Callable[[float, str], None] | None = None, *, key: str | None = None) -> JobHandle:
        """Queue a model job (a request type registered with the engine); the callbacks run on the GUI thread.
        None once the engine is shut down (the window closed)."""
        if self._shut:
            return None
        job = self.engine.submit(request, key=key)
        handle = JobHandle(self, job)
        self._kinds[job] = (_Callbacks(on_done, on_error, on_progress), handle)
        return handle

    def submit_side_job(self, request: Any, on_done: Callable[[Any], None] | None = None,
                        on_error: Callable[[str], None] | None = None,
                        on_progress: Callable[[float, str], None] | None = None) -> JobHandle:
        """A long job (e.g. building a retrieval index) in a process of its own, so it neither waits in nor
        blocks the engine's queue; the callbacks run on the GUI thread, as for `submit_job`."""
        from ..core.side_jobs import SideJob

        self._side_ids -= 1
        handle = SideHandle(self, self._side_ids)
        self._kinds[handle.id] = (_Callbacks(on_done, on_error, on_progress), handle)
        handle.side = SideJob(request, lambda event: self._event.emit(replace(event, job=handle.id)),
                              name=type(request).__name__)
        return handle

    _side_ids = 0
    _shut = False  # after shutdown: requests are ignored (a closed window's panels may still ask)

    # --- events, on the engine's thread (the process engine's reader thread) ------------------------------------
    def _from_engine(self, event: eng.EngineEvent) -> None:
        """Pass an engine event to the GUI thread. A run's first step is first given room for the steps planned
        after it (`Run.with_room`), here, so the GUI thread adopts its arrays instead of copying them."""
        if isinstance(event, eng.Started) and isinstance(event.payload, Run):
            self._starting[event.job] = event.payload
        elif isinstance(event, eng.Step) and event.job in self._starting:
            event = replace(event, event=self._starting.pop(event.job).with_room(event.event))
        elif isinstance(event, (eng.Done, eng.Failed, eng.JobCancelled)):
            self._starting.pop(event.job, None)
        elif isinstance(event, eng.EngineLost):  # (its runs will send no first step)
            self._starting.clear()
        self._event.emit(event)

    # --- events, on the GUI thread --------------------------------------------------------------------------------
    def _dispatch(self, event: eng.EngineEvent) -> None:
        if isinstance(event, eng.EngineLost):
            self._engine_lost(event)
            return
        kind = self._kinds.get(event.job)
        final = isinstance(event, (eng.Done, eng.Failed, eng.JobCancelled))
        if final:
            self._kinds.pop(event.job, None)
        if isinstance(kind, tuple):
            self._job_event(event, *kind)
        elif kind == RUN_KEY:
            self._run_event(event)
        elif isinstance(kind, eng.LoadModel):
            self._load_event(event, kind)
        elif kind == "truncate":
            if isinstance(event, eng.Done):
                self.truncated.emit(*event.result)
            elif isinstance(event, eng.Failed):
                self.run_failed.emit(-1, event.error, event.message)

    def _run_event(self, event: eng.EngineEvent) -> None:
        if isinstance(event, eng.Step):
            self.step.emit(event.job, event.event)
        elif isinstance(event, eng.Started):
            self.run_started.emit(event.job, event.payload)
        elif isinstance(event, eng.Notice):
            self.capture_reduced.emit(event.job, event.message)
        elif isinstance(event, eng.Done):
            self.run_finished.emit(event.job, event.result)
        elif isinstance(event, eng.JobCancelled):
            self.run_finished.emit(event.job, "cancelled")
        elif isinstance(event, eng.Failed):
            self.run_failed.emit(event.job, event.error, event.message)

    def _load_event(self, event: eng.EngineEvent, request: eng.LoadModel) -> None:
        if isinstance(event, eng.Progress):
            self.load_progress.emit(event.fraction, event.message)
        elif isinstance(event, eng.Done):
            self._loaded = request
            self.model_loaded.emit(event.result)
        elif isinstance(event, eng.Failed):
            message = event.message.split("\n\n")[0]  # no traceback in the banner (it is in the log)
            log.warning("model load failed: %s: %s", request.spec, message)
            self.load_failed.emit(request.spec, message, event.needs)

    @staticmethod
    def _job_event(event: eng.EngineEvent, callbacks: _Callbacks, handle: JobHandle) -> None:
        try:
            EngineHost._deliver(event, callbacks, handle)
        except Exception:  # a panel's callback failed: log it, the engine and the other jobs go on
            log.exception("a model job's callback failed")

    @staticmethod
    def _deliver(event: eng.EngineEvent, callbacks: _Callbacks, handle: JobHandle) -> None:
        if isinstance(event, eng.Progress):
            if callbacks.on_progress is not None:
                callbacks.on_progress(event.fraction, event.message)
            return
        handle.done = isinstance(event, (eng.Done, eng.Failed, eng.JobCancelled))
        if isinstance(event, eng.Done) and callbacks.on_done is not None:
            callbacks.on_done(event.result)
        elif isinstance(event, eng.Failed) and callbacks.on_error is not None:
            callbacks.on_error(event.message.split("\n\n")[0])
        elif isinstance(event, eng.JobCancelled) and callbacks.on_error is not None:
            callbacks.on_error("cancelled")

    def _engine_lost(self, event: eng.EngineLost) -> None:
        """The engine process died (its jobs already failed): say so and load the model again in the new one."""
        if self.active_id != -1:
            self.active_id = -1
        again = self._loaded
        tail = f" Restarting it and loading {again.spec} again; what is on screen stays." if again else \
            " It was restarted; what is on screen stays."
        self.engine_lost.emit(event.message + tail)
        if again is not None:
            self.load(again.spec, again.trust_remote_code, again.allow_pickle)

    def shutdown(self, msecs: int = 1000) -> bool:
        """Cancel every job (a model load included) and wait up to `msecs` for the engine thread (the window
        closes). Runs and loads check their cancel flags between layers / files / tensors, so this normally
        returns at once; a thread stuck inside one long library call is left to finish on its own (it is a
        daemon thread, and `orphaned()` says so)."""
        self.active_id = -1
        self._shut = True
        ok = self.engine.shutdown(msecs / 1000)
        if not ok and self.engine not in _ORPHANS:
            log.warning("the engine is still busy inside a library call; the window closes without waiting")
            _ORPHANS.append(self.engine)
        return ok


_ORPHANS: list[eng.Engine] = []
ENGINE_KINDS = ("process", "thread")


def engine_kind(kind: str | None, session=None) -> str:
    """Where the engine runs: the argument, else "thread" for a given session (it is in this process), else
    $LM_EXPLORER_ENGINE, else "process"."""
    import os

    if kind is None:
        kind = "thread" if session is not None else os.environ.get("LM_EXPLORER_ENGINE", "process")
    if kind not in ENGINE_KINDS:
        raise ValueError(f"engine must be one of {ENGINE_KINDS}, not {kind!r}")
    return kind


def orphaned() -> bool:
    """True when an engine thread was left running at close (the process must exit without joining it)."""
    return any(e.alive for e in _ORPHANS)
