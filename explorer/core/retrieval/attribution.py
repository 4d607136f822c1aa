"""Which passage did this answer come from: the attention each generated token pays to each retrieved chunk.

For every layer, the query that produced generated token t (the position before it) is compared with
all keys; its attention, summed over the layer's heads, is split into the chunks' shares of everything
but the first token (the attention sink, which takes a large and meaningless share in most layers):

    share[l, t, c] = sum_h sum_{j in chunk c} A_lh[t - 1, j] / sum_h sum_{j >= 1} A_lh[t - 1, j]

Weights are recomputed from the captured post-RoPE queries and keys (Run.attention's formula).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..numeric import attention_rows
from .rag import chunk_token_ranges


@dataclass(frozen=True)
class ChunkAttention:
    positions: np.ndarray  # [G] int64: the generated tokens' positions
    shares: np.ndarray  # [layers, G, chunks] float32: non-sink attention share of each chunk
    chunk_tokens: tuple[np.ndarray, ...]  # each chunk's token positions

    @property
    def n_chunks(self) -> int:
        return self.shares.shape[2]

    def mean_over_tokens(self) -> np.ndarray:
        """[layers, chunks]: the shares averaged over the generated tokens."""
        if self.shares.shape[1] == 0:
            return np.zeros((self.shares.shape[0], self.n_chunks), np.float32)
        return self.shares.mean(axis=1)


def chunk_attention(run, positions: np.ndarray | None = None) -> ChunkAttention | None:
    """Shares for the generated tokens at `positions` (default: all of them); None when the run inserted no
    chunks, is not causal, or did not keep its queries and keys."""
    chunks = tuple(chunk_token_ranges(run))
    if not chunks or not run.info.is_causal or not (run.has_array("queries") and run.has_array("keys")):
        return None
    if positions is None:
        positions = np.arange(run.n_prompt, run.n_tokens, dtype=np.int64)
    positions = np.asarray(positions, np.int64)
    positions = positions[(positions >= max(1, run.n_prompt)) & (positions < run.n_tokens)]
    info = run.info
    shares = np.zeros((info.n_layers, positions.size, len(chunks)), np.float32)  # [L, G, C]
    if positions.size == 0:
        return ChunkAttention(positions, shares, chunks)
    rows = positions - 1  # the query that chose each generated token
    q_all, k_all = run.array("queries"), run.array("keys")  # [L, H, N, d], [L, KV, N, d]
    for layer in range(info.n_layers):
        pooled = np.zeros((rows.size, run.n_tokens), np.float32)  # [G, N] summed over heads
        for head in range(info.n_heads):
            pooled += attention_rows(q_all[layer, head], k_all[layer, head // info.group_size],
                                     run.layer_scaling(layer), rows, True)
        rest = pooled[:, 1:].sum(axis=1)  # [G] everything but the sink
        rest[rest <= 0] = 1.0
        for c, idx in enumerate(chunks):
            shares[layer, :, c] = pooled[:, idx[idx >= 1]].sum(axis=1) / rest
    return ChunkAttention(positions, shares, chunks)
