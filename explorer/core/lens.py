"""Lens readouts: how a residual state at depth l is read as a next-token distribution.

One home for the three lenses; `analysis.depth.compute_lens`, `analysis.align.lens_logprobs` and
`analysis.depth.token_logprob` take a `readout` (a `Lens`, or None for the logit lens) and apply it
to the states before the final norm and the unembedding:

    logit lens     lm_head(norm(h_l))
    tuned lens     lm_head(norm(M_l h̄_l + b_l)),  h̄ = h / rms(h)     (Belrose et al. 2023, arXiv 2303.08112:
                   one affine translator per layer, identity-initialised, trained to minimise
                   KL(final || lens); the translator reads the RMS-normalised state, see lens_fit.py)
    Jacobian lens  lm_head(norm(J_l h_l)),  J_l = E[d h_L / d h_l]   (Gurnee, Sofroniew, Lindsey et al. 2026)

Depth rows follow the Run: row 0 is the embeddings, row l the state after block l - 1 (core.naming), row L the
last layer's output, which every lens reads as is (the model's real prediction).

A fitted lens is a folder: `lens.safetensors` (tensors `matrix` [L, D, D] and `bias` [L, D], float32,
with the kind and the model in the metadata) and `metrics.json` (held-out KL per layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import ExplorerError

if TYPE_CHECKING:
    from .run import Run

KINDS = ("logit", "tuned", "jacobian")
FITTED_KINDS = ("tuned", "jacobian")
LENS_FILE = "lens.safetensors"
METRICS_FILE = "metrics.json"
FORMAT = "1"
MAX_LENS_BYTES = 4 * 2**30  # a lens for a d=4096, 64-layer model is 4 GiB in float32
MAX_METRICS_BYTES = 1 * 2**20


class LensError(ExplorerError):
    """A lens file is missing, damaged, for another model, or a fit cannot run."""


@dataclass(frozen=True)
class Lens:
    """A fitted readout: row l's state h becomes matrix[l] @ x + bias[l] before the final norm,
    with x = h / rms(h) when `normalize_input` (tuned lens) and x = h otherwise (Jacobian lens)."""

    kind: str  # "tuned" | "jacobian"
    model: str  # the model it was fitted on (ModelInfo.name)
    matrix: np.ndarray  # [L, D, D] float32 (out x in), rows 0..L-1; the last depth needs none
    bias: np.ndarray  # [L, D] float32
    normalize_input: bool
    metrics: dict = field(default_factory=dict)  # metrics.json, when known

    @property
    def n_layers(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.matrix.shape[-1])

    @property
    def label(self) -> str:
        return {"tuned": "tuned lens", "jacobian": "Jacobian lens"}.get(self.kind, self.kind)

    def translate(self, resid: np.ndarray) -> np.ndarray:
        """[L+1, ..., D] states -> the same shape, rows 0..L-1 carried into the final layer's basis."""
        resid = np.asarray(resid, np.float32)
        if resid.shape[0] != self.n_layers + 1 or resid.shape[-1] != self.hidden:
            raise LensError(f"This {self.label} expects {self.n_layers + 1} depths of width {self.hidden}; "
                            f"got states of shape {resid.shape}.")
        rows = resid.shape[0]
        flat = np.ascontiguousarray(resid.reshape(rows, -1, self.hidden))  # [L+1, n, D]
        x = flat[:-1]  # [L, n, D]
        if self.normalize_input:
            x = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)  # [L, n, D] unit RMS
        out = np.matmul(x, self.matrix.transpose(0, 2, 1)) + self.bias[:, None, :]  # [L, n, D]
        translated = np.concatenate([out.astype(np.float32, copy=False), flat[-1:]], axis=0)  # [L+1, n, D]
        return translated.reshape(resid.shape)

    def kl_curves(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Held-out KL per depth row (logit lens, this lens) from metrics.json, or None."""
        rows = self.metrics.get("layers") if isinstance(self.metrics, dict) else None
        if not rows:
            return None
        try:
            logit = np.array([float(r["kl_logit_lens"]) for r in rows])
            fitted = np.array([float(r["kl_fitted"]) for r in rows])
        except (KeyError, TypeError, ValueError):
            return None
        return logit, fitted


Readout = Lens | None  # None: the plain logit lens


def apply_readout(resid: np.ndarray, readout: Readout) -> np.ndarray:
    """The states a lens decodes: `resid` itself for the logit lens, else its translation."""
    return resid if readout is None else readout.translate(resid)


LENS_TOP_K = 10
_LENS_CHUNK = 256  # lens cells per lm_head product (256 x 49k floats = 50 MB)


# --- logit lens -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LensColumns:
    """The logit lens for positions start .. start + n - 1 at every depth (rows 0..L)."""

    start: int
    top_ids: np.ndarray  # [rows, n, k] int32 top tokens per cell
    top_probs: np.ndarray  # [rows, n, k] float32 their probabilities
    lse: np.ndarray  # [rows, n] float32 log-sum-exp of the cell's logits (for any token's probability)
    target_ids: np.ndarray  # [n] int64 token scored in target mode (-1: none)
    target_logprob: np.ndarray  # [rows, n] float32 (nan where no target)
    target_rank: np.ndarray  # [rows, n] int32 (0 = top; -1 where no target)
    kl: np.ndarray | None = None  # [rows, n] float32 KL(final distribution || this cell's), nats
    label: str = "logit lens"  # which readout made these columns

    @property
    def n(self) -> int:
        return self.top_ids.shape[1]


def lens_targets(run: Run, lo: int, hi: int) -> np.ndarray:
    """[hi-lo] the token that actually followed each position (the sampled choice for the last one)."""
    ids = run.token_ids
    out = np.full(hi - lo, -1, np.int64)
    for p in range(lo, hi):
        if p + 1 < len(ids):
            out[p - lo] = ids[p + 1]
        elif run.steps and run.steps[-1].choice is not None:
            out[p - lo] = run.steps[-1].choice.token_id
    return out


def lens_slices(run: Run, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the states for positions lo..hi, and their targets: cheap, for the thread that owns the run. The
    positions a run holds never change (a growing run writes new positions, or into a new buffer), so another
    thread may read these views while the run grows; `lens_copy` makes the lens inputs from them there."""
    return run.array("resid")[:, lo:hi], run.array("final_resid")[lo:hi], lens_targets(run, lo, hi)


def lens_copy(slices: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(states [L+1, n, D] float32 with the exact last layer, targets [n]) from `lens_slices`."""
    states, final, targets = slices
    resid = np.array(states, dtype=np.float32)  # [L+1, n, D]
    resid[-1] = final  # exact float32 last layer
    return resid, targets


def lens_inputs(run: Run, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """A private copy of the states for positions lo..hi (safe to use off the GUI thread) and targets."""
    return lens_copy(lens_slices(run, lo, hi))


def lens_columns(run: Run, lo: int, hi: int, k: int = LENS_TOP_K, readout: Readout = None) -> LensColumns:
    """Compute the lens (logit lens, or `readout`) for positions lo..hi (copies its inputs first)."""
    resid, targets = lens_inputs(run, lo, hi)
    return compute_lens(resid, targets, run.norm, run.unembed, start=lo, k=k, readout=readout)


_KL_BLOCK = 64  # positions whose final distributions are held at once ([64, vocab] floats)


def compute_lens(resid: np.ndarray, targets: np.ndarray, norm, unembed: np.ndarray, start: int = 0,
                 k: int = LENS_TOP_K, readout: Readout = None) -> LensColumns:
    """lm_head(final_norm(readout(h))) for every state in `resid` [rows, n, D] (the last row is the model's own
    output), keeping the top-k, the target's log-probability and rank, and each cell's KL from the last row."""
    if norm is None or unembed is None:
        raise ValueError("This model has no language-model head: the logit lens needs one.")
    rows, n, d = resid.shape
    if n > _KL_BLOCK:  # blocks of positions bound the memory of the final distributions
        parts = [compute_lens(resid[:, lo:lo + _KL_BLOCK], targets[lo:lo + _KL_BLOCK], norm, unembed,
                              start=start + lo, k=k, readout=readout) for lo in range(0, n, _KL_BLOCK)]
        return LensColumns(start, *(np.concatenate([getattr(p, f) for p in parts], axis=0 if f == "target_ids" else 1)
                                    for f in ("top_ids", "top_probs", "lse", "target_ids", "target_logprob",
                                              "target_rank", "kl")), label=parts[0].label)
    resid = apply_readout(resid, readout)
    # cells row-major (row, position) with the last row (the model's own prediction) first, so that its
    # distribution p is known before any other cell: KL(p || q_cell) = sum p log p - sum_v p_v logit_v + lse_cell
    # costs one elementwise pass per cell and no extra pass over the unembedding
    states = np.concatenate([resid[-1:], resid[:-1]]).reshape(rows * n, d)  # [cells, D] last row first
    normed = np.asarray(norm.apply(states), np.float32)  # [cells, D]
    w_t = np.asarray(unembed, np.float32).T  # [D, vocab] (a view)
    targets_flat = np.tile(np.asarray(targets, np.int64), rows)  # [cells]
    top_ids = np.empty((rows * n, k), np.int32)
    top_probs = np.empty((rows * n, k), np.float32)
    lse = np.empty(rows * n, np.float32)
    t_lp = np.full(rows * n, np.nan, np.float32)
    t_rank = np.full(rows * n, -1, np.int32)
    cross = np.empty(rows * n, np.float64)  # sum_v p_v logit_v per cell
    cells = np.arange(_LENS_CHUNK)
    final_p = neg_entropy = None
    for lo in range(0, rows * n, _LENS_CHUNK):  # numpy (BLAS) math: the window's process runs no torch
        hi = min(rows * n, lo + _LENS_CHUNK)
        raw = normed[lo:hi] @ w_t  # [chunk, vocab]
        top_i, top_v = _top_k(raw, k)  # [chunk, k] each, largest first
        top_ids[lo:hi] = top_i
        peak = top_v[:, :1]  # [chunk, 1]
        if final_p is None:  # the first chunk starts with the n cells of the last row (n <= _KL_BLOCK)
            final_logp = raw[:n] - peak[:n]  # [n, vocab]
            final_logp -= np.log(np.exp(final_logp).sum(axis=-1, keepdims=True))  # log-softmax
            final_p = np.exp(final_logp)  # [n, vocab]
            neg_entropy = np.einsum("nv,nv->n", final_p, final_logp, dtype=np.float64)  # [n]
            del final_logp
        for a in range(lo, hi):  # segments of consecutive positions (a new row every n cells)
            if a == lo or a % n == 0:
                b = min(hi, (a // n + 1) * n)
                cross[a:b] = np.einsum("cv,cv->c", raw[a - lo:b - lo], final_p[a % n:a % n + b - a],
                                       dtype=np.float64)
        t = targets_flat[lo:hi]  # [chunk]
        has = t >= 0
        if has.any():
            chosen = raw[cells[: hi - lo], np.maximum(t, 0)][:, None]  # [chunk, 1]
            t_rank[lo:hi][has] = np.count_nonzero(raw > chosen, axis=-1)[has]
            t_lp[lo:hi][has] = (chosen[:, 0] - peak[:, 0])[has]  # minus log-sum-exp below
        np.subtract(raw, peak, out=raw)
        np.exp(raw, out=raw)  # in place: no second [chunk, vocab] buffer
        log_sum = np.log(raw.sum(axis=-1))  # [chunk] log-sum-exp minus the peak
        lse[lo:hi] = peak[:, 0] + log_sum
        top_probs[lo:hi] = np.exp(top_v - lse[lo:hi, None])
        t_lp[lo:hi][has] -= log_sum[has]
    kl = np.maximum(np.tile(neg_entropy, rows) - cross + lse, 0.0).astype(np.float32)

    def back(a: np.ndarray) -> np.ndarray:  # last row first -> rows in order
        a = a.reshape(rows, n, *a.shape[1:])
        return np.concatenate([a[1:], a[:1]])

    return LensColumns(start, back(top_ids), back(top_probs), back(lse), targets.copy(), back(t_lp), back(t_rank),
                       back(kl), "logit lens" if readout is None else readout.label)


def _top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[rows, n] -> the k largest per row as (indices, values), largest first (like torch.topk)."""
    k = min(k, values.shape[-1])
    part = np.argpartition(values, -k, axis=-1)[:, -k:]  # [rows, k] unordered
    part_v = np.take_along_axis(values, part, axis=-1)
    order = np.argsort(-part_v, axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1), np.take_along_axis(part_v, order, axis=-1)


class LensTable:
    """The logit lens of a whole run, filled column block by column block (top-k only)."""

    def __init__(self, rows: int, k: int = LENS_TOP_K):
        self.rows, self.k = rows, k
        self.n = 0
        self.top_ids = np.zeros((rows, 0, k), np.int32)
        self.top_probs = np.zeros((rows, 0, k), np.float32)
        self.lse = np.zeros((rows, 0), np.float32)
        self.target_ids = np.zeros(0, np.int64)
        self.target_logprob = np.zeros((rows, 0), np.float32)
        self.target_rank = np.zeros((rows, 0), np.int32)
        self.kl = np.zeros((rows, 0), np.float32)  # KL(final || cell) per cell
        self.done = np.zeros(0, bool)

    def grow(self, n: int) -> None:
        if n <= self.n:
            return
        extra = n - self.n
        self.top_ids = np.concatenate([self.top_ids, np.zeros((self.rows, extra, self.k), np.int32)], 1)
        self.top_probs = np.concatenate([self.top_probs, np.full((self.rows, extra, self.k), np.nan, np.float32)], 1)
        self.lse = np.concatenate([self.lse, np.full((self.rows, extra), np.nan, np.float32)], 1)
        self.target_ids = np.concatenate([self.target_ids, np.full(extra, -1, np.int64)])
        self.target_logprob = np.concatenate([self.target_logprob, np.full((self.rows, extra), np.nan, np.float32)], 1)
        self.target_rank = np.concatenate([self.target_rank, np.full((self.rows, extra), -1, np.int32)], 1)
        self.kl = np.concatenate([self.kl, np.full((self.rows, extra), np.nan, np.float32)], 1)
        self.done = np.concatenate([self.done, np.zeros(extra, bool)])
        self.n = n

    def merge(self, cols: LensColumns) -> None:
        hi = cols.start + cols.n
        self.grow(hi)
        s = slice(cols.start, hi)
        self.top_ids[:, s] = cols.top_ids
        self.top_probs[:, s] = cols.top_probs
        self.lse[:, s] = cols.lse
        self.target_ids[s] = cols.target_ids
        self.target_logprob[:, s] = cols.target_logprob
        self.target_rank[:, s] = cols.target_rank
        if cols.kl is not None:
            self.kl[:, s] = cols.kl
        self.done[s] = True

    def mean_kl(self) -> np.ndarray:
        """[rows] KL from the final distribution averaged over the computed positions (nan before any)."""
        if not self.done.any():
            return np.full(self.rows, np.nan, np.float32)
        return np.nanmean(self.kl[:, self.done], axis=1)

    def next_missing(self, around: int, block: int) -> tuple[int, int] | None:
        """The missing block of positions nearest to `around` (None when complete)."""
        missing = np.flatnonzero(~self.done)
        if missing.size == 0:
            return None
        p = int(missing[np.argmin(np.abs(missing - around))])
        lo = (p // block) * block
        hi = min(self.n, lo + block)
        sub = np.flatnonzero(~self.done[lo:hi])
        return lo + int(sub[0]), lo + int(sub[-1]) + 1

    def token_prob(self, token_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Probability [rows, n] of one token in every computed cell, and its rank when in the top-k
        (k where it is not: 'rank >= k'); needs the states, so see `token_logprob` for exact values."""
        hit = self.top_ids == token_id  # [rows, n, k]
        probs = np.where(hit.any(-1), (self.top_probs * hit).sum(-1), np.nan)
        rank = np.where(hit.any(-1), hit.argmax(-1), self.k)
        return probs.astype(np.float32), rank.astype(np.int32)


def token_logprob(run: Run, token_id: int, lse: np.ndarray, readout: Readout = None) -> np.ndarray:
    """[L+1, N] exact log-probability of `token_id` in every lens cell, from the cells' log-sum-exp."""
    n = lse.shape[1]
    resid = apply_readout(lens_inputs(run, 0, n)[0], readout)  # [L+1, n, D]
    direction = np.asarray(run.unembed[token_id], np.float32)  # [D]
    logits = run.norm.apply(resid) @ direction  # [L+1, n]
    return (logits - lse).astype(np.float32)
