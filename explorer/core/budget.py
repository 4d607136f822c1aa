"""Capture memory: estimate a run's size before it starts and store less when it would not fit.

Bytes the Run keeps per position: each array of core/arrays.py's table (`CAPTURED`), its
shape without the position axis times its dtype's size (float16 activations, e.g. queries
L*H*d*2 bytes, resid (L+1)*D*2; float32/int32 prediction stats).

A run over budget falls back, in order, to dropping values and the attention/MLP outputs
(attention maps, tokens and next-token panels keep working), then the per-layer residual
stream (the logit lens and projections need it). The panels that need a dropped array say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .arrays import CAPTURED, FALLBACKS, OPTIONAL, STATS, TOP_K, model_dims

if TYPE_CHECKING:
    from .events import RunRequest
    from .models import ModelInfo

__all__ = ["DEFAULT_BUDGET", "FALLBACKS", "OPTIONAL", "CapturePlan", "array_bytes_per_position",
           "estimate_capture_bytes", "fit_request", "plan_capture"]

GIB = 2**30
DEFAULT_BUDGET = 4 * GIB
# bytes per position of the prediction stats (entropy, top-K ids and logprobs, token logprob and rank)
STATS_BYTES = sum(CAPTURED[name].bytes_per_position({"K": TOP_K}) for name in STATS)


def array_bytes_per_position(info: ModelInfo) -> dict[str, int]:
    """Bytes per position of each array a Run stores (core/arrays.py's table)."""
    dims = model_dims(info)
    return {name: spec.bytes_per_position(dims) for name, spec in CAPTURED.items()}


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


def fit_request(session, request: RunRequest, budget: int = DEFAULT_BUDGET) -> tuple[RunRequest, CapturePlan]:
    """Check the prompt (fails fast with PromptTooLongError) and plan the capture, for a runner.Session.

    Returns the request to run (with `skip_arrays` set when the capture is reduced) and the plan. The
    session keeps the tokenized prompt, so streaming the returned request does not tokenize it again.
    """
    prepared = session.prepare(request, budget)
    return prepared.request, prepared.plan


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"
