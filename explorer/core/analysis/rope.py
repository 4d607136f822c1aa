"""Rotary position embeddings (RoPE), as Llama-family models in transformers apply them.

Frequency pair i of a head (dimensions i and i + head_dim/2, the "rotate_half" layout) is rotated
by the angle position * theta^(-2i/head_dim). Because both query and key are rotated, their dot
product depends only on the distance between their positions: `distance_curve` shows it.
Plain RoPE only: long-context rescaling (rope_scaling such as YaRN or Llama-3) is not modelled;
`rope_variant(config)` says when a model uses such a variant, so a view can say it draws plain RoPE.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_PLAIN = (None, "", "default")


def rope_variant(config: Any) -> str | None:
    """None for plain RoPE; else a short description of what plain RoPE leaves out.

    Reads a transformers config (object or dict): `rope_parameters` (transformers 5; possibly one dict per
    layer type) or `rope_scaling` (older configs) with a `rope_type` / `type` other than "default"
    (linear, dynamic, yarn, longrope, llama3, ...), and a partial rotary factor below 1 (only part of each
    head is rotated).
    """
    def get(key: str) -> Any:
        return config.get(key) if isinstance(config, dict) else getattr(config, key, None)

    notes: list[str] = []
    for key in ("rope_parameters", "rope_scaling"):
        params = get(key)
        if not isinstance(params, dict) or not params:
            continue
        nested = all(isinstance(v, dict) for v in params.values())
        for p in params.values() if nested else (params,):
            kind = p.get("rope_type", p.get("type"))
            if kind not in _PLAIN:
                factor = p.get("factor")
                notes.append(f"{kind} RoPE scaling" + (f" (factor {factor:g})" if isinstance(factor, int | float)
                                                       and not isinstance(factor, bool) else ""))
            partial = p.get("partial_rotary_factor")
            if isinstance(partial, int | float) and 0 < partial < 1:
                notes.append(f"rotary on {partial:.0%} of each head")
    partial = get("partial_rotary_factor")
    if partial is None:
        partial = get("rotary_pct")
    if isinstance(partial, int | float) and not isinstance(partial, bool) and 0 < partial < 1:
        notes.append(f"rotary on {partial:.0%} of each head")
    return "; ".join(dict.fromkeys(notes)) or None


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """[head_dim // 2] rotation speed of each frequency pair, radians per position: theta^(-2i/d)."""
    i = np.arange(head_dim // 2, dtype=np.float64)
    return theta ** (-2.0 * i / head_dim)


def rope_angles(positions: np.ndarray | int, head_dim: int, theta: float, wrap: bool = False) -> np.ndarray:
    """[P, head_dim // 2] rotation angle of each pair at each position (mod 2*pi when `wrap`)."""
    pos = np.arange(positions) if np.isscalar(positions) else np.asarray(positions)
    angles = pos.astype(np.float64)[:, None] * inv_freq(head_dim, theta)[None, :]  # [P, d/2]
    return np.mod(angles, 2 * np.pi) if wrap else angles


def apply_rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate vectors [P, head_dim] at `positions` [P] (negative positions undo a rotation)."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    ang = rope_angles(np.asarray(positions), x.shape[-1], theta)  # [P, d/2]
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., :half], x[..., half:]  # [P, d/2] each
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # [P, d]


def distance_curve(q: np.ndarray, k: np.ndarray, theta: float, max_distance: int) -> np.ndarray:
    """[max_distance + 1] dot product of RoPE(q at m) and RoPE(k at m - dist), for dist = 0..max.

    q, k: [head_dim] vectors before rotation. Equal for every m (only the distance matters).
    """
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    half = q.shape[-1] // 2
    q1, q2, k1, k2 = q[:half], q[half:], k[:half], k[half:]  # [d/2] each
    along = q1 * k1 + q2 * k2  # [d/2] the part that turns with cos
    across = q2 * k1 - q1 * k2  # [d/2] the part that turns with sin
    ang = rope_angles(max_distance + 1, q.shape[-1], theta)  # [dist, d/2]
    return np.cos(ang) @ along - np.sin(ang) @ across  # [dist]


def wavelengths(head_dim: int, theta: float) -> np.ndarray:
    """[head_dim // 2] positions per full turn of each pair: 2*pi / inv_freq."""
    return 2 * np.pi / inv_freq(head_dim, theta)
