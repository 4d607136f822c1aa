"""The Python API: `explorer.capture(...)` returns the same Run object the GUI shows."""

from __future__ import annotations

import os
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
    if request.retrieval is not None:  # search first, so the Run's request holds the inserted chunks
        from .retrieval.rag import resolve

        request = resolve(request, cancel)
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
    tools=None,
    turns=(),
    engine=None,
    retrieve: str | os.PathLike | None = None,
    retrieve_k: int = 3,
    speculative: str | None = None,
) -> Run:
    """Run `prompt` through an instrumented model and return the captured Run.

    With `lens` ("logit", "tuned" or "jacobian" for the lens cached for this model, a folder written by
    `lm-explorer lens fit`, or a core.lens.Lens), `run.lens` holds that lens' readout at every depth and
    position: `.top_ids` / `.top_probs` [layers + 1, N, lens_top_k], `.kl` [layers + 1, N] (KL from the final
    distribution) and `.label`; `explorer.core.lens_store.top_tokens(run, run.lens)` names the tokens.

    Chat mode: `tools` are tool definitions in the JSON-schema form transformers' chat templates take (a list of
    dicts, or its JSON text; `explorer.core.tools.CALCULATOR` is built in); `turns` are (role, content) messages
    after the prompt ("assistant", "tool", "user"). Tokens the model writes inside <tool_call> tags have kind
    "tool_call", tool messages "tool_result", text inside <think> tags "reasoning";
    `explorer.core.tools.follow_up(run, result)` gives the request that continues after a tool call.

    With `engine` (an `EngineClient`: the engine process the window uses, with its model loaded), the run is
    made there and `model` is ignored; without it, in this thread with the same Session code.

    With `retrieve` (an index folder from `lm-explorer index build`), the `retrieve_k` chunks closest to the
    prompt (MiniLM embeddings, cosine) are inserted before it; their tokens have kind "retrieved" and
    `run.retrieved` lists them (source, text, score).

    With `speculative` ("prompt-lookup" or "layers", options as in core/speculative.py) the model verifies
    drafts in one pass each; at temperature 0 the tokens equal plain decoding's, and `run.drafts` lists
    each pass' proposed ids and how many were accepted.
    """
    from .tools import tools_json

    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                  top_p=top_p, seed=seed)
    retrieval = None
    if retrieve is not None:
        from .retrieval import Retrieval

        retrieval = Retrieval(index=os.fspath(retrieve), k=retrieve_k)
    request = RunRequest(prompt=prompt, chat=chat, system=system, settings=settings, tools=tools_json(tools),
                         turns=tuple((str(r), c) for r, c in _turn_pairs(turns)), retrieval=retrieval,
                         speculative=speculative or "")
    if engine is not None:
        run = engine.run(request, previous=previous, on_step=on_step, cancel=cancel)
    else:
        run = run_request(session_for(model), request, previous=previous, on_step=on_step, cancel=cancel)
    if lens is not None:
        from .lens_store import read_lens, resolve_lens

        run.lens = read_lens(run, resolve_lens(lens, run.info), k=lens_top_k)
    return run


def _turn_pairs(turns) -> list[tuple]:
    """(role, content) pairs from pairs or {"role", "content"} dicts (checked by core.prompt.check_conversation)."""
    from .errors import InputError

    pairs = [(t.get("role"), t.get("content")) if isinstance(t, dict) else tuple(t) for t in turns or ()]
    if any(len(p) != 2 for p in pairs):
        raise InputError("Each turn is a (role, content) pair or a {'role': ..., 'content': ...} dict.")
    return pairs
