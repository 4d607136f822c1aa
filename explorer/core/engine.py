"""The engine: the one owner of the loaded model and the one road every job that needs it takes.

    caller --submit(request)--> [priority queue] --> engine thread --> handler(ctx, request)
    engine thread --on_event(Started / Step / Progress / Notice / Done / Failed / Cancelled)--> caller

A request is an immutable dataclass (plain data: a Run, a RunRequest, numbers), its kind's handler is
found in `HANDLERS` (a registry, see `handles`), and everything the handler produces goes out as
immutable events through one callback. Nothing else touches the model: runs, model loads, interventions,
sweeps and eviction / depth re-computations all run here, one at a time, on the engine thread, so a job
that changes the model's state (e.g. swaps its attention implementation) never runs behind another.
The queue, the requests and the events hold no Qt and no live objects of the caller, so the whole
engine can move into its own process with a transport in place of the callback.

Jobs with the same `key` supersede each other (a new run replaces a queued one and cancels the one in
progress); every job can be cancelled by id; higher `priority` runs first, FIFO within a priority.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .budget import DEFAULT_BUDGET, fit_request
from .errors import Cancelled, ExplorerError, InputError, PromptTooLongError
from .events import GenerationSettings, RunRequest
from .models import LoadedModel, load_model
from .run import Run
from .runner import Session
from .tokens import tokenize

log = logging.getLogger(__name__)


# --- requests (what a caller asks for) ----------------------------------------------------------------------
@dataclass(frozen=True)
class LoadModel:
    spec: str
    trust_remote_code: bool = False
    allow_pickle: bool = False


@dataclass(frozen=True)
class StreamRun:
    request: RunRequest
    previous: Run | None = None  # a run this engine streamed: its prefix cache may be reused
    budget: int = DEFAULT_BUDGET  # capture memory budget, bytes


@dataclass(frozen=True)
class CompleteRun:
    """A whole run, returned as one Run when done (e.g. the Compare panel's prompt B)."""
    request: RunRequest


@dataclass(frozen=True)
class AttachHead:
    """Give a run opened from a file saved without its vocabulary matrix the loaded model's own (same model)."""
    run: Run


@dataclass(frozen=True)
class TruncateToFit:
    """Keep the last prompt tokens that fit the context (with room for the new tokens)."""
    request: RunRequest


# --- events (what the engine says) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    job: int
    payload: Any = None  # a StreamRun: the empty Run its steps grow


@dataclass(frozen=True)
class Step:
    job: int
    event: Any  # StepEvent


@dataclass(frozen=True)
class Progress:
    job: int
    fraction: float
    message: str = ""
    detail: Any = None  # plain data a job reports besides (e.g. the Depth lab trainer's Progress record)


@dataclass(frozen=True)
class Notice:
    job: int
    message: str  # e.g. the run stores less to fit the memory budget


@dataclass(frozen=True)
class Done:
    job: int
    result: Any = None  # StreamRun: the finish reason; LoadModel: ModelInfo; TruncateToFit: (request, dropped)


@dataclass(frozen=True)
class Failed:
    job: int
    error: BaseException
    message: str
    needs: str = ""  # an opt-in that would allow it ("trust_remote_code", "allow_pickle")


@dataclass(frozen=True)
class JobCancelled:
    job: int


@dataclass(frozen=True)
class EngineLost:
    """The engine process stopped (crash, out of memory, killed) and was started again, without a model:
    the jobs in flight failed; the caller loads the model again (job 0: no job's event)."""
    message: str
    exit_code: int | None = None
    job: int = 0


EngineEvent = Started | Step | Progress | Notice | Done | Failed | JobCancelled | EngineLost


# --- the handler registry ---------------------------------------------------------------------------------------
@dataclass
class JobContext:
    """What a handler gets: its job id, cancel flag, progress and event outlet, and the engine (for the session)."""
    job: int
    cancel: threading.Event
    engine: Engine

    @property
    def session(self) -> Session:
        session = self.engine.session
        if session is None:
            raise InputError("No model is loaded yet.")
        return session

    def progress(self, fraction: float, message: str = "", detail: Any = None) -> None:
        self.engine._emit(Progress(self.job, float(fraction), message, detail))

    def emit(self, event: EngineEvent) -> None:
        self.engine._emit(event)


Handler = Callable[[JobContext, Any], Any]
HANDLERS: dict[type, Handler] = {}


def handles(kind: type) -> Callable[[Handler], Handler]:
    """Register the handler of a request type: handler(ctx, request) -> result (sent as Done)."""
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn
    return register


@dataclass
class _Job:
    id: int
    request: Any
    key: str | None
    cancel: threading.Event


class Engine:
    """Owns the model (its Session) and the one thread that uses it. Thread-safe `submit` / `cancel`."""

    def __init__(self, on_event: Callable[[EngineEvent], None], *, session: Session | None = None,
                 threads: int | None = None, name: str = "lm-explorer-engine"):
        self.on_event = on_event
        self.session = session
        self.threads = threads  # torch threads of the engine thread (None: leave torch's setting)
        self._lock = threading.Condition()
        self._queue: list[tuple[int, int, _Job]] = []
        self._ids = itertools.count(1)
        self._order = itertools.count()
        self._running: _Job | None = None
        self._closed = False
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()
        if session is not None:
            claim(session.loaded, self.thread)

    # --- any thread ------------------------------------------------------------------------------------------
    def submit(self, request: Any, *, key: str | None = None, priority: int = 0, job_id: int | None = None) -> int:
        """Queue a request; returns its job id (`job_id`: one the caller numbered, e.g. across a process
        boundary). A job with the same `key` queued or running is cancelled."""
        if type(request) not in HANDLERS:
            raise TypeError(f"the engine has no handler for {type(request).__name__}")
        job = _Job(job_id if job_id is not None else next(self._ids), request, key, threading.Event())
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is shut down")
            if key is not None:
                for _, _, queued in self._queue:
                    if queued.key == key:
                        queued.cancel.set()
                if self._running is not None and self._running.key == key:
                    self._running.cancel.set()
            heapq.heappush(self._queue, (-priority, next(self._order), job))
            self._lock.notify()
        return job.id

    def cancel(self, job_id: int | None = None, *, key: str | None = None) -> None:
        """Cancel one job (by id), or every job with `key`; a queued one never starts, a running one stops
        at its next cancel point (between layers / steps / heads)."""
        with self._lock:
            jobs = [j for _, _, j in self._queue] + ([self._running] if self._running else [])
            for job in jobs:
                if job.id == job_id or (key is not None and job.key == key):
                    job.cancel.set()

    def is_busy(self) -> bool:
        with self._lock:
            return self._running is not None or bool(self._queue)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def shutdown(self, timeout: float = 1.0) -> bool:
        """Cancel everything, stop the thread and wait up to `timeout` s; False when it is still inside a long
        library call (it is a daemon thread: the process can exit without it)."""
        with self._lock:
            self._closed = True
            for _, _, job in self._queue:
                job.cancel.set()
            if self._running is not None:
                self._running.cancel.set()
            self._lock.notify()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        if self.thread.is_alive():
            return False
        release(self.thread)
        return True

    # --- the engine thread --------------------------------------------------------------------------------------
    def _emit(self, event: EngineEvent) -> None:
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - a broken listener must not kill the engine
            log.exception("engine event listener failed")

    def _loop(self) -> None:
        if self.threads:
            import torch
            torch.set_num_threads(self.threads)
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if self._closed:
                    for _, _, job in self._queue:
                        self._emit(JobCancelled(job.id))
                    self._queue.clear()
                    return
                _, _, job = heapq.heappop(self._queue)
                self._running = job
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None

    def _run(self, job: _Job) -> None:
        if job.cancel.is_set():
            self._emit(JobCancelled(job.id))
            return
        ctx = JobContext(job.id, job.cancel, self)
        try:
            result = HANDLERS[type(job.request)](ctx, job.request)
        except Cancelled:
            self._emit(JobCancelled(job.id))
        except ExplorerError as exc:
            self._emit(Failed(job.id, exc, str(exc), getattr(exc, "needs", None) or ""))
        except MemoryError as exc:
            log.exception("out of memory in an engine job")
            self._emit(Failed(job.id, exc, "The computer ran out of memory during this job. Lower the capture "
                              "budget (Run > Capture memory budget), shorten the prompt or generate fewer tokens."))
        except Exception as exc:  # anything else: report it, keep the engine alive
            log.exception("engine job %s failed", type(job.request).__name__)
            self._emit(Failed(job.id, exc, f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=3)}",
                              getattr(exc, "needs", None) or ""))
        else:
            self._emit(Done(job.id, result))


# --- model ownership ------------------------------------------------------------------------------------------
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # torch module -> its engine thread's ident


def claim(loaded: LoadedModel, thread: threading.Thread) -> None:
    _OWNERS[loaded.model] = thread.ident or 0


def release(thread: threading.Thread) -> None:
    """Forget the models an engine thread owned (it has stopped; e.g. a test uses the model directly next)."""
    for model, owner in list(_OWNERS.items()):
        if owner == thread.ident:
            _OWNERS.pop(model, None)


def check_owner(loaded: LoadedModel) -> None:
    """Raise when a model an engine owns is used from another thread (a job must go through the engine)."""
    owner = _OWNERS.get(getattr(loaded, "model", loaded))
    if owner is not None and owner != threading.get_ident():
        raise RuntimeError("this model belongs to the engine: submit the work as an engine job")


# --- the built-in handlers ------------------------------------------------------------------------------------------
@handles(LoadModel)
def _load(ctx: JobContext, req: LoadModel):
    def progress(fraction: float, message: str) -> None:  # also the load's cancel point
        if ctx.cancel.is_set():
            raise Cancelled("Loading cancelled.")
        ctx.progress(fraction, message)

    loaded = load_model(req.spec, on_progress=progress, trust_remote_code=req.trust_remote_code,
                        allow_pickle=req.allow_pickle)
    if ctx.cancel.is_set():
        raise Cancelled("Loading cancelled.")
    session = Session(loaded)
    ctx.progress(1.0, f"Warming up {loaded.info.name}")
    try:  # one tiny run so that the first real run's timings are not those of a cold start
        for _ in session.stream(RunRequest("Hi", settings=GenerationSettings(max_new_tokens=1)), cancel=ctx.cancel):
            pass
    except Exception:  # noqa: BLE001 - warm-up is optional
        log.warning("warm-up run failed", exc_info=not ctx.cancel.is_set())
    if ctx.cancel.is_set():
        raise Cancelled("Loading cancelled.")
    session.forget_cache()
    ctx.engine.session = session
    claim(loaded, ctx.engine.thread)
    return loaded.info


@handles(StreamRun)
def _stream(ctx: JobContext, req: StreamRun) -> str:
    session = ctx.session
    request, plan = fit_request(session, req.request, req.budget)  # fails fast when too long
    if plan.reduced:
        ctx.emit(Notice(ctx.job, plan.message()))
    ctx.emit(Started(ctx.job, session.new_run(request)))
    reason = "done"
    for event in session.stream(request, previous=req.previous, cancel=ctx.cancel):
        ctx.emit(Step(ctx.job, event))
        reason = event.finish_reason or reason
        if ctx.cancel.is_set() and not event.finish_reason:
            raise Cancelled("Run cancelled.")
    return reason


@handles(CompleteRun)
def _complete(ctx: JobContext, req: CompleteRun) -> Run:
    from .api import run_request
    return run_request(ctx.session, req.request, cancel=ctx.cancel)


@handles(AttachHead)
def _attach_head(ctx: JobContext, req: AttachHead) -> bool:
    return ctx.session.attach_head(req.run)


@handles(TruncateToFit)
def _truncate(ctx: JobContext, req: TruncateToFit) -> tuple[RunRequest, int]:
    session = ctx.session
    request = req.request
    info, tok = session.info, session.loaded.tokenizer
    budget = info.context_length - (request.settings.max_new_tokens if info.is_causal else 0)
    ids = tok.encode(request.prompt, add_special_tokens=False)
    cut = max(0, len(ids) - budget)  # never re-tokenize the whole (maybe 1 MB) prompt with spans
    while cut < len(ids):
        text = tok.decode(ids[cut:])
        candidate = replace(request, prompt=text)
        n = len(tokenize(tok, text, chat=request.chat, system=request.system,
                         allow_special_in_text=request.allow_special_in_text, tools=request.tools,
                         turns=request.turns).ids)
        if n <= budget:
            return candidate, cut
        cut += max(1, n - budget)
    raise NoRoom(len(ids), info.context_length, no_room_message(session, request, budget))


class NoRoom(PromptTooLongError):
    """Not even an empty prompt fits (the message says why)."""

    def __init__(self, n_tokens: int, limit: int, message: str):
        super().__init__(n_tokens, limit)
        self.args = (message,)

    def __str__(self) -> str:
        return self.args[0]


def no_room_message(session: Session, request: RunRequest, budget: int) -> str:
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
