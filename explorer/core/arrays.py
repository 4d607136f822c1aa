"""The captured arrays, defined once: name, shape in symbolic dims, dtype, and whether a run may leave it out.

Everything else derives from `CAPTURED`: the StepEvent's arrays, the Run's growing buffers
(`position_axis`), the capture-memory estimate and its fallbacks (core/budget.py), the run file's
expected shapes and dtypes (core/runfile.py), and the runner's hand-over from the capture hooks.

Symbolic dims: L layers, H query heads, KV key/value heads, d head dim, D hidden size, N positions,
K alternatives kept per position (`TOP_K` when captured; a run file may hold any K). An "L" axis is
indexed by block (0 .. L-1); "L+1" by residual depth: 0 = the embeddings, d = after block d - 1
(core/naming.py).

Activation arrays are stored in the store dtype (float16); a step with a value beyond float16's
range stores that array in float32 instead (see core/capture.py and `Run.widened`).

This module imports nothing from the project: every other core module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP_K = 10  # alternatives kept per position
STORE_DTYPE = "float16"  # the activations' dtype (a step may widen one to float32)


@dataclass(frozen=True)
class ArraySpec:
    name: str
    shape: tuple[str, ...]  # symbolic dims, e.g. ("L", "H", "N", "d"); exactly one is "N"
    dtype: str  # numpy dtype name as captured
    doc: str
    fallback: int | None = None  # None: always stored; k: left out from the k-th capture fallback on (1 first)
    stat: bool = False  # a prediction statistic (computed from the logits), not an activation

    @property
    def optional(self) -> bool:
        return self.fallback is not None

    @property
    def position_axis(self) -> int:
        """The axis that grows with the positions (negative, counted from the end)."""
        return self.shape.index("N") - len(self.shape)

    @property
    def activation(self) -> bool:
        """Stored in the store dtype (float16, widened to float32 on overflow)."""
        return self.dtype == STORE_DTYPE

    def shape_for(self, dims: dict[str, int | None]) -> tuple[int | None, ...]:
        """The concrete shape for `dims` (a dim mapped to None, or missing, stays None: any length)."""
        return concrete_shape(self.shape, dims)

    def bytes_per_position(self, dims: dict[str, int]) -> int:
        """Bytes one position takes (the captured dtype; every dim but N from `dims`)."""
        count = 1
        for s in self.shape:
            if s != "N":
                count *= _dim(s, dims)
        return count * np.dtype(self.dtype).itemsize


def concrete_shape(shape: tuple[str, ...], dims: dict[str, int | None]) -> tuple[int | None, ...]:
    """("L+1", "N", "D") -> (L + 1, N, D) for `dims` (a dim mapped to None, or missing, stays None)."""
    return tuple(_dim(s, dims) for s in shape)


def _dim(symbol: str, dims: dict[str, int | None]) -> int | None:
    name, _, plus = symbol.partition("+")
    value = dims.get(name)
    return None if value is None else value + int(plus or 0)


CAPTURED: dict[str, ArraySpec] = {spec.name: spec for spec in (
    ArraySpec("queries", ("L", "H", "N", "d"), STORE_DTYPE, "post-RoPE queries of every head"),
    ArraySpec("keys", ("L", "KV", "N", "d"), STORE_DTYPE, "post-RoPE keys added to the KV cache"),
    ArraySpec("values", ("L", "KV", "N", "d"), STORE_DTYPE, "values added to the KV cache", fallback=1),
    ArraySpec("resid", ("L+1", "N", "D"), STORE_DTYPE,
              "residual stream by depth: 0 = embeddings, d = after block d-1 (L: before the final norm)", fallback=2),
    ArraySpec("attn_out", ("L", "N", "D"), STORE_DTYPE, "attention block outputs (after o_proj)", fallback=1),
    ArraySpec("mlp_out", ("L", "N", "D"), STORE_DTYPE, "MLP block outputs", fallback=1),
    ArraySpec("final_resid", ("N", "D"), "float32", "exact copy of resid[L], for the logits"),
    # per position p: the prediction made at p (for token p + 1)
    ArraySpec("pred_entropy", ("N",), "float32", "entropy of the prediction (nats)", stat=True),
    ArraySpec("pred_top_ids", ("N", "K"), "int32", "its K most likely token ids, best first", stat=True),
    ArraySpec("pred_top_logprobs", ("N", "K"), "float32", "their log-probabilities", stat=True),
    # per position p: token p under the prediction made at p - 1 (NaN / -1 for the first)
    ArraySpec("token_logprob", ("N",), "float32", "log-probability of the token", stat=True),
    ArraySpec("token_rank", ("N",), "int32", "rank of the token (0 = most likely)", stat=True),
)}

STATS = tuple(name for name, spec in CAPTURED.items() if spec.stat)  # computed from the logits
ACTIVATIONS = tuple(name for name, spec in CAPTURED.items() if spec.activation)  # hooks write these
OPTIONAL = frozenset(name for name, spec in CAPTURED.items() if spec.optional)  # arrays a run may leave out
# what a run stops storing, fallback by fallback, when it would exceed the capture budget
FALLBACKS: tuple[tuple[str, ...], ...] = tuple(
    tuple(sorted(name for name, spec in CAPTURED.items() if spec.optional and spec.fallback <= k))
    for k in sorted({spec.fallback for spec in CAPTURED.values() if spec.optional})
)
ARRAY_FIELDS = {name: spec.position_axis for name, spec in CAPTURED.items()}  # name -> position axis


def model_dims(info, n: int | None = None, k: int | None = TOP_K) -> dict[str, int | None]:
    """The symbolic dims of a model (a ModelInfo), for `n` positions and `k` alternatives."""
    return {"L": info.n_layers, "H": info.n_heads, "KV": info.n_kv_heads, "d": info.head_dim,
            "D": info.hidden_size, "N": n, "K": k}
