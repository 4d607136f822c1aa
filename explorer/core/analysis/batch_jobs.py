"""Engine jobs of the runtime views: a padded batch run and the throughput measurement (plain data in and out).

Importing this module registers them in `core.engine.HANDLERS` (the GUI's worker imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import JobContext, handles
from .batch_bench import SIZES, ThroughputTable, measure_throughput
from .batching import BatchResult, encode_prompts, run_batch


@dataclass(frozen=True)
class BatchRun:
    """Greedy-decode `prompts` as one left-padded batch (at most batching.MAX_BATCH)."""
    prompts: tuple[str, ...]
    max_new_tokens: int = 16
    chat: bool = False
    system: str | None = None
    keep_logits: bool = False


@dataclass(frozen=True)
class MeasureThroughput:
    sizes: tuple[int, ...] = SIZES
    prompt_tokens: int = 32
    new_tokens: int = 16
    repeats: int = 3
    threads: int = 1


@handles(BatchRun)
def _batch(ctx: JobContext, req: BatchRun) -> BatchResult:
    loaded = ctx.session.loaded
    rows = encode_prompts(loaded, req.prompts, req.max_new_tokens, chat=req.chat, system=req.system)
    ctx.progress(0.0, f"{len(rows)} prompts, {max(map(len, rows))} tokens wide")
    return run_batch(loaded, rows, req.max_new_tokens, keep_logits=req.keep_logits, cancel=ctx.cancel,
                     progress=ctx.progress)


@handles(MeasureThroughput)
def _throughput(ctx: JobContext, req: MeasureThroughput) -> ThroughputTable:
    return measure_throughput(ctx.session.loaded, req.sizes, prompt_tokens=req.prompt_tokens,
                              new_tokens=req.new_tokens, repeats=req.repeats, threads=req.threads,
                              cancel=ctx.cancel, progress=ctx.progress)
