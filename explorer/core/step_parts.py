"""Pieces of a step event shared by plain decoding (core/runner.py) and speculative decoding (core/drafting.py):
one row's prediction statistics, the recorded activations as numpy, read-only arrays, the stage timings."""

from __future__ import annotations

import numpy as np

from .arrays import ACTIVATIONS, TOP_K
from .capture import StepRecord


def row_stats(logits: np.ndarray) -> tuple[float, float, np.ndarray]:
    """log-sum-exp, entropy (nats) and the top-K ids (best first) of one row of logits [vocab]."""
    m = float(logits.max())
    e = np.exp(logits - m)  # [vocab]
    total = float(e.sum())
    lse = m + float(np.log(total))
    entropy = lse - float(e @ logits) / total
    top = np.argpartition(-logits, TOP_K)[:TOP_K]
    return lse, entropy, top[np.argsort(-logits[top], kind="stable")].astype(np.int32)


def stack_record(rec: StepRecord) -> dict[str, np.ndarray]:
    """The step's recorded activations as numpy (views, no copy), by core/arrays.py's names."""
    rec.finish()
    return {name: getattr(rec, name).numpy() for name in (*ACTIVATIONS, "final_resid") if name not in rec.skip}


def frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def step_timings(rec: StepRecord, forward_end: float, tokenize_ms: float, stats_ms: float,
                 sample_ms: float) -> tuple[tuple[str, float], ...]:
    marks = rec.marks
    out: list[tuple[str, float]] = []
    if tokenize_ms:
        out.append(("tokenize", tokenize_ms))
    if "embed_start" in marks and "embed_end" in marks:
        out.append(("embed", (marks["embed_end"] - marks["embed_start"]) * 1e3))
    out += [(f"layer.{i}", ms) for i, ms in enumerate(rec.layer_ms)]
    if "final_resid" in marks:
        out.append(("lm_head", (forward_end - marks["final_resid"]) * 1e3))
    out.append(("capture", stats_ms))
    out.append(("sample", sample_ms))
    return tuple(out)
