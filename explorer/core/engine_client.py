"""A script's handle on the engine process: the same engine, queue and Runs as the window's.

    with EngineClient("smollm2-135m-instruct") as engine:     # starts the engine process, loads the model
        run = explorer.capture("The capital of France is", engine=engine, max_new_tokens=8)

Each call waits for its job; step events grow the Run here exactly as the window's RunController grows its
own (Started carries the empty Run, each Step is applied), so a window and a script see identical Runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from . import engine as eng
from .budget import DEFAULT_BUDGET
from .engine_process import ProcessEngine
from .errors import Cancelled, ExplorerError
from .events import RunRequest, StepEvent
from .run import Run


class EngineError(ExplorerError):
    """A job failed in the engine process (the message says why)."""


class EngineClient:
    def __init__(self, model: str = "smollm2-135m-instruct", *, threads: int | None = None,
                 timeout: float = 600.0):
        self._events: queue.Queue = queue.Queue()
        self.timeout = timeout
        self.engine = ProcessEngine(self._events.put, threads=threads)
        self.info = self.submit(eng.LoadModel(model))

    def submit(self, request: Any, on_event: Callable[[Any], None] | None = None,
               cancel: threading.Event | None = None) -> Any:
        """Run one engine job to its end; its result (EngineError when it failed, Cancelled when cancelled)."""
        job = self.engine.submit(request)
        cancelled = False
        while True:
            try:
                event = self._events.get(timeout=0.1)
            except queue.Empty:
                if cancel is not None and cancel.is_set() and not cancelled:
                    self.engine.cancel(job)
                    cancelled = True
                continue
            if isinstance(event, eng.EngineLost) or getattr(event, "job", None) != job:
                continue  # a stale event of an earlier job
            if on_event is not None:
                on_event(event)
            if isinstance(event, eng.Done):
                return event.result
            if isinstance(event, eng.Failed):
                raise EngineError(event.message.split("\n\n")[0]) from event.error
            if isinstance(event, eng.JobCancelled):
                raise Cancelled("Cancelled.")

    def run(self, request: RunRequest, *, previous: Run | None = None,
            on_step: Callable[[StepEvent, Run], None] | None = None, cancel: threading.Event | None = None,
            budget: int = DEFAULT_BUDGET) -> Run:
        """Stream a request in the engine process; the Run grown from its events."""
        runs: list[Run] = []

        def grow(event) -> None:
            if isinstance(event, eng.Started):
                runs.append(event.payload)
            elif isinstance(event, eng.Step):
                runs[0].apply(event.event)
                if on_step is not None:
                    on_step(event.event, runs[0])

        try:
            self.submit(eng.StreamRun(request, previous, budget), grow, cancel)
        except Cancelled:
            if not runs:
                raise
            runs[0].finish_reason = "cancelled"
        return runs[0]

    def close(self) -> None:
        self.engine.shutdown(2.0)

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
