"""Head search: rank every head of a run by a behaviour.

    sink / previous / induction / diagonal / local / entropy   the attention analyses' head statistics
                                                               (analysis.attention.layer_summary)
    token   mean attention to positions holding a given token text (e.g. "Paris")
    span    mean attention mass on a position range [lo, hi) from the queries after it
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..run import Run
from .attention import STAT_NAMES, head_row_fn, layer_summary, sample_rows

BEHAVIOURS = ("sink", "previous", "induction", "diagonal", "local", "entropy", "token", "span")


@dataclass(frozen=True)
class HeadHit:
    layer: int
    head: int
    score: float


def head_statistics(run: Run, max_rows: int = 256) -> np.ndarray:
    """[layers, heads, len(STAT_NAMES)] the attention panel's statistics for every head."""
    queries, keys = run.array("queries"), run.array("keys")
    ids = run.token_ids
    out = [layer_summary(queries, keys, layer, run.info.group_size, run.layer_scaling(layer), run.info.is_causal,
                         ids, max_rows=max_rows).scores for layer in range(run.info.n_layers)]
    return np.stack(out)


def token_positions(run: Run, text: str) -> np.ndarray:
    """Positions whose token text, stripped of spaces, equals `text` (case-insensitive)."""
    want = text.strip().lower()
    return np.array([i for i, t in enumerate(run.tokens) if t.text.strip().lower() == want], np.int64)


def attention_to(run: Run, columns: np.ndarray, max_rows: int = 256) -> np.ndarray:
    """[layers, heads] mean attention mass on `columns` from the query rows after the first of them."""
    L, H = run.info.n_layers, run.info.n_heads
    out = np.zeros((L, H), np.float32)
    if columns.size == 0:
        return out
    first = int(columns.min())
    later = np.arange(first + 1, run.n_tokens) if run.info.is_causal else np.arange(run.n_tokens)
    if later.size == 0:
        return out
    rows = later[sample_rows(later.size, max_rows)]
    queries, keys = run.array("queries"), run.array("keys")
    for layer in range(L):
        for head in range(H):
            a = head_row_fn(queries, keys, layer, head, run.info.group_size, run.layer_scaling(layer),
                            run.info.is_causal)(rows)  # [R, N]
            out[layer, head] = a[:, columns].sum(axis=1).mean()
    return out


def search(run: Run, behaviour: str, *, token: str = "", span: tuple[int, int] | None = None,
           stats: np.ndarray | None = None, top: int = 20) -> list[HeadHit]:
    """Heads ranked by `behaviour` (highest score first; for entropy, the most focused first)."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"Unknown behaviour '{behaviour}' (one of: {', '.join(BEHAVIOURS)}).")
    if behaviour == "token":
        scores = attention_to(run, token_positions(run, token))
    elif behaviour == "span":
        lo, hi = span if span is not None else (0, 1)
        scores = attention_to(run, np.arange(max(0, lo), min(hi, run.n_tokens)))
    else:
        stats = head_statistics(run) if stats is None else stats
        scores = stats[:, :, STAT_NAMES.index(behaviour)]
        if behaviour == "entropy":
            scores = 1.0 - scores  # focused heads first
    order = np.argsort(-scores.ravel(), kind="stable")[:top]
    H = scores.shape[1]
    return [HeadHit(int(i // H), int(i % H), float(scores.flat[i])) for i in order]
