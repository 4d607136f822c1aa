"""One naming rule for depth, used by the Run API, the analyses, the panels and the docs.

- A **block** (`layer=` in the Run API, "block i" in labels) is one transformer layer, counted
  from 0: block i = 0 .. L-1. Every per-block array is indexed by it: queries, keys, values,
  attn_out, mlp_out, and `Run.attention(layer, head)`.
- A **depth** (`depth=`) is a point on the residual stream, counted from 0: depth 0 = the
  embeddings, depth d = the residual *after block d-1*, depth L = after the last block (before the
  final norm). The residual array `resid` [L+1, N, D] is indexed by it, as is
  `Run.hidden_states(depth)`. Block i reads depth i and writes depth i + 1.

Label a depth with `depth_label` and a block with `block_label`, so every panel says the same thing.
"""

from __future__ import annotations


def depth_label(depth: int, short: bool = False) -> str:
    """"embed" for depth 0, else "after block {depth - 1}" (short: "after {depth - 1}", for crowded axes)."""
    if depth < 0:
        raise ValueError(f"a residual depth is 0 (embeddings) or more, not {depth}")
    if depth == 0:
        return "embed"
    return f"after {depth - 1}" if short else f"after block {depth - 1}"


def block_label(layer: int) -> str:
    """"block {layer}" (blocks counted from 0)."""
    if layer < 0:
        raise ValueError(f"a block index is 0 or more, not {layer}")
    return f"block {layer}"


def block_output_depth(layer: int) -> int:
    """The residual depth block `layer` writes (its input is depth `layer`)."""
    return layer + 1
