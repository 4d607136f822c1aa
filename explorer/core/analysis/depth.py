"""Depth analyses of a Run: logit lens, direct logit attribution, residual share, layer similarity
and update ratios. Pure numpy/torch; the counterfactual depth attention is in depth_attention.py.

Conventions (core/naming.py): `run.array("resid")` is [L+1, N, D] indexed by depth: row 0 the
embeddings and row d the residual stream after block d - 1 (blocks counted from 0). None of them
has been through the final norm (the capture hooks the layers themselves), so the logit lens
applies the final norm to every row exactly once. The last row is taken from `final_resid`
(float32, exact) so the lens' last row equals the model's real logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..lens import Readout, apply_readout
from ..run import Run
from .massive import massive_positions

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


def lens_inputs(run: Run, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """A private copy of the states for positions lo..hi (safe to use off the GUI thread) and targets."""
    resid = np.array(run.array("resid")[:, lo:hi], dtype=np.float32)  # [L+1, n, D]
    resid[-1] = run.array("final_resid")[lo:hi]  # exact float32 last layer
    return resid, lens_targets(run, lo, hi)


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
    normed = torch.from_numpy(norm.apply(states))  # [cells, D]
    w = torch.from_numpy(np.asarray(unembed, np.float32))  # [vocab, D]
    targets_flat = np.tile(np.asarray(targets, np.int64), rows)  # [cells]
    top_ids = np.empty((rows * n, k), np.int32)
    top_probs = np.empty((rows * n, k), np.float32)
    lse = np.empty(rows * n, np.float32)
    t_lp = np.full(rows * n, np.nan, np.float32)
    t_rank = np.full(rows * n, -1, np.int32)
    cross = np.empty(rows * n, np.float64)  # sum_v p_v logit_v per cell
    cells = np.arange(_LENS_CHUNK)
    final_p = neg_entropy = None
    with torch.inference_mode():
        for lo in range(0, rows * n, _LENS_CHUNK):
            hi = min(rows * n, lo + _LENS_CHUNK)
            logits = normed[lo:hi] @ w.T  # [chunk, vocab]
            top = logits.topk(k, dim=-1)
            top_ids[lo:hi] = top.indices.numpy()
            peak = top.values[:, :1].numpy()  # [chunk, 1]
            raw = logits.numpy()  # [chunk, vocab] shares memory; numpy's elementwise ops are single-threaded
            if final_p is None:  # the first chunk starts with the n cells of the last row (n <= _KL_BLOCK)
                final_logp = torch.log_softmax(logits[:n], dim=-1)  # [n, vocab]
                final_p = final_logp.exp().numpy()  # [n, vocab]
                neg_entropy = np.einsum("nv,nv->n", final_p, final_logp.numpy(), dtype=np.float64)  # [n]
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
            top_probs[lo:hi] = np.exp(top.values.numpy() - lse[lo:hi, None])
            t_lp[lo:hi][has] -= log_sum[has]
    kl = np.maximum(np.tile(neg_entropy, rows) - cross + lse, 0.0).astype(np.float32)

    def back(a: np.ndarray) -> np.ndarray:  # last row first -> rows in order
        a = a.reshape(rows, n, *a.shape[1:])
        return np.concatenate([a[1:], a[:1]])

    return LensColumns(start, back(top_ids), back(top_probs), back(lse), targets.copy(), back(t_lp), back(t_rank),
                       back(kl), "logit lens" if readout is None else readout.label)


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


# --- direct logit attribution --------------------------------------------------------------------
@dataclass(frozen=True)
class Attribution:
    """The target logit split into the embedding and each block's direct contribution.

    sum(contributions) + offset == logit (up to float error: `error` is the difference), where the
    final norm's scale is frozen from the real run and `offset` is the norm's bias term (LayerNorm).
    """

    labels: tuple[str, ...]  # "embed", "attn 0", "mlp 0", ...
    contributions: np.ndarray  # [2L+1] float64
    offset: float
    logit: float  # the model's real logit for the target token
    scale: float  # the frozen 1/rms (or 1/std) of the final residual at this position
    token_id: int
    position: int

    @property
    def error(self) -> float:
        return float(self.logit - self.contributions.sum() - self.offset)


def components(run: Run, position: int) -> tuple[tuple[str, ...], np.ndarray]:
    """The additive pieces of the final residual at `position`: [2L+1, D] float64."""
    resid = run.array("resid")
    attn, mlp = run.array("attn_out"), run.array("mlp_out")
    n_layers = attn.shape[0]
    parts = [resid[0, position]]
    labels = ["embed"]
    for layer in range(n_layers):
        parts += [attn[layer, position], mlp[layer, position]]
        labels += [f"attn {layer}", f"mlp {layer}"]
    return tuple(labels), np.stack(parts).astype(np.float64)  # [2L+1, D]


def direct_logit_attribution(run: Run, position: int, token_id: int) -> Attribution:
    norm = run.norm
    if norm is None or run.unembed is None:
        raise ValueError("This model has no language-model head: nothing to attribute.")
    final = run.array("final_resid")[position].astype(np.float64)  # [D]
    u = np.asarray(run.unembed[token_id], np.float64)  # [D]
    w = norm.weight.astype(np.float64)
    labels, comps = components(run, position)  # [C, D]
    if norm.kind == "rms":
        scale = 1.0 / np.sqrt(np.mean(final * final) + norm.eps)
        offset = 0.0
    else:
        centred = final - final.mean()
        scale = 1.0 / np.sqrt(np.mean(centred * centred) + norm.eps)
        comps = comps - comps.mean(axis=1, keepdims=True)  # LayerNorm centres each piece (linear)
        offset = float(norm.bias.astype(np.float64) @ u) if norm.bias is not None else 0.0
    contributions = comps @ (w * u) * scale  # [C]
    logit = float(norm.apply(final.astype(np.float32)).astype(np.float64) @ u)
    return Attribution(labels, contributions, offset, logit, float(scale), int(token_id), int(position))


# --- residual share ------------------------------------------------------------------------------
def residual_share(run: Run, position: int, split: bool = False) -> np.ndarray:
    """Share of each state h_l (rows l = 0..L) supplied by each earlier component: c . h_l / |h_l|^2.

    Columns: embedding then each layer (merged attention + MLP) -> [L+1, L+1], or with `split`
    embedding, attn 0, mlp 0, ... -> [L+1, 2L+1]. Entries a state does not contain are nan.
    A geometric share (the component's projection on the state), not "what the prediction is built
    from" (that is `direct_logit_attribution`). In a pre-norm model (Llama, GPT-2) each state is the
    sum of its components, so each row sums to 1 up to the storage precision. In a post-norm model
    (BERT: LayerNorm after each block) the state is a renormalised sum, rows do not sum to 1 and the
    entries are only projections: `additivity_error` tells the two apart.
    """
    _, comps = components(run, position)  # [2L+1, D]
    n_layers = (comps.shape[0] - 1) // 2
    states = run.array("resid")[:, position].astype(np.float64)  # [L+1, D]
    states[-1] = run.array("final_resid")[position]
    # einsum, not BLAS: a tiny product that multi-threaded BLAS makes 100x slower on a busy machine
    dots = np.einsum("ld,cd->lc", states, comps) / np.maximum((states * states).sum(-1, keepdims=True), 1e-30)
    n_comp = 1 + 2 * np.arange(n_layers + 1)  # components inside state l: embed + 2 per layer
    mask = np.arange(comps.shape[0])[None, :] < n_comp[:, None]  # [L+1, 2L+1]
    share = np.where(mask, dots, np.nan)
    if split:
        return share
    merged = np.concatenate([share[:, :1], share[:, 1::2] + share[:, 2::2]], axis=1)  # [L+1, L+1]
    return merged


def additivity_error(run: Run, position: int) -> np.ndarray:
    """[L+1] |h_l - (embedding + components up to l)| / |h_l|: about 0 (storage precision) in a pre-norm
    model, where the residual stream is a plain sum; large in a post-norm one (BERT), where each block
    renormalises the sum."""
    _, comps = components(run, position)  # [2L+1, D]
    states = run.array("resid")[:, position].astype(np.float64)  # [L+1, D]
    states[-1] = run.array("final_resid")[position]
    sums = np.cumsum(comps, axis=0)[::2]  # [L+1, D] embed, embed + a0 + m0, ...
    return np.linalg.norm(states - sums, axis=-1) / np.maximum(np.linalg.norm(states, axis=-1), 1e-30)


def is_additive(run: Run, position: int, tolerance: float = 2e-2) -> bool:
    """Whether each state is the sum of its components here (pre-norm), within float16 storage error."""
    return bool(np.all(additivity_error(run, position) < tolerance))


# --- layer similarity and update ratios ----------------------------------------------------------
def position_mask(run: Run, skip_first: bool = False, skip_massive: bool = False) -> np.ndarray:
    mask = np.ones(run.n_tokens, bool)
    if skip_first and mask.size > 1:
        mask[0] = False
    if skip_massive:
        massive = massive_positions(run.array("resid"))  # [N] the one rule: analysis/massive.py
        if (~massive & mask).any():
            mask &= ~massive
    return mask


def layer_similarity(run: Run, mask: np.ndarray | None = None) -> np.ndarray:
    """[L+1, L+1] cosine similarity between states of two depths, averaged over the kept positions."""
    h = run.array("resid").astype(np.float32)  # [L+1, N, D]
    if mask is not None:
        h = h[:, mask]
    unit = h / np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-12)  # [L+1, n, D]
    return np.einsum("ind,jnd->ij", unit, unit) / max(1, unit.shape[1])


@dataclass(frozen=True)
class UpdateRatios:
    attn: np.ndarray  # [L] |attn_out| / |resid before the layer|
    mlp: np.ndarray  # [L] |mlp_out| / |resid before the MLP (after attention)|
    block: np.ndarray  # [L] |attn_out + mlp_out| / |resid before the layer|


def update_ratios(run: Run, mask: np.ndarray | None = None) -> UpdateRatios:
    """Per-layer norm of the update over the norm of its input residual, averaged over positions."""
    resid = run.array("resid")[:-1].astype(np.float32)  # [L, N, D] input of each layer
    attn = run.array("attn_out").astype(np.float32)  # [L, N, D]
    mlp = run.array("mlp_out").astype(np.float32)  # [L, N, D]
    if mask is not None:
        resid, attn, mlp = resid[:, mask], attn[:, mask], mlp[:, mask]

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        r = np.linalg.norm(num, axis=-1) / np.maximum(np.linalg.norm(den, axis=-1), 1e-12)  # [L, n]
        return r.mean(axis=1)

    return UpdateRatios(ratio(attn, resid), ratio(mlp, resid + attn), ratio(attn + mlp, resid))
