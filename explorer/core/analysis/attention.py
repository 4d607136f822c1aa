"""Attention analyses in pure numpy: maps computed from captured queries/keys, row transforms
(sink removal, value weighting, hidden tokens), max-pool downsampling, aggregations over heads,
attention rollout, per-head statistics with automatic labels, and an induction-test prompt.

Nothing here holds an N x N map for more than one head at a time: long runs are processed in
row chunks that are pooled (or reduced) as they are produced.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..numeric import attention_rows, single_blas_thread  # noqa: F401 - their home is core/numeric.py

RowFn = Callable[[np.ndarray], np.ndarray]  # query positions [R] -> attention rows [R, N]
CHUNK_ROWS = 256


# --- maps from queries and keys -----------------------------------------------------------------


def head_row_fn(queries: np.ndarray, keys: np.ndarray, layer: int, head: int, group_size: int,
                scale: float, causal: bool) -> RowFn:
    """A function giving attention rows of one head from Run.array("queries") / ("keys")."""
    q = queries[layer, head]  # [N, head_dim]
    k = keys[layer, head // group_size]  # [N, head_dim]
    return lambda rows: attention_rows(q, k, scale, rows, causal)


# --- row transforms ------------------------------------------------------------------------------


def renormalize(rows: np.ndarray) -> np.ndarray:
    """Rows divided by their sums (all-zero rows stay zero), in place."""
    sums = rows.sum(axis=-1, keepdims=True)
    np.divide(rows, sums, out=rows, where=sums > 0)
    return rows


@dataclass(frozen=True)
class MapOptions:
    """How a map is shown: hide the sink column (position 0), weight by value norms, hide tokens."""

    hide_sink: bool = False
    value_weighted: bool = False


def transform_rows(rows: np.ndarray, options: MapOptions, value_norms: np.ndarray | None = None,
                   keep: np.ndarray | None = None) -> np.ndarray:
    """Apply the options to attention rows [R, N] -> [R, N or len(keep)], rows summing to 1 again."""
    if not (options.hide_sink or options.value_weighted or keep is not None):
        return rows
    rows = np.array(rows, dtype=np.float32)  # [R, N] own copy
    if options.value_weighted and value_norms is not None:
        rows *= value_norms[None, : rows.shape[1]]
    if options.hide_sink:
        rows[:, 0] = 0.0
    if keep is not None:
        rows = rows[:, keep]
    return renormalize(rows)


def value_norms(values: np.ndarray, layer: int, kv_head: int) -> np.ndarray:
    """||v_j|| for every key position j: [N] float32 (values from Run.array("values"))."""
    v = values[layer, kv_head].astype(np.float32)  # [N, head_dim]
    return np.sqrt(np.einsum("nd,nd->n", v, v))


# --- downsampling ----------------------------------------------------------------------------------


def pool_factor(n: int, max_pixels: int = 1024) -> int:
    """The smallest integer block size that brings n down to at most max_pixels."""
    return max(1, -(-n // max_pixels))


def max_pool(a: np.ndarray, factor: int) -> np.ndarray:
    """Max over factor x factor blocks (zero-padded at the end): [ceil(R/f), ceil(C/f)]."""
    if factor == 1:
        return a
    r, c = a.shape
    rp, cp = -(-r // factor) * factor, -(-c // factor) * factor
    if (rp, cp) != (r, c):
        padded = np.zeros((rp, cp), a.dtype)
        padded[:r, :c] = a
        a = padded
    rows = a.reshape(rp // factor, factor, cp)  # [R/f, f, C]
    out = rows[:, 0].copy()  # [R/f, C]
    for i in range(1, factor):  # elementwise maxima of whole rows: much faster than a reduce over a short axis
        np.maximum(out, rows[:, i], out=out)
    cols = out[:, 0::factor].copy()  # [R/f, C/f]
    for i in range(1, factor):
        np.maximum(cols, out[:, i::factor], out=cols)
    return cols


def pooled_map(row_fn: RowFn, n_rows: int, factor: int, chunk: int = CHUNK_ROWS,
               causal: bool = False) -> np.ndarray:
    """The whole map max-pooled by `factor`, computed in row chunks (never N x N at once).

    `causal`: keys after a chunk's last query are zero, so only the columns up to it are pooled.
    """
    chunk = max(factor, chunk // factor * factor)
    n_cols = -(-n_rows // factor)
    out = np.zeros((n_cols, n_cols), np.float32)  # [N/f, N/f]
    for r0 in range(0, n_rows, chunk):
        r1 = min(n_rows, r0 + chunk)
        rows = row_fn(np.arange(r0, r1))  # [chunk, N]
        width = min(rows.shape[1], -(-r1 // factor) * factor) if causal else rows.shape[1]
        pooled = max_pool(rows[:, :width], factor)
        out[r0 // factor: r0 // factor + pooled.shape[0], : pooled.shape[1]] = pooled
    return out[:, : -(-rows.shape[1] // factor)] if n_rows else np.zeros((0, 0), np.float32)


def bin_max(a: np.ndarray, n_bins: int, axis: int) -> np.ndarray:
    """Max-pool an axis into exactly n_bins bins (nearest repeat when shorter than n_bins)."""
    length = a.shape[axis]
    if length >= n_bins:
        starts = np.arange(n_bins) * length // n_bins
        return np.maximum.reduceat(a, starts, axis=axis)
    return np.take(a, np.arange(n_bins) * length // n_bins, axis=axis)


def thumbnail(rows: np.ndarray, size: int = 24) -> np.ndarray:
    """[R, N] (all rows or evenly sampled ones) -> [size, size], normalised to its own max."""
    t = bin_max(bin_max(rows, size, 0), size, 1)  # [size, size]
    peak = float(t.max())
    return t / peak if peak > 0 else t


def sample_rows(n: int, max_rows: int) -> np.ndarray:
    """All positions when n <= max_rows, else max_rows evenly spaced ones (always the last)."""
    if n <= max_rows:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_rows).round().astype(np.int64))


# --- aggregations -----------------------------------------------------------------------------------


def reduce_heads(row_fns: Sequence[RowFn], rows: np.ndarray, how: str = "mean") -> np.ndarray:
    """Mean or max over heads of the same query rows: [R, N]."""
    acc = None
    for fn in row_fns:
        a = fn(rows)  # [R, N]
        if acc is None:
            acc = a.copy()
        elif how == "max":
            np.maximum(acc, a, out=acc)
        else:
            acc += a
    if how == "mean" and acc is not None:
        acc /= len(row_fns)
    return acc


def residual_attention(a: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema's residual-adjusted map: (0.5 A + 0.5 I), rows renormalised."""
    out = 0.5 * np.asarray(a, np.float64) + 0.5 * np.eye(a.shape[0])
    return renormalize(out)


def rollout(layer_maps: Iterable[np.ndarray]) -> np.ndarray:
    """Attention rollout: Ã_L-1 ... Ã_1 Ã_0 over the given layers (each [N, N] or [H, N, N], mean over heads).

    Row i of the result is how much each input token flows into position i at the last layer.
    """
    result = None
    for a in layer_maps:
        a = np.asarray(a)
        if a.ndim == 3:
            a = a.mean(axis=0)  # [N, N] mean over heads
        adj = residual_attention(a)
        with single_blas_thread():
            result = adj if result is None else adj @ result
    return result.astype(np.float32)


# --- head statistics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Label rules, checked in this order; the first that holds names the head."""

    induction: float = 0.3  # mean attention to the token after an earlier copy of the current token
    previous: float = 0.4  # mean attention to position i - 1
    sink: float = 0.5  # mean attention to position 0
    local: float = 0.6  # mean attention within the last `window` positions (incl. itself)
    broad: float = 0.7  # mean row entropy / log(number of visible keys)
    window: int = 4

    def describe(self) -> str:
        return (f"induction ≥ {self.induction:g} · previous-token ≥ {self.previous:g} · sink ≥ {self.sink:g} · "
                f"local (last {self.window}) ≥ {self.local:g} · broad (normalised entropy) ≥ {self.broad:g} · "
                "else mixed")


STAT_NAMES = ("entropy", "sink", "previous", "induction", "diagonal", "local")


def induction_targets(token_ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (row index into `rows`, key position j + 1) where token[j] == token[query], j + 1 < query."""
    seen: dict[int, list[int]] = {}
    wanted = set(rows.tolist())
    pair_rows, pair_cols = [], []
    lookup = {int(p): i for i, p in enumerate(rows)}
    for pos, tok in enumerate(token_ids.tolist()):
        if pos in wanted:
            for j in seen.get(tok, ()):
                if j + 1 < pos:
                    pair_rows.append(lookup[pos])
                    pair_cols.append(j + 1)
        seen.setdefault(tok, []).append(pos)
    return np.asarray(pair_rows, np.int64), np.asarray(pair_cols, np.int64)


def head_scores(a: np.ndarray, rows: np.ndarray, causal: bool, window: int = 4,
                targets: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Statistics of one head from its attention rows a [R, N] at query positions `rows`: [6] (STAT_NAMES)."""
    r = np.arange(rows.size)
    visible = rows + 1 if causal else np.full(rows.size, a.shape[1])
    ent = -np.sum(a * np.log(np.clip(a, 1e-12, None)), axis=1)  # [R]
    norm = np.log(visible.astype(np.float64))
    entropy = float(np.mean(np.where(visible > 1, ent / np.where(norm > 0, norm, 1), 1.0)))
    sink = float(a[:, 0].mean())
    has_prev = rows >= 1
    previous = float(a[r[has_prev], rows[has_prev] - 1].mean()) if has_prev.any() else 0.0
    diagonal = float(a[r, rows].mean())
    cum = np.cumsum(a, axis=1)  # [R, N]
    lo = np.clip(rows - window, -1, None)
    local = cum[r, rows] - np.where(lo >= 0, cum[r, np.clip(lo, 0, None)], 0.0)
    local_mass = float(local.mean())
    induction = 0.0
    if targets is not None and targets[0].size:
        per_row = np.bincount(targets[0], weights=a[targets[0], targets[1]], minlength=rows.size)
        counted = np.unique(targets[0])
        induction = float(per_row[counted].mean())
    return np.array([entropy, sink, previous, induction, diagonal, local_mass], np.float32)


def label_head(scores: np.ndarray, th: Thresholds) -> str:
    s = dict(zip(STAT_NAMES, scores.tolist(), strict=True))
    if s["induction"] >= th.induction:
        return "induction"
    if s["previous"] >= th.previous:
        return "previous-token"
    if s["sink"] >= th.sink:
        return "sink"
    if s["local"] >= th.local:
        return "local"
    if s["entropy"] >= th.broad:
        return "broad"
    return "mixed"


@dataclass(frozen=True)
class LayerSummary:
    layer: int
    scores: np.ndarray  # [heads, 6] STAT_NAMES
    thumbs: np.ndarray  # [heads, size, size] each normalised to its max


def layer_summary(queries: np.ndarray, keys: np.ndarray, layer: int, group_size: int, scale: float,
                  causal: bool, token_ids: np.ndarray, max_rows: int = 512, size: int = 24,
                  window: int = 4) -> LayerSummary:
    """Statistics and thumbnails of every head of one layer, one head at a time, from sampled query rows."""
    n = keys.shape[-2]
    rows = sample_rows(n, max_rows)
    targets = induction_targets(np.asarray(token_ids), rows)
    n_heads = queries.shape[1]
    scores = np.zeros((n_heads, len(STAT_NAMES)), np.float32)
    thumbs = np.zeros((n_heads, size, size), np.float32)
    for h in range(n_heads):
        a = head_row_fn(queries, keys, layer, h, group_size, scale, causal)(rows)  # [R, N]
        scores[h] = head_scores(a, rows, causal, window, targets)
        thumbs[h] = thumbnail(a, size)
    return LayerSummary(layer, scores, thumbs)


# --- the induction test prompt ------------------------------------------------------------------------

_WORDS = (
    "apple", "river", "stone", "cloud", "violin", "tiger", "paper", "lamp", "orbit", "candle", "marble",
    "forest", "ladder", "copper", "window", "saddle", "pepper", "harbor", "velvet", "engine", "garden",
    "rocket", "silver", "thunder", "bottle", "meadow", "pirate", "jungle", "needle", "falcon", "pencil",
    "island", "mirror", "basket", "canyon", "dragon", "helmet", "lemon", "magnet", "noodle", "oyster",
    "parrot", "quartz",
)


def induction_prompt(n_words: int = 24, repeats: int = 2, seed: int = 0) -> str:
    """Random words repeated: heads that predict the second copy from the first are induction heads."""
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    return " ".join(words * repeats)
