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

from ..lens import (  # noqa: F401 - the lens math's one home is core/lens.py; re-exported for callers
    LENS_TOP_K,
    LensColumns,
    LensTable,
    Readout,
    apply_readout,
    compute_lens,
    lens_columns,
    lens_copy,
    lens_inputs,
    lens_slices,
    lens_targets,
    token_logprob,
)
from ..run import Run
from .massive import massive_positions


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
