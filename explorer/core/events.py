"""Immutable records that cross threads: generation settings, tokens and step events.

A runner yields one `StepEvent` after the prefill and one after every decoded token;
`Run.apply(event)` grows a Run from them, so a GUI can stream a run from a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from types import MappingProxyType
from typing import Any

import numpy as np

from .arrays import CAPTURED
from .speculative import DraftStep


class TokenKind(str, Enum):
    """Where a token came from (the Tokens panel's legend)."""

    SPECIAL = "special"  # chat-template or special token (BOS, <|im_start|>, [CLS], role names)
    SYSTEM = "system"  # inside the system message
    USER = "user"  # inside the user message (chat mode)
    PROMPT = "prompt"  # plain-mode prompt text
    GENERATED = "generated"  # produced by the model
    CACHED_PREFIX = "cached-prefix"  # reused from the previous run's KV cache, not recomputed
    TOOL_CALL = "tool_call"  # a tool call the model wrote (<tool_call>...</tool_call>), tags included
    TOOL_RESULT = "tool_result"  # a tool's answer, given back as a tool message (core/tools.py)
    REASONING = "reasoning"  # model text inside reasoning tags (<think>...</think>; core/token_kinds.py)
    RETRIEVED = "retrieved"  # a retrieved chunk inserted into the prompt (core/retrieval/rag.py)
    SPECULATIVE = "speculative"  # generated: a draft token the model verified and accepted (core/speculative.py)


@dataclass(frozen=True)
class Token:
    """One token with its exact `[start, end)` character span in the run's text."""

    id: int
    text: str  # the readable piece (the span's text; for a partial byte piece, its bytes as <0xNN>)
    start: int
    end: int
    kind: TokenKind
    raw_bytes: bytes = b""  # the bytes this token contributes (UTF-8 of the span, or partial bytes)
    partial: bool = False  # covers only part of a multi-byte character (byte fallback)
    injected: bool = False  # user-typed text that the tokenizer turned into a special token
    is_special: bool = False  # the tokenizer's special/added token


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides how a run generates. Temperature 0 is greedy."""

    max_new_tokens: int = 0
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stop_at_eos: bool = True


@dataclass(frozen=True)
class RunRequest:
    """A prompt plus settings: what a GUI sends to the worker."""

    prompt: str
    chat: bool = False
    system: str | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    allow_special_in_text: bool = True  # False: typed special-token text is tokenized as plain text
    reuse_prefix: bool = True
    interventions: tuple = ()  # tuple[core.interventions.Intervention, ...] applied during the run
    skip_arrays: tuple[str, ...] = ()  # captured arrays not stored (core.arrays.OPTIONAL), to save memory
    tools: str | None = None  # chat mode: tool definitions as JSON text (core.tools.tools_json checks them)
    turns: tuple[tuple[str, str], ...] = ()  # chat mode: (role, content) messages after the user's prompt
    speculative: str = ""  # "" off; "prompt-lookup" or "layers", with options (core/speculative.py)
    retrieval: Any = None  # core.retrieval.Retrieval: index and k; searched when prepared, chunks then inserted

    def __post_init__(self) -> None:  # a run file gives lists: keep the request hashable and comparable
        if not isinstance(self.turns, tuple) or any(not isinstance(t, tuple) for t in self.turns):
            object.__setattr__(self, "turns", tuple(tuple(t) if isinstance(t, (list, tuple)) else t
                                                    for t in self.turns))


@dataclass(frozen=True)
class TokenChoice:
    """The token chosen at a decode step, with the distribution it came from."""

    token_id: int
    logprob: float
    rank: int  # 0 = the most likely token
    entropy: float  # nats, of the unfiltered distribution
    top_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class StepEvent:
    """What one step (prefill = step 0, then one per decoded token) adds to a Run.

    `arrays` holds every captured array of core/arrays.py's table (`CAPTURED`), covering only the new
    positions `[start, start + n_new)`, read-only; an array the request's `skip_arrays` leaves out is
    None. Each is also an attribute: `event.resid` is `event.arrays["resid"]`.
    """

    step: int
    start: int
    tokens: tuple[Token, ...]  # the new positions' tokens
    arrays: Mapping[str, np.ndarray | None]  # name -> [... n_new ...] (shapes and dtypes: core/arrays.py)
    kv_bytes_per_layer: np.ndarray  # [layers] int64, cache size after this step
    timings_ms: tuple[tuple[str, float], ...]  # (stage, milliseconds) in order
    choice: TokenChoice | None = None  # token sampled at the end of this step (None: encoder/no generation)
    cached_prefix: int = 0  # positions reused from the previous run's cache (prefill only)
    finish_reason: str | None = None  # None while running; "eos", "max_tokens", "cancelled", "prompt_only"
    routing: dict | None = None  # last event only, for models with learned depth routing (explorer.lab.routing)
    draft: DraftStep | None = None  # speculative runs: on the last event of each verification pass

    def __post_init__(self) -> None:
        arrays = dict(self.arrays)
        if set(arrays) != set(CAPTURED):
            raise ValueError(f"a step event holds the arrays {sorted(arrays)}, not those of core/arrays.py")
        object.__setattr__(self, "arrays", MappingProxyType(arrays))

    def __reduce__(self):  # pickled (to the GUI process) with a plain dict of arrays
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["arrays"] = dict(self.arrays)
        return (_step_event, (state,))

    def __getattr__(self, name: str):  # event.queries, event.resid, ...: the captured arrays by name
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in CAPTURED:
            return arrays[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def with_arrays(self, **arrays: np.ndarray | None) -> StepEvent:
        """A copy with some arrays replaced."""
        return replace(self, arrays={**self.arrays, **arrays})

    @property
    def n_new(self) -> int:
        return len(self.tokens)

    @property
    def is_prefill(self) -> bool:
        return self.step == 0


def _step_event(state: dict) -> StepEvent:
    return StepEvent(**state)
