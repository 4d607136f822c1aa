"""Long model work that must neither wait in nor block the engine's queue (fitting a lens, training and
probing Depth lab models), each job in an engine process of its own: the window's process never runs torch,
and a job that crashes takes nothing else down.

    job = SideJob(FitLens("smollm2-135m-instruct", "tuned", 3.0, out), on_event)   # starts a process
    on_event(Progress / Done / Failed / JobCancelled) arrives on a reader thread; job.cancel(); job.wait()

The process (one torch thread: the engine and the window keep theirs) ends with its job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engine import Done, Failed, JobCancelled, JobContext, handles
from .engine_process import JOB_MODULES, ProcessEngine

SIDE_MODULES = (*JOB_MODULES, "explorer.core.side_jobs", "explorer.lab.engine_jobs")


@dataclass(frozen=True)
class FitLens:
    """Fit a tuned or Jacobian lens on its own copy of `model` and save it to `out` (core/lens_fit.py)."""
    model: str
    kind: str
    minutes: float
    out: str


@handles(FitLens)
def _fit_lens(ctx: JobContext, req: FitLens) -> str:
    from .lens_fit import FitConfig, fit_and_save
    from .models import load_model

    loaded = load_model(req.model)
    fit_and_save(loaded, FitConfig(kind=req.kind, minutes=req.minutes), req.out,
                 on_progress=lambda f, m: ctx.progress(f, m), cancel=ctx.cancel)
    return req.out


class SideJob:
    """One request in a process of its own; `on_event` gets its events (on a reader thread)."""

    def __init__(self, request: Any, on_event: Callable[[Any], None] | None = None, *, name: str = "side-job"):
        self.on_event = on_event
        self.final: Any = None  # the Done / Failed / JobCancelled event
        self._finished = threading.Event()
        self.engine = ProcessEngine(self._event, threads=1, modules=SIDE_MODULES, restart=False,
                                    name=f"lm-explorer-{name}")
        self.job = self.engine.submit(request)

    def _event(self, event: Any) -> None:
        final = isinstance(event, (Done, Failed, JobCancelled))
        if final:
            self.final = event
        if self.on_event is not None:
            self.on_event(event)
        if final:
            self._finished.set()
            threading.Thread(target=self.engine.shutdown, args=(5.0,), daemon=True).start()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def cancel(self) -> None:
        self.engine.cancel(self.job)

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)


def run_side(request: Any, timeout: float | None = None) -> Any:
    """Run one request in a side process and wait for its result (call it off the GUI thread): the result,
    or ExplorerError with the job's message (Cancelled when cancelled)."""
    from .errors import Cancelled, ExplorerError

    job = SideJob(request)
    if not job.wait(timeout):
        job.cancel()
        raise ExplorerError(f"{type(request).__name__} took longer than {timeout:.0f} s")
    if isinstance(job.final, Done):
        return job.final.result
    if isinstance(job.final, JobCancelled):
        raise Cancelled("Cancelled.")
    raise ExplorerError(job.final.message.split("\n\n")[0])
