"""Capture memory: estimate a run's size before it starts and store less when it would not fit.

Bytes the Run keeps per position (float16 unless noted), for L layers, H query heads, KV heads,
head dim d and hidden size D:

    queries L*H*d + keys L*KV*d + values L*KV*d + resid (L+1)*D + attn_out L*D + mlp_out L*D
    + final_resid D (float32) + prediction stats (entropy, top-10 ids/logprobs, logprob, rank)

A run over budget falls back, in order, to dropping values and the attention/MLP outputs
(attention maps, tokens and next-token panels keep working), then the per-layer residual
stream (the logit lens and projections need it). The panels that need a dropped array say so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import PromptTooLongError

if TYPE_CHECKING:
    from .events import RunRequest
    from .models import ModelInfo
    from .runner import Session

GIB = 2**30
DEFAULT_BUDGET = 4 * GIB
STORE_BYTES = 2  # float16
STATS_BYTES = 4 + 10 * 4 + 10 * 4 + 4 + 4  # pred_entropy, pred_top_ids, pred_top_logprobs, token_logprob, rank
# what a run stops storing, step by step, when it would exceed the budget
FALLBACKS: tuple[tuple[str, ...], ...] = (("attn_out", "mlp_out", "values"), ("attn_out", "mlp_out", "resid", "values"))
OPTIONAL = frozenset(FALLBACKS[-1])  # arrays a run may leave out


def array_bytes_per_position(info: ModelInfo) -> dict[str, int]:
    """Bytes per position of each array a Run stores."""
    L, H, KV, d, D = info.n_layers, info.n_heads, info.n_kv_heads, info.head_dim, info.hidden_size
    return {
        "queries": L * H * d * STORE_BYTES, "keys": L * KV * d * STORE_BYTES, "values": L * KV * d * STORE_BYTES,
        "resid": (L + 1) * D * STORE_BYTES, "attn_out": L * D * STORE_BYTES, "mlp_out": L * D * STORE_BYTES,
        "final_resid": D * 4, "stats": STATS_BYTES,
    }


def estimate_capture_bytes(info: ModelInfo, n_positions: int, skip: tuple[str, ...] = ()) -> int:
    """Bytes the Run's captured arrays take for `n_positions` (prompt + new tokens)."""
    per = array_bytes_per_position(info)
    return n_positions * sum(v for k, v in per.items() if k not in skip)


@dataclass(frozen=True)
class CapturePlan:
    n_positions: int
    full_bytes: int  # everything stored
    planned_bytes: int  # what will be stored
    budget: int
    skip: tuple[str, ...] = ()  # arrays left out

    @property
    def reduced(self) -> bool:
        return bool(self.skip)

    @property
    def over_budget(self) -> bool:
        return self.planned_bytes > self.budget

    def message(self) -> str:
        """A sentence for the user, or "" when everything fits."""
        if not self.reduced:
            return ""
        text = (f"Capturing everything for {self.n_positions:,} positions would take {_gib(self.full_bytes)}, "
                f"above the capture budget of {_gib(self.budget)} (Run > Capture memory budget). "
                f"To fit, this run does not store: {', '.join(self.skip)} ({_gib(self.planned_bytes)} instead); "
                "the views that need them say so.")
        if self.over_budget:
            text += " It is still above the budget: shorten the prompt or generate fewer tokens if memory runs out."
        return text


def plan_capture(info: ModelInfo, n_positions: int, budget: int = DEFAULT_BUDGET) -> CapturePlan:
    """Store everything if it fits the budget, else the first fallback that fits (or the smallest)."""
    full = estimate_capture_bytes(info, n_positions)
    if full <= budget:
        return CapturePlan(n_positions, full, full, budget)
    for skip in FALLBACKS:
        planned = estimate_capture_bytes(info, n_positions, skip)
        if planned <= budget:
            break
    return CapturePlan(n_positions, full, planned, budget, skip)


def fit_request(session: Session, request: RunRequest, budget: int = DEFAULT_BUDGET) -> tuple[RunRequest, CapturePlan]:
    """Check the prompt's length (fails fast with PromptTooLongError) and plan the capture.

    Returns the request to run (with `skip_arrays` set when the capture is reduced) and the plan.
    """
    info = session.info
    n_prompt = count_tokens(session.loaded.tokenizer, request)
    max_new = max(0, request.settings.max_new_tokens) if info.is_causal else 0
    if n_prompt + max_new > info.context_length:
        raise PromptTooLongError(n_prompt, info.context_length, max_new=max_new)
    plan = plan_capture(info, n_prompt + max_new, budget)
    skip = tuple(sorted(set(request.skip_arrays) | set(plan.skip)))
    return (replace(request, skip_arrays=skip) if skip != tuple(request.skip_arrays) else request), plan


def count_tokens(tokenizer, request: RunRequest) -> int:
    """The prompt's token count as the runner will see it (ids only: no spans, so 1 MB takes seconds, not tens)."""
    from .tokens import _check_text, _encode, render_chat

    _check_text(request.prompt, "prompt")
    if request.chat:
        if request.system:
            _check_text(request.system, "system message")
        text, regions = render_chat(tokenizer, request.prompt, request.system)
    else:
        text, regions = request.prompt, [(0, len(request.prompt), None)]
    return len(_encode(tokenizer, text, request.chat, regions, request.allow_special_in_text))


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"
