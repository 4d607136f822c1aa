"""Engine jobs of the analyses that re-run or read the model (registered in `core.engine.HANDLERS`).

Importing this module registers them; each request is plain data, so it could cross to an engine process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import JobContext, handles
from ..run import Run
from . import eviction as ev
from .depth_attention import DepthWeights, depth_weights
from .head_stats_many import ManyPromptStats, head_stats_over_prompts
from .sweep import SweepResult, head_sweep


@dataclass(frozen=True)
class EvictionWhatIf:
    """Keep-masks and the measured effect of eviction policies on `run`'s first `n_steps` decode steps."""
    run: Run
    policies: tuple[ev.EvictionPolicy, ...]
    n_steps: int


@dataclass(frozen=True)
class HeadSweep:
    token_ids: np.ndarray  # [N] the run's tokens
    position: int
    target_id: int
    mode: str = "last"


@dataclass(frozen=True)
class HeadStatsOverPrompts:
    """Every head's statistics over a set of prompts (each run prompt-only)."""
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class ReadDepthWeights:
    """The per-layer numpy weights depth attention and per-head attribution need (read on the engine thread)."""


@handles(EvictionWhatIf)
def _eviction(ctx: JobContext, req: EvictionWhatIf):
    rows, keeps, effects = ev.eviction_what_if(ctx.session, req.run, list(req.policies), req.n_steps,
                                               progress=ctx.progress, cancel=ctx.cancel)
    return req.run, rows, keeps, effects


@handles(HeadSweep)
def _sweep(ctx: JobContext, req: HeadSweep) -> SweepResult:
    return head_sweep(ctx.session, req.token_ids, req.position, req.target_id, mode=req.mode, cancel=ctx.cancel,
                      progress=lambda done, total: ctx.progress(done / max(1, total), f"{done}/{total} forwards"))


@handles(ReadDepthWeights)
def _depth_weights(ctx: JobContext, _req: ReadDepthWeights) -> tuple[object, DepthWeights]:
    loaded = ctx.session.loaded
    return loaded.info, depth_weights(loaded)  # (ModelInfo, weights)


@handles(HeadStatsOverPrompts)
def _head_stats(ctx: JobContext, req: HeadStatsOverPrompts) -> ManyPromptStats:
    return head_stats_over_prompts(ctx.session, list(req.prompts), on_progress=ctx.progress, cancel=ctx.cancel)


@dataclass(frozen=True)
class PromptOfLength:
    """A plain prompt of close to `n_tokens` tokens of the loaded model (benchmarks): (text, n_tokens)."""
    n_tokens: int


@handles(PromptOfLength)
def _prompt_of_length(ctx: JobContext, req: PromptOfLength) -> tuple[str, int]:
    from ..benchmarks import prompt_of

    text, ids = prompt_of(ctx.session.loaded.tokenizer, req.n_tokens)
    return text, len(ids)
