"""The worker thread: loads models and streams runs off the GUI thread.

    GUI --submit(request, previous)--> [pending slot] --wake--> Worker (QThread)
    Worker --run_started(id, run) / step(id, event) / run_finished(id, reason)--> GUI (queued)

The GUI owns the `Run` and grows it with `run.apply(event)` on its own thread; the worker only
creates the empty Run (`Session.new_run`) and yields events. A newer request replaces a queued
one (coalescing) and cancels the one in progress; Stop sets the run's cancel event, which the
runner checks between layers, so it stops within one step.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import replace

from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot

from ..core.budget import DEFAULT_BUDGET, fit_request
from ..core.errors import Cancelled, ExplorerError, InputError, PromptTooLongError
from ..core.events import GenerationSettings, RunRequest
from ..core.models import LoadedModel, load_model
from ..core.run import Run
from ..core.runner import Session
from ..core.tokens import tokenize

log = logging.getLogger(__name__)


class Worker(QObject):
    """Lives on the worker thread; every slot runs there."""

    load_progress = Signal(float, str)
    model_loaded = Signal(object)  # ModelInfo
    load_failed = Signal(str, str, str)  # (spec, message, opt-in that would allow it: "", "trust_remote_code"...)
    run_started = Signal(int, object)  # (run id, empty Run)
    step = Signal(int, object)  # (run id, StepEvent)
    run_finished = Signal(int, str)  # (run id, finish reason, "cancelled" when stopped)
    run_failed = Signal(int, object, str)  # (run id, exception, message)
    truncated = Signal(object, int)  # (RunRequest that fits, tokens dropped)
    capture_reduced = Signal(int, str)  # (run id, message): the run stores less to fit the memory budget

    _wake = Signal()
    _load = Signal(str, bool, bool)  # (spec, trust_remote_code, allow_pickle)
    _truncate = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        self.capture_budget = DEFAULT_BUDGET  # bytes; set by the window from its settings
        self._lock = threading.Lock()
        self._pending: tuple[int, RunRequest, Run | None, threading.Event] | None = None
        self._wake.connect(self._take_pending)
        self._load.connect(self._do_load)
        self._truncate.connect(self._do_truncate)

    # --- called from the GUI thread (thread-safe) -------------------------------------------------
    def post(self, run_id: int, request: RunRequest, previous: Run | None, cancel: threading.Event) -> None:
        with self._lock:
            if self._pending is not None:  # superseded before it started: never runs
                self._pending[3].set()
            self._pending = (run_id, request, previous, cancel)
        self._wake.emit()

    # --- worker-thread slots ------------------------------------------------------------------------
    @Slot()
    def _take_pending(self) -> None:
        with self._lock:
            job, self._pending = self._pending, None
        if job is None:
            return
        run_id, request, previous, cancel = job
        if cancel.is_set():
            self.run_finished.emit(run_id, "cancelled")
            return
        if self.session is None:
            self.run_failed.emit(run_id, InputError("No model is loaded yet."), "No model is loaded yet.")
            return
        try:
            request, plan = fit_request(self.session, request, self.capture_budget)  # fails fast when too long
            if plan.reduced:
                self.capture_reduced.emit(run_id, plan.message())
            run = self.session.new_run(request)
            self.run_started.emit(run_id, run)
            reason = "done"
            for event in self.session.stream(request, previous=previous, cancel=cancel):
                self.step.emit(run_id, event)
                reason = event.finish_reason or reason
                if cancel.is_set() and not event.finish_reason:
                    raise Cancelled("Run cancelled.")
            self.run_finished.emit(run_id, reason)
        except Cancelled:
            self.run_finished.emit(run_id, "cancelled")
        except ExplorerError as exc:
            self.run_failed.emit(run_id, exc, str(exc))
        except MemoryError as exc:
            log.exception("out of memory during a run")
            self.run_failed.emit(run_id, exc, "The computer ran out of memory during this run. Lower the capture "
                                 "budget (Run > Capture memory budget), shorten the prompt or generate fewer tokens.")
        except Exception as exc:  # anything else: report it, keep the thread alive
            log.exception("run failed")
            self.run_failed.emit(run_id, exc, f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=3)}")

    @Slot(str, bool, bool)
    def _do_load(self, spec: str, trust_remote_code: bool = False, allow_pickle: bool = False) -> None:
        try:
            loaded: LoadedModel = load_model(spec, on_progress=lambda f, m: self.load_progress.emit(float(f), m),
                                             trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        except Exception as exc:  # the old model stays
            log.warning("model load failed: %s", spec, exc_info=not isinstance(exc, ExplorerError))
            message = str(exc) if isinstance(exc, ExplorerError) else f"{type(exc).__name__}: {exc}"
            self.load_failed.emit(spec, message, getattr(exc, "needs", None) or "")
            return
        session = Session(loaded)
        self.load_progress.emit(1.0, f"Warming up {loaded.info.name}")
        try:  # one tiny run so that the first real run's timings are not those of a cold start
            for _ in session.stream(RunRequest("Hi", settings=GenerationSettings(max_new_tokens=1))):
                pass
        except Exception:  # noqa: BLE001 - warm-up is optional
            log.warning("warm-up run failed", exc_info=True)
        session.forget_cache()
        self.session = session
        self.model_loaded.emit(loaded.info)

    @Slot(object)
    def _do_truncate(self, request: RunRequest) -> None:
        """Keep the last prompt tokens that fit the context (with room for the new tokens)."""
        if self.session is None:
            return
        info, tok = self.session.info, self.session.loaded.tokenizer
        budget = info.context_length - (request.settings.max_new_tokens if info.is_causal else 0)
        ids = tok.encode(request.prompt, add_special_tokens=False)
        cut = max(0, len(ids) - budget)  # never re-tokenize the whole (maybe 1 MB) prompt with spans
        while cut < len(ids):
            text = tok.decode(ids[cut:])
            candidate = replace(request, prompt=text)
            n = len(tokenize(tok, text, chat=request.chat, system=request.system,
                             allow_special_in_text=request.allow_special_in_text).ids)
            if n <= budget:
                self.truncated.emit(candidate, cut)
                return
            cut += max(1, n - budget)
        self.run_failed.emit(-1, PromptTooLongError(len(ids), info.context_length),
                             "Even an empty prompt does not fit: lower max new tokens.")


class WorkerHost(QObject):
    """Owns the worker thread; the GUI talks to this object only."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.thread = QThread()
        self.thread.setObjectName("lm-explorer-worker")
        self.worker = Worker()
        self.worker.moveToThread(self.thread)
        self.thread.start()
        self._next_id = 0
        self._cancel: threading.Event | None = None
        self.active_id = -1  # the run whose events the GUI should apply
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    def load(self, spec: str, trust_remote_code: bool = False, allow_pickle: bool = False) -> None:
        self.worker._load.emit(spec, trust_remote_code, allow_pickle)

    def submit(self, request: RunRequest, previous: Run | None) -> int:
        """Start a run (cancelling the one in progress); returns its id."""
        self.stop()
        self._next_id += 1
        self.active_id = self._next_id
        self._cancel = threading.Event()
        self.worker.post(self.active_id, request, previous, self._cancel)
        return self.active_id

    def truncate(self, request: RunRequest) -> None:
        self.worker._truncate.emit(request)

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def shutdown(self, msecs: int = 60000) -> bool:
        """Cancel, stop the thread and wait for it (used when the window closes)."""
        self.stop()
        self.thread.quit()
        ok = self.thread.wait(msecs)
        return bool(ok)
