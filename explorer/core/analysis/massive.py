"""Massive activations: the few positions whose residual state is far longer than the others'.

LMs give a few tokens (usually the first, an attention sink) "massive activations" hundreds of
times larger than the rest (Sun et al., 2024). Left in, they alone decide a PCA's axes, a
similarity average or a colour scale, so the projection and depth views can leave them out.

The one rule (used by every caller): position p is massive when, at some depth l, the length of
its state ||h[l, p]|| is more than `factor` (default 10) times the median length at that depth.
Depth by depth, because the residual grows with depth; the median, because the massive positions
themselves barely move it. A rule that flags half the positions or more finds no outliers, only
a skewed run: then none is flagged.
"""

from __future__ import annotations

import numpy as np

MASSIVE_FACTOR = 10.0


def layer_norms(states: np.ndarray) -> np.ndarray:
    """[layers, N] float32 length of every state of [layers, N, D] (converted layer by layer)."""
    out = np.empty(states.shape[:2], np.float32)  # [layers, N]
    for i in range(states.shape[0]):
        x = states[i].astype(np.float32)  # [N, D]
        out[i] = np.sqrt(np.einsum("nd,nd->n", x, x))
    return out


def massive_positions(states: np.ndarray, factor: float = MASSIVE_FACTOR,
                      norms: np.ndarray | None = None) -> np.ndarray:
    """[N] bool: the massive positions of [layers, N, D] states (the module's rule).

    `norms`: `layer_norms(states)` when the caller already has them.
    """
    norms = layer_norms(states) if norms is None else norms  # [layers, N]
    median = np.median(norms, axis=1, keepdims=True)  # [layers, 1]
    massive = (norms > factor * np.maximum(median, 1e-6)).any(axis=0)  # [N]
    return massive if massive.sum() < 0.5 * massive.size else np.zeros_like(massive)
