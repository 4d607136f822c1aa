"""Immutable records that cross threads: generation settings, tokens and step events.

A runner yields one `StepEvent` after the prefill and one after every decoded token;
`Run.apply(event)` grows a Run from them, so a GUI can stream a run from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class TokenKind(str, Enum):
    """Where a token came from (the Tokens panel's legend)."""

    SPECIAL = "special"  # chat-template or special token (BOS, <|im_start|>, [CLS], role names)
    SYSTEM = "system"  # inside the system message
    USER = "user"  # inside the user message (chat mode)
    PROMPT = "prompt"  # plain-mode prompt text
    GENERATED = "generated"  # produced by the model
    CACHED_PREFIX = "cached-prefix"  # reused from the previous run's KV cache, not recomputed


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
    skip_arrays: tuple[str, ...] = ()  # captured arrays not stored (core.budget.OPTIONAL), to save memory


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

    All arrays cover only the new positions `[start, start + n_new)` and are read-only; an array the
    request's `skip_arrays` leaves out is None.
    """

    step: int
    start: int
    tokens: tuple[Token, ...]  # the new positions' tokens
    queries: np.ndarray  # [layers, heads, n_new, head_dim] post-RoPE, float16
    keys: np.ndarray  # [layers, kv_heads, n_new, head_dim] post-RoPE, float16
    values: np.ndarray  # [layers, kv_heads, n_new, head_dim] float16
    resid: np.ndarray  # [layers + 1, n_new, hidden] 0 = embeddings, L = last layer before final norm
    attn_out: np.ndarray  # [layers, n_new, hidden] attention block outputs (after o_proj)
    mlp_out: np.ndarray  # [layers, n_new, hidden] MLP block outputs
    final_resid: np.ndarray  # [n_new, hidden] float32 copy of resid[L] for exact logits
    # Per new position p: stats of the prediction made at p (for token p + 1).
    pred_entropy: np.ndarray  # [n_new] float32, nats
    pred_top_ids: np.ndarray  # [n_new, K] int32
    pred_top_logprobs: np.ndarray  # [n_new, K] float32
    # Per new position p: logprob and rank of token p under the prediction made at p - 1 (NaN/-1 if none).
    token_logprob: np.ndarray  # [n_new] float32
    token_rank: np.ndarray  # [n_new] int32
    kv_bytes_per_layer: np.ndarray  # [layers] int64, cache size after this step
    timings_ms: tuple[tuple[str, float], ...]  # (stage, milliseconds) in order
    choice: TokenChoice | None = None  # token sampled at the end of this step (None: encoder/no generation)
    cached_prefix: int = 0  # positions reused from the previous run's cache (prefill only)
    finish_reason: str | None = None  # None while running; "eos", "max_tokens", "cancelled", "prompt_only"
    routing: dict | None = None  # last event only, for models with learned depth routing (explorer.lab.routing)

    @property
    def n_new(self) -> int:
        return len(self.tokens)

    @property
    def is_prefill(self) -> bool:
        return self.step == 0
