"""Building blocks of the lab decoder: RMSNorm, RoPE, SwiGLU MLP, attention (plain or MoDA), Engram."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps  # the name core.adapters.NormParams looks for

    def forward(self, x):
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)  # [..., 1]
        return x * scale * self.weight


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding, half-split layout (as Llama in transformers). x [B, H, T, d], positions [T]."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)  # [d/2]
    angles = positions.float()[:, None] * inv[None]  # [T, d/2]
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)  # [T, d]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rotated = torch.cat([-x2, x1], dim=-1)  # [B, H, T, d]
    return x * cos + rotated * sin


class SwiGLU(nn.Module):
    def __init__(self, config, depth_kv: bool = False):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        kv = config.num_key_value_heads * config.head_dim
        # MoDA: the MLP also writes depth keys/values of its input (hustvl/MoDA's SwiGLU depth-KV projection)
        self.kv_proj = nn.Linear(d, 2 * kv, bias=False) if depth_kv else None
        self.depth_out: torch.Tensor | None = None

    def forward(self, x):  # x [B, T, D] (normed)
        if self.kv_proj is not None:
            self.depth_out = self.kv_proj(x)  # [B, T, 2 * kv_heads * head_dim]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # [B, T, D]


class Attention(nn.Module):
    """Causal self-attention with RoPE and optional GQA, routed through transformers' attention
    interface (so the capture engine records q/k/v), or, for MoDA, through `moda_attention`."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.num_key_value_groups = self.n_heads // self.n_kv
        self.scaling = self.head_dim ** -0.5
        self.is_causal = True
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        self.moda = config.depth == "moda"
        self.mask_depth = False  # MoDA with depth keys masked == plain attention (a test)
        self.record: dict | None = None

    def forward(self, x, positions, cache=None, depth_kv=None):
        """x [B, T, D] (normed); positions [T]; depth_kv: [B, T, S, 2, KV, d] earlier sublayers' keys/values."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, d]
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # [B, KV, T, d]
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # [B, KV, T, d]
        self.depth_out = torch.stack([k, v], dim=2).permute(0, 3, 2, 1, 4)  # [B, T, 2, KV, d] pre-RoPE
        theta = self.config.rope_theta
        q, k = rope(q, positions, theta), rope(k, positions, theta)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, KV, P + T, d]
        past = k.shape[2] - t
        if self.moda and depth_kv is not None and depth_kv.shape[2] > 0:
            out = self.moda_attention(q, k, v, depth_kv, past)  # [B, T, H, d]
        else:
            out = self.sequence_attention(q, k, v, past)  # [B, T, H, d]
        return self.o_proj(out.reshape(b, t, self.n_heads * self.head_dim))  # [B, T, D]

    def _mask(self, t, past, device):
        return (torch.arange(t, device=device)[:, None] + past
                >= torch.arange(past + t, device=device)[None, :])  # [T, P + T] causal

    def sequence_attention(self, q, k, v, past):
        impl = getattr(self.config, "_attn_implementation", None) or "sdpa"
        if impl in ALL_ATTENTION_FUNCTIONS and impl not in ("sdpa", "eager"):
            mask = self._mask(q.shape[2], past, q.device)[None, None]  # [1, 1, T, P + T]
            out, _ = ALL_ATTENTION_FUNCTIONS[impl](self, q, k, v, mask, scaling=self.scaling, dropout=0.0)
            return out  # [B, T, H, d]
        if self.num_key_value_groups > 1:
            k = k.repeat_interleave(self.num_key_value_groups, dim=1)  # [B, H, S, d]
            v = v.repeat_interleave(self.num_key_value_groups, dim=1)
        mask = None if past == 0 else self._mask(q.shape[2], past, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past == 0 and q.shape[2] > 1,
                                             scale=self.scaling)  # [B, H, T, d]
        return out.transpose(1, 2)

    def moda_attention(self, q, k, v, depth_kv, past):
        """Mixture-of-Depths Attention (Zhu et al. 2026, arXiv 2603.15619, eq. 4-6): one softmax over the
        causal sequence keys of this layer AND the depth keys {K_i, V_i}, i < l, at the same query
        position (earlier attention and MLP sublayers' pre-RoPE projections, as in hustvl/MoDA).
        Computed densely (the paper's fused kernel is a speed-up of the same sum). Recorded: the
        attention mass on depth vs sequence keys per head and on each depth slot."""
        rec = getattr(self, "_explorer_recorder", None)
        if rec is not None:  # the capture engine records the sequence q/k/v as for any attention
            rec.on_attention(self._explorer_layer, q, k, v)
        g = self.num_key_value_groups
        kk = k.repeat_interleave(g, dim=1)  # [B, H, P + T, d]
        vv = v.repeat_interleave(g, dim=1)
        t = q.shape[2]
        seq = (q @ kk.transpose(-1, -2)) * self.scaling  # [B, H, T, P + T]
        seq = seq.masked_fill(~self._mask(t, past, q.device), float("-inf"))
        dk = depth_kv[:, :, :, 0].repeat_interleave(g, dim=3)  # [B, T, S, H, d]
        dv = depth_kv[:, :, :, 1].repeat_interleave(g, dim=3)  # [B, T, S, H, d]
        dep = torch.einsum("bhtd,btshd->bhts", q, dk) * self.scaling  # [B, H, T, S]
        if self.mask_depth:
            dep = torch.full_like(dep, float("-inf"))
        probs = torch.cat([seq, dep], dim=-1).softmax(-1)  # [B, H, T, P + T + S] one softmax over both
        p_seq, p_dep = probs[..., : seq.shape[-1]], probs[..., seq.shape[-1]:]
        out = p_seq @ vv + torch.einsum("bhts,btshd->bhtd", p_dep, dv)  # [B, H, T, d]
        if self.record is not None:
            self.record.setdefault("moda", {})[self.layer_idx] = p_dep.detach()  # [B, H, T, S]
        return out.transpose(1, 2)  # [B, T, H, d]


class Engram(nn.Module):
    """Engram conditional memory (Cheng et al. 2026, arXiv 2601.07372, section 2).

    For every position t and n-gram order n (2 and 3 here) and hash head j, the suffix
    (x_{t-n+1}, ..., x_t) is hashed (a multiplicative-XOR hash, eq. 2) into a table E_{n,j} of prime
    size M; the rows are concatenated into e_t (eq. 3). Context-aware gating (eq. 4-5):
        k_t = W_K e_t, v_t = W_V e_t,  alpha_t = sigmoid(RMSNorm(h_t)^T RMSNorm(k_t) / sqrt(D)),
        output alpha_t * v_t, added to the residual stream before the layer's attention.
    Left out or open here: the tokenizer compression (bytes need none), the short causal convolution
    after the gate (it would need its own decode cache), the table sizes. Positions before the
    start use a padding id one past the vocabulary."""

    def __init__(self, config):
        super().__init__()
        self.orders = list(config.engram_orders)
        self.heads = config.engram_hash_heads
        self.size = config.engram_table_size
        d, de = config.hidden_size, config.engram_dim
        n_tables = len(self.orders) * self.heads
        self.tables = nn.ModuleList(nn.Embedding(self.size, de) for _ in range(n_tables))
        self.w_k = nn.Linear(n_tables * de, d, bias=False)
        self.w_v = nn.Linear(n_tables * de, d, bias=False)
        self.norm_h = RMSNorm(d, config.rms_norm_eps)
        self.norm_k = RMSNorm(d, config.rms_norm_eps)
        self.gate_override: float | None = None  # 0.0: switched off (equals the base model; a test)
        self.record: dict | None = None
        self.layer_idx = -1
        # fixed odd multipliers per (order, head, offset): deterministic, no buffers to load
        self.mult = [[[(2 * ((1_000_003 * (o + 1) + 7919 * (j + 1) + 104_729 * i) % 65_521) + 1)
                       for i in range(max(self.orders))] for j in range(self.heads)] for o in range(len(self.orders))]

    def indices(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T + n_max - 1] (left context included) -> table rows [B, T, tables]."""
        n_max = max(self.orders)
        t = ids.shape[1] - (n_max - 1)
        out = []
        for o, n in enumerate(self.orders):
            for j in range(self.heads):
                h = torch.zeros(ids.shape[0], t, dtype=torch.long, device=ids.device)
                for i in range(n):  # token x_{t-i}
                    tok = ids[:, n_max - 1 - i: n_max - 1 - i + t]  # [B, T]
                    h = torch.bitwise_xor(h, tok * self.mult[o][j][i])
                out.append(h % self.size)
        return torch.stack(out, dim=-1)  # [B, T, tables]

    def forward(self, h, ids_with_context):
        """h [B, T, D] the residual stream; ids_with_context [B, T + n_max - 1]. Returns the update [B, T, D]."""
        rows = self.indices(ids_with_context)  # [B, T, tables]
        e = torch.cat([table(rows[..., i]) for i, table in enumerate(self.tables)], dim=-1)  # [B, T, tables*de]
        key, value = self.w_k(e), self.w_v(e)  # [B, T, D] each
        score = (self.norm_h(h) * self.norm_k(key)).sum(-1, keepdim=True) / math.sqrt(h.shape[-1])  # [B, T, 1]
        gate = torch.sigmoid(score)  # [B, T, 1] alpha_t
        if self.gate_override is not None:
            gate = torch.full_like(gate, self.gate_override)
        if self.record is not None:
            self.record.setdefault("engram", {})[self.layer_idx] = (gate.detach()[..., 0], rows.detach())
        return gate * value  # [B, T, D]
