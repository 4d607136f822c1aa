"""Small numeric kernels shared by the Run and the analyses (numpy only).

- `single_blas_thread()`: the one BLAS thread limiter. Small products on a busy CPU (the model
  generating in another thread, the GUI drawing) run many times slower with a multi-threaded BLAS
  that spin-waits; every analysis that multiplies in a loop wraps it in this.
- `attention_rows()`: softmax attention rows from captured queries and keys (`Run.attention`).
"""

from __future__ import annotations

import contextlib
from functools import cache

import numpy as np


@cache
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: without it BLAS keeps its own thread count
        return None
    return ThreadpoolController()


def single_blas_thread() -> contextlib.AbstractContextManager:
    """One BLAS thread for these small products: on a loaded 2-core machine (the model generating in
    another thread) a multi-threaded BLAS spins and a 256 x 64 x 400 product goes from 0.6 to 40 ms."""
    controller = _blas_controller()
    return controller.limit(limits=1, user_api="blas") if controller is not None else contextlib.nullcontext()


def attention_rows(q: np.ndarray, k: np.ndarray, scale: float, rows: np.ndarray | slice,
                   causal: bool = True) -> np.ndarray:
    """Softmax attention of the query positions `rows` over all N keys: [R, N] float32.

    `q` is one head's queries [N, d], `k` its KV head's keys [N, d]. Equals Run.attention.
    """
    n = k.shape[0]
    if isinstance(rows, slice):
        rows = np.arange(*rows.indices(q.shape[0]))
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((rows.size, n), np.float32)  # [R, N]
    if rows.size == 0:
        return out
    contiguous = rows.size == rows[-1] - rows[0] + 1 and bool(np.all(np.diff(rows) == 1))
    n_keys = int(rows[-1]) + 1 if causal else n  # keys past the last query are masked anyway
    qs = q[rows].astype(np.float32)  # [R, d]
    kt = np.ascontiguousarray(k[:n_keys].astype(np.float32).T)  # [d, n_keys]
    with single_blas_thread():
        scores = qs @ kt  # [R, n_keys]
    scores *= scale
    if causal:
        if contiguous:  # only the trailing square block needs masking
            r0 = int(rows[0])
            block = scores[:, r0:n_keys]  # [R, R]
            block[np.triu_indices(rows.size, 1)] = -np.inf
        else:
            scores[np.arange(n_keys)[None, :] > rows[:, None]] = -np.inf
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    out[:, :n_keys] = scores
    return out
