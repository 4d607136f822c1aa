"""A request on its way in: checked and tokenized once, its length checked, its capture planned.

    settings checked -> text checked and encoded (ids only) -> length checked -> spans -> capture plan

The length check runs on the ids, before the (slower) spans, so a prompt far over the context
fails in seconds. `Session.prepare` keeps the last prepared prompt, so `budget.fit_request`
followed by `Session.stream` tokenizes once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import sampling
from .budget import CapturePlan, plan_capture
from .errors import InputError, PromptTooLongError
from .events import RunRequest
from .models import ModelInfo
from .speculative import parse_speculative
from .tokens import TokenBytes, Tokenized, encode, with_spans


@dataclass(frozen=True)
class Prepared:
    request: RunRequest  # with `skip_arrays` widened when the capture plan left arrays out
    tokenized: Tokenized
    tokenize_ms: float
    plan: CapturePlan | None = None  # None: no capture budget was given

    @property
    def ids(self) -> list[int]:
        return self.tokenized.ids

    def matches(self, request: RunRequest) -> bool:
        """Whether `request` tokenizes to this prompt (the same text, template and special-token rule)."""
        return prompt_key(self.request) == prompt_key(request)


def prompt_key(request: RunRequest) -> tuple:
    """Everything tokenization depends on, for one tokenizer."""
    return (request.prompt, request.chat, request.system, request.allow_special_in_text, request.tools,
            request.turns, request.retrieval)


def check_request(request: RunRequest) -> None:
    """Settings a user can get wrong (InputError), checked before any tokenization."""
    settings = request.settings
    sampling.validate(settings.temperature, settings.top_k, settings.top_p)
    parse_speculative(request.speculative)
    if not request.prompt:  # whitespace alone ("\n\n", "\t", a no-break space) is real tokens: valid
        raise InputError("The prompt is empty: type some text to run.")
    if settings.max_new_tokens < 0:
        raise InputError("Max new tokens cannot be negative.")
    check_conversation(request)
    seed = settings.seed  # numpy refuses a negative or non-integer seed with its own error: say it plainly
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"The seed must be a whole number, 0 or more (got {seed!r}).")


_ROLES = ("user", "assistant", "tool")
MAX_TURNS = 64


def check_conversation(request: RunRequest) -> None:
    """Tool definitions and the turns after the prompt (ToolError/InputError): chat mode, known roles, sizes."""
    from .tools import check_result, tools_json

    if (request.tools or request.turns) and not request.chat:
        raise InputError("Tools and tool results need chat mode (the chat template formats them).")
    if request.tools is not None:
        tools_json(request.tools)
    if not isinstance(request.turns, tuple) or len(request.turns) > MAX_TURNS:
        raise InputError(f"A conversation holds at most {MAX_TURNS} turns after the prompt.")
    for turn in request.turns:
        if (not isinstance(turn, tuple) or len(turn) != 2 or turn[0] not in _ROLES
                or not isinstance(turn[1], str)):
            raise InputError(f"A conversation turn is a (role, text) pair with a role in {', '.join(_ROLES)}.")
        if turn[0] == "tool":
            check_result(turn[1])


def new_positions(info: ModelInfo, request: RunRequest) -> int:
    """Tokens the run may generate (an encoder generates none)."""
    return max(0, request.settings.max_new_tokens) if info.is_causal else 0


def prepare(tokenizer: Any, info: ModelInfo, request: RunRequest, token_bytes: TokenBytes | None = None,
            budget: int | None = None, cancel: Any = None) -> Prepared:
    """Check and tokenize a request once; with a capture `budget`, also plan what the run stores.

    `cancel` (an Event or callable) stops a chat template's rendering."""
    check_request(request)
    if request.retrieval is not None:  # search the index for the question (MiniLM; the caller's thread)
        from .retrieval.rag import resolve

        request = resolve(request, cancel)
    t0 = time.perf_counter()
    encoded = encode(tokenizer, request.prompt, chat=request.chat, system=request.system,
                     allow_special_in_text=request.allow_special_in_text, cancel=cancel, tools=request.tools,
                     turns=request.turns, retrieved=request.retrieval.chunks if request.retrieval is not None else ())
    if not encoded.ids:
        raise InputError("The prompt gives no tokens with this model's tokenizer: type some other text.")
    max_new = new_positions(info, request)
    if len(encoded.ids) + max_new > info.context_length:
        raise PromptTooLongError(len(encoded.ids), info.context_length, max_new=max_new)
    tokenized = with_spans(tokenizer, encoded, token_bytes)
    tokenize_ms = (time.perf_counter() - t0) * 1e3
    prepared = Prepared(request, tokenized, tokenize_ms)
    return prepared if budget is None else fit(prepared, info, budget)


def fit(prepared: Prepared, info: ModelInfo, budget: int) -> Prepared:
    """Plan the capture for the budget; the request's `skip_arrays` gains what the plan leaves out."""
    request = prepared.request
    plan = plan_capture(info, len(prepared.ids) + new_positions(info, request), budget)
    skip = tuple(sorted(set(request.skip_arrays) | set(plan.skip)))
    if skip != tuple(request.skip_arrays):
        request = replace(request, skip_arrays=skip)
    return replace(prepared, request=request, plan=plan)
