"""The Python API: `explorer.capture(...)` returns the same Run object the GUI shows."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache

from .errors import Cancelled
from .events import GenerationSettings, RunRequest, StepEvent
from .models import LoadedModel, load_model
from .run import Run
from .runner import Session


@lru_cache(maxsize=2)
def _session(model: str) -> Session:
    return Session(load_model(model))


def session_for(model: str | LoadedModel | Session) -> Session:
    if isinstance(model, Session):
        return model
    if isinstance(model, LoadedModel):
        return Session(model)
    return _session(model)


def run_request(session: Session, request: RunRequest, *, previous: Run | None = None,
                on_step: Callable[[StepEvent, Run], None] | None = None,
                cancel: threading.Event | None = None) -> Run:
    """Run a request to completion, growing a Run from its events."""
    run = session.new_run(request)
    try:
        for event in session.stream(request, previous=previous, cancel=cancel):
            run.apply(event)
            if on_step is not None:
                on_step(event, run)
    except Cancelled:
        run.finish_reason = "cancelled"
    return run


def capture(
    prompt: str,
    model: str | LoadedModel | Session = "smollm2-135m-instruct",
    *,
    chat: bool = False,
    system: str | None = None,
    max_new_tokens: int = 0,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    on_step: Callable[[StepEvent, Run], None] | None = None,
    previous: Run | None = None,
    cancel: threading.Event | None = None,
    lens=None,
    lens_top_k: int = 5,
    speculative: str | None = None,
) -> Run:
    """Run `prompt` through an instrumented model and return the captured Run.

    With `lens` ("logit", "tuned" or "jacobian" for the lens cached for this model, a folder written by
    `lm-explorer lens fit`, or a core.lens.Lens), `run.lens` holds that lens' readout at every depth and
    position: `.top_ids` / `.top_probs` [layers + 1, N, lens_top_k], `.kl` [layers + 1, N] (KL from the final
    distribution) and `.label`; `explorer.core.lens_store.top_tokens(run, run.lens)` names the tokens.

    With `speculative` ("prompt-lookup" or "layers", options as in core/speculative.py) the model verifies
    drafts in one pass each; at temperature 0 the tokens equal plain decoding's, and `run.drafts` lists
    each pass' proposed ids and how many were accepted.
    """
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                  top_p=top_p, seed=seed)
    request = RunRequest(prompt=prompt, chat=chat, system=system, settings=settings, speculative=speculative or "")
    run = run_request(session_for(model), request, previous=previous, on_step=on_step, cancel=cancel)
    if lens is not None:
        from .lens_store import read_lens, resolve_lens

        run.lens = read_lens(run, resolve_lens(lens, run.info), k=lens_top_k)
    return run
