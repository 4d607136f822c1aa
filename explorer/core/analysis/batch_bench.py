"""Throughput and latency per batch size, measured: prefill and decode apart, interleaved sizes, best of repeats.

    for each repeat: for each batch size (interleaved, so a busy moment hits every size alike):
        B equal prompts of `prompt_tokens` -> one padded batch -> prefill ms, median decode-step ms
    keep each size's best (least disturbed) repeat

Used by `benchmarks/bench_batching.py` (prints a table) and by the Runtime panel's plot (an engine job,
`batch_jobs.MeasureThroughput`). Torch runs on `threads` threads while measuring (1 by default: the figures then
say what batching does for one core, not how well torch spreads work over a busy machine's cores).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median

import torch

from ..errors import Cancelled, InputError
from ..models import LoadedModel
from .batching import MAX_BATCH, run_batch

SIZES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class ThroughputRow:
    batch: int
    prefill_ms: float  # one forward of [B, prompt_tokens]
    step_ms: float  # one decode forward of [B, 1] (median over the run's steps)

    prompt_tokens: int = 0
    new_tokens: int = 0

    @property
    def prefill_tok_s(self) -> float:
        return self.batch * self.prompt_tokens / max(self.prefill_ms, 1e-9) * 1e3

    @property
    def decode_tok_s(self) -> float:
        return self.batch / max(self.step_ms, 1e-9) * 1e3


@dataclass(frozen=True)
class ThroughputTable:
    model: str
    rows: tuple[ThroughputRow, ...]
    prompt_tokens: int
    new_tokens: int
    repeats: int
    threads: int

    def text(self) -> str:
        """A Markdown table of the figures."""
        lines = [f"{self.model}: {self.prompt_tokens}-token prompts, {self.new_tokens} new tokens, "
                 f"{self.threads} torch thread(s), best of {self.repeats} interleaved repeats",
                 "", "| batch | prefill ms | prefill tok/s | decode ms/step | decode tok/s | decode speed-up vs 1 |",
                 "|---:|---:|---:|---:|---:|---:|"]
        base = self.rows[0].decode_tok_s if self.rows else 1.0
        for r in self.rows:
            lines.append(f"| {r.batch} | {r.prefill_ms:.1f} | {r.prefill_tok_s:,.0f} | {r.step_ms:.1f} | "
                         f"{r.decode_tok_s:,.1f} | {r.decode_tok_s / base:.2f}x |")
        return "\n".join(lines)


def check_sizes(sizes, prompt_tokens: int, new_tokens: int, repeats: int) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_BATCH for s in sizes):
        raise InputError(f"Batch sizes must be whole numbers from 1 to {MAX_BATCH} (got {sizes!r}).")
    if not 1 <= prompt_tokens <= 2048 or not 2 <= new_tokens <= 256 or not 1 <= repeats <= 20:
        raise InputError("Measure with 1-2048 prompt tokens, 2-256 new tokens and 1-20 repeats.")
    return sizes


def measure_throughput(loaded: LoadedModel, sizes=SIZES, *, prompt_tokens: int = 32, new_tokens: int = 16,
                       repeats: int = 3, threads: int = 1, cancel: threading.Event | None = None,
                       progress: Callable[[float, str], None] | None = None) -> ThroughputTable:
    """Best-of-`repeats` prefill and decode-step times per batch size (end-of-text ignored: every row decodes)."""
    from ..benchmarks import prompt_of

    sizes = check_sizes(sizes, prompt_tokens, new_tokens, repeats)
    if prompt_tokens + new_tokens > loaded.info.context_length:
        raise InputError(f"{prompt_tokens} + {new_tokens} tokens do not fit {loaded.info.name}'s context.")
    _text, ids = prompt_of(loaded.tokenizer, prompt_tokens)
    n_prompt = len(ids)
    best: dict[int, tuple[float, float]] = {}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_batch(loaded, [ids], 2, stop_at_eos=False)  # warm-up
        total, done = repeats * len(sizes), 0
        for rep in range(repeats):
            for size in sizes:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Measurement cancelled.")
                res = run_batch(loaded, [ids] * size, new_tokens, stop_at_eos=False, cancel=cancel)
                step = median(res.step_ms)
                old = best.get(size)
                best[size] = (min(old[0], res.prefill_ms), min(old[1], step)) if old else (res.prefill_ms, step)
                done += 1
                if progress is not None:
                    progress(done / total, f"repeat {rep + 1}/{repeats}, batch {size}")
    finally:
        torch.set_num_threads(old_threads)
    rows = tuple(ThroughputRow(s, best[s][0], best[s][1], n_prompt, new_tokens) for s in sizes)
    return ThroughputTable(loaded.info.name, rows, n_prompt, new_tokens, repeats, threads)
