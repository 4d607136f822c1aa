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
        self.load_cancel = threading.Event()  # set when the window closes: a load in progress gives up
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
        def progress(fraction: float, message: str) -> None:  # also the load's cancel point
            if self.load_cancel.is_set():
                raise Cancelled("Loading cancelled.")
            self.load_progress.emit(float(fraction), message)

        if self.load_cancel.is_set():
            return
        try:
            loaded: LoadedModel = load_model(spec, on_progress=progress, trust_remote_code=trust_remote_code,
                                             allow_pickle=allow_pickle)
        except Cancelled:
            log.info("model load cancelled: %s", spec)
            return
        except Exception as exc:  # the old model stays
            log.warning("model load failed: %s", spec, exc_info=not isinstance(exc, ExplorerError))
            message = str(exc) if isinstance(exc, ExplorerError) else f"{type(exc).__name__}: {exc}"
            self.load_failed.emit(spec, message, getattr(exc, "needs", None) or "")
            return
        if self.load_cancel.is_set():
            return
        session = Session(loaded)
        self.load_progress.emit(1.0, f"Warming up {loaded.info.name}")
        try:  # one tiny run so that the first real run's timings are not those of a cold start
            for _ in session.stream(RunRequest("Hi", settings=GenerationSettings(max_new_tokens=1)),
                                    cancel=self.load_cancel):
                pass
        except Exception:  # noqa: BLE001 - warm-up is optional
            log.warning("warm-up run failed", exc_info=not self.load_cancel.is_set())
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
        self.run_failed.emit(-1, PromptTooLongError(len(ids), info.context_length), _no_room_message(
            self.session, request, budget))


def _no_room_message(session: Session, request: RunRequest, budget: int) -> str:
    """Why not even an empty prompt fits: the new tokens asked for, or the system prompt (and chat template)."""
    info, tok = session.info, session.loaded.tokenizer
    max_new = request.settings.max_new_tokens if info.is_causal else 0
    context = f"the model's context holds {info.context_length:,} tokens"
    if max_new >= info.context_length:
        return f"Max new tokens ({max_new:,}) is not below the model's context ({info.context_length:,}): lower it."

    def overhead(system: str | None) -> int:  # tokens of the template around an empty prompt
        try:
            return len(tokenize(tok, "", chat=request.chat, system=system,
                                allow_special_in_text=request.allow_special_in_text).ids)
        except Exception:  # noqa: BLE001 - only for the wording
            return 0

    if request.chat and request.system:
        with_system, without = overhead(request.system), overhead(None)
        if with_system >= budget > without:
            return (f"The system prompt is too long: with the chat template it takes {with_system:,} tokens "
                    f"({with_system - without:,} for the system prompt) and {context}, {max_new:,} of them kept "
                    "for new tokens. Shorten the system prompt (truncating the prompt cannot help).")
    return (f"Even an empty prompt does not fit: {context} and {max_new:,} new tokens are asked for. "
            "Lower max new tokens.")


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

    def detach(self) -> None:
        """Cancel the run in progress and ignore everything it still sends (no run is active after this)."""
        self.stop()
        self.active_id = -1

    def shutdown(self, msecs: int = 1000) -> bool:
        """Cancel the run and any model load, stop the thread and wait up to `msecs` (the window closes).

        Runs and loads check their cancel flags between layers / files / tensors, so this normally returns
        at once. If the thread is stuck inside one long library call, it is left to finish on its own
        (`orphaned()` is then True and the app exits the process without waiting; destroying a running
        QThread would abort the process).
        """
        self.worker.load_cancel.set()
        self.stop()
        self.thread.quit()
        ok = bool(self.thread.wait(msecs))
        if not ok and self.thread not in _ORPHANS:
            log.warning("the worker is still busy inside a library call; the window closes without waiting")
            _ORPHANS.append(self.thread)  # never garbage-collected while running
            _ORPHANS.append(self.worker)
        return ok


_ORPHANS: list[QObject] = []


def orphaned() -> bool:
    """True when a worker thread was left running at close (the process must exit without joining it)."""
    return any(isinstance(t, QThread) and t.isRunning() for t in _ORPHANS)
