"""Counterfactual depth attention (Mixture-of-Depths-Attention style) and per-head attribution.

A standard transformer's head attends over the sequence only. Here the real query of head h at
(layer l, position p) is also scored against keys computed from the earlier states of the SAME
position, h_j[p] for j = 0..l, with layer l's own key path:
    k_j = RoPE_p(k_norm(k_proj(input_layernorm_l(h_j[p]))))
and both sets of scores share one softmax [sequence | depth], as the MoDA paper draws it. The
model never computes this: it shows what the head would retrieve from depth if it could.
(j = l is the state the layer actually reads, so its depth key equals the real key at p.)

The Run carries no layer weights, so `depth_weights(loaded)` extracts the few needed (input norm,
key projection, output projection, RoPE frequencies) as numpy arrays once per model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..adapters import NormParams, adapter_for
from ..run import Run


@dataclass(frozen=True)
class LayerWeights:
    norm: NormParams  # the layer's input norm (before attention)
    k_weight: np.ndarray  # [kv_heads * head_dim, D]
    k_bias: np.ndarray | None  # [kv_heads * head_dim]
    k_norm: NormParams | None  # per-head norm over head_dim (Qwen3), else None
    o_weight: np.ndarray  # [D, heads * head_dim]
    o_bias: np.ndarray | None  # [D]


@dataclass(frozen=True)
class DepthWeights:
    layers: tuple[LayerWeights, ...]
    inv_freq: np.ndarray | None  # [head_dim / 2] RoPE frequencies (None: no RoPE)
    rope_scale: float = 1.0  # the rotary embedding's attention_scaling


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().numpy()


def _norm(module: torch.nn.Module) -> NormParams:
    weight = _np(module.weight)
    if hasattr(module, "variance_epsilon"):
        return NormParams("rms", weight, None, float(module.variance_epsilon))
    eps = float(getattr(module, "eps", 1e-5))
    if isinstance(module, torch.nn.LayerNorm):
        return NormParams("layer", weight, _np(getattr(module, "bias", None)), eps)
    return NormParams("rms", weight, None, eps)


def depth_weights(loaded) -> DepthWeights:
    """Per-layer numpy weights of a LoadedModel for depth attention and per-head attribution."""
    model = loaded.model
    adapter = adapter_for(loaded.info.architecture)
    layers = adapter.layers(model)
    out = []
    d = loaded.info.hidden_size
    for layer in layers:
        if hasattr(layer, "input_layernorm"):  # Llama family
            attn = layer.self_attn
            k_norm = getattr(attn, "k_norm", None)
            out.append(LayerWeights(
                _norm(layer.input_layernorm), _np(attn.k_proj.weight), _np(attn.k_proj.bias),
                _norm(k_norm) if k_norm is not None else None, _np(attn.o_proj.weight), _np(attn.o_proj.bias)))
        elif hasattr(layer, "ln_1"):  # GPT-2: Conv1D weights are [in, out]
            c_attn, c_proj = layer.attn.c_attn, layer.attn.c_proj
            w = _np(c_attn.weight)  # [D, 3D]
            b = _np(c_attn.bias)  # [3D]
            out.append(LayerWeights(
                _norm(layer.ln_1), np.ascontiguousarray(w[:, d:2 * d].T), b[d:2 * d], None,
                np.ascontiguousarray(_np(c_proj.weight).T), _np(c_proj.bias)))
        else:
            raise ValueError(f"Depth attention does not support {loaded.info.architecture} layers.")
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    inv_freq = _np(rotary.inv_freq) if rotary is not None and adapter.uses_rope else None
    scale = float(getattr(rotary, "attention_scaling", 1.0) or 1.0) if rotary is not None else 1.0
    return DepthWeights(tuple(out), inv_freq, scale)


def rope(x: np.ndarray, position: int, inv_freq: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Rotate [..., head_dim] vectors to `position` (the rotate-half convention of HF Llama)."""
    freqs = position * inv_freq.astype(np.float32)  # [head_dim / 2]
    emb = np.concatenate([freqs, freqs])  # [head_dim]
    cos, sin = np.cos(emb) * scale, np.sin(emb) * scale
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def depth_keys(run: Run, weights: DepthWeights, layer: int, position: int) -> np.ndarray:
    """[layer + 1, kv_heads, head_dim] keys of layer `layer` computed from states h_0..h_layer at `position`."""
    lw = weights.layers[layer]
    d = run.info.head_dim
    states = run.array("resid")[: layer + 1, position].astype(np.float32)  # [l+1, D]
    keys = np.einsum("ld,kd->lk", lw.norm.apply(states), lw.k_weight)  # [l+1, kv * d] (no BLAS threads)
    if lw.k_bias is not None:
        keys = keys + lw.k_bias
    keys = keys.reshape(layer + 1, -1, d)  # [l+1, kv, d]
    if lw.k_norm is not None:
        keys = lw.k_norm.apply(keys)
    if weights.inv_freq is not None:
        keys = rope(keys, position, weights.inv_freq, weights.rope_scale)
    return keys.astype(np.float32)


@dataclass(frozen=True)
class DepthAttention:
    """One softmax over [sequence keys 0..p | depth keys 0..l] for (layer, head, position)."""

    layer: int
    head: int
    position: int
    seq_scores: np.ndarray  # [p+1] scaled q.k over the sequence (causal)
    depth_scores: np.ndarray  # [l+1] scaled q.k over depths 0..l at the same position
    weights: np.ndarray  # [p+1 + l+1] joint softmax
    real: np.ndarray  # [p+1] the head's real attention (sequence only)

    @property
    def depth_mass(self) -> float:
        return float(self.weights[self.seq_scores.size:].sum())


def depth_attention(run: Run, weights: DepthWeights, layer: int, head: int, position: int) -> DepthAttention:
    q = run.array("queries")[layer, head, position].astype(np.float32)  # [head_dim]
    kv = head // run.info.group_size
    scale = run.layer_scaling(layer)
    n_keys = position + 1 if run.info.is_causal else run.n_tokens
    seq_k = run.array("keys")[layer, kv, :n_keys].astype(np.float32)  # [p+1, head_dim]
    seq = seq_k @ q * scale  # [p+1]
    depth = depth_keys(run, weights, layer, position)[:, kv] @ q * scale  # [l+1]
    joint = np.concatenate([seq, depth])
    return DepthAttention(layer, head, position, seq, depth, _softmax(joint), _softmax(seq))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


# --- per-head split of attention outputs ---------------------------------------------------------
def head_outputs(run: Run, weights: DepthWeights, layer: int, position: int) -> tuple[np.ndarray, np.ndarray]:
    """Each head's share of attn_out[layer, position]: [heads, D], plus the output bias [D] (zeros if none).

    z_h = attention_h[position] @ V_(h // group); out_h = W_O[:, h] z_h; sum_h out_h + bias == attn_out.
    """
    lw = weights.layers[layer]
    info = run.info
    d = info.head_dim
    values = run.array("values")[layer].astype(np.float32)  # [kv, N, d]
    out = np.empty((info.n_heads, lw.o_weight.shape[0]), np.float32)
    for h in range(info.n_heads):
        a = run.attention(layer, h, rows=slice(position, position + 1))[0]  # [N]
        z = a @ values[h // info.group_size]  # [d]
        out[h] = lw.o_weight[:, h * d:(h + 1) * d] @ z
    bias = lw.o_bias if lw.o_bias is not None else np.zeros(out.shape[1], np.float32)
    return out, bias


def head_attribution(run: Run, weights: DepthWeights, position: int, token_id: int, scale: float) -> np.ndarray:
    """[layers, heads + 1] direct logit contribution of each head (last column: the output bias),
    with the final norm's scale frozen at `scale` (from `direct_logit_attribution`)."""
    norm = run.norm
    u = np.asarray(run.unembed[token_id], np.float64)  # [D]
    direction = norm.weight.astype(np.float64) * u * scale  # [D]
    rows = []
    for layer in range(run.info.n_layers):
        out, bias = head_outputs(run, weights, layer, position)
        parts = np.concatenate([out, bias[None]]).astype(np.float64)  # [H+1, D]
        if norm.kind == "layer":
            parts = parts - parts.mean(axis=1, keepdims=True)
        rows.append(parts @ direction)
    return np.stack(rows)  # [L, H+1]
