"""Depth connections: how each sublayer's input is read from, and its output written to, the depth state.

One module per connection, in a registry (`CONNECTIONS`). Every connection has the same four calls:

    state = conn.start(embedding)           # [B, T, D] -> the connection's state
    x = conn.read(state, k)                 # the input of sublayer k (before its pre-norm)  [B, T, D]
    state = conn.write(state, k, y)         # add sublayer k's output y  [B, T, D]
    h = conn.final(state)                   # what the final norm + unembedding read  [B, T, D]
    h = conn.readable(state)                # a residual-stream analogue for capture (resid.{l})

Sublayers are numbered k = 0 .. 2L-1 (2l = layer l's attention, 2l+1 its MLP), as Attention Residuals
counts "layers". `self.record`, when a dict, receives the learned routing of one forward pass
(the panel and `Run.routing` read it); `self.drop` holds (reader, source) pairs switched off for the
ablation that measures importance (source 0 = the embedding, source j+1 = sublayer j's output).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import RMSNorm


class Connection(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.record: dict | None = None
        self.drop: set[tuple[int, int]] = set()

    def readable(self, state):
        return self.final(state)


class PlainResidual(Connection):
    """h_{k+1} = h_k + f_k(h_k): the standard PreNorm residual (AttnRes paper eq. 1)."""

    def start(self, emb):
        return emb  # [B, T, D]

    def read(self, state, k):
        return state

    def write(self, state, k, y):
        return state + y  # [B, T, D]

    def final(self, state):
        return state


class AttnRes(Connection):
    """Full Attention Residuals (Chen et al. 2026, arXiv 2603.15031, eq. 2-4).

    h_k = sum_{i<=k} alpha_{i->k} v_i with v_0 = the embedding, v_{i} = f_{i-1}(h_{i-1}) (the sublayer
    outputs); alpha_{i->k} = softmax_i(w_k^T RMSNorm(v_i)) with one learned pseudo-query w_k in R^d per
    sublayer, initialised to zero so every sublayer starts as a uniform average (the paper's init).
    Keys equal values (k_i = v_i). The output is read the same way with one more query w_{2L}.
    Left open by the paper at this scale: whether the key RMSNorm has its own gain per reader
    (here one norm with a learned gain per reader, as in the official pseudocode's `norm` argument).
    """

    def __init__(self, config):
        super().__init__(config)
        n = config.n_sublayers + 1  # one query per sublayer + the output
        d = config.hidden_size
        self.queries = nn.Parameter(torch.zeros(n, d))  # [readers, D] pseudo-queries w_k, zero init
        self.key_norms = nn.ModuleList(RMSNorm(d, config.rms_norm_eps) for _ in range(n))
        self.fixed_weights = None  # tests: reader, n_sources -> [S] weights replacing the softmax

    def start(self, emb):
        return {"values": [emb], "normed": [self._unit(emb)]}  # sources v_i and RMSNorm(v_i) without gain

    def _unit(self, v):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)  # [B, T, D]

    def sources(self, state):
        return state["values"], state["normed"]

    def mix(self, state, reader: int):
        values, normed = (torch.stack(x) for x in self.sources(state))  # [S, B, T, D] each
        # w_k^T RMSNorm_k(v_i) = (w_k * g_k)^T unit(v_i): each source is normalised once, not once per reader
        query = self.queries[reader] * self.key_norms[reader].weight  # [D]
        logits = torch.einsum("d,sbtd->sbt", query, normed)  # [S, B, T] eq. 4
        for r, s in self.drop:
            if r == reader and s < logits.shape[0]:
                logits = logits.index_fill(0, torch.tensor([s], device=logits.device), float("-inf"))
        alpha = logits.softmax(dim=0)  # [S, B, T] eq. 3: softmax over sources
        if self.fixed_weights is not None:
            alpha = self.fixed_weights(reader, values.shape[0]).reshape(-1, 1, 1).expand_as(alpha)  # [S, B, T]
        if self.record is not None:
            self.record.setdefault("attnres", {})[reader] = alpha.detach().permute(1, 2, 0)  # [B, T, S]
        return torch.einsum("sbt,sbtd->btd", alpha, values)  # [B, T, D] eq. 2

    def read(self, state, k):
        return self.mix(state, k)

    def write(self, state, k, y):
        return {"values": [*state["values"], y], "normed": [*state["normed"], self._unit(y)]}

    def final(self, state):
        return self.mix(state, self.config.n_sublayers)

    def readable(self, state):
        return torch.stack(state["values"]).sum(0)  # [B, T, D] the plain sum, for the post-hoc views


class BlockAttnRes(AttnRes):
    """Block Attention Residuals (same paper, section 3.2): sublayers are grouped into blocks of
    `attnres_block_size`; inside a block outputs add up as a standard residual (the partial sum b_n^i);
    each sublayer attends over [embedding, completed block sums..., the current partial sum].
    Left open: whether the embedding is its own source or part of block 0 (here its own source, so the
    first readers can still choose the embedding, as in the full variant)."""

    def start(self, emb):
        return {"values": [emb], "normed": [self._unit(emb)], "partial": None, "count": 0}

    def sources(self, state):
        if state["partial"] is None:
            return state["values"], state["normed"]
        return [*state["values"], state["partial"]], [*state["normed"], self._unit(state["partial"])]

    def write(self, state, k, y):
        partial = y if state["partial"] is None else state["partial"] + y  # [B, T, D] intra-block sum
        count = state["count"] + 1
        if count == self.config.attnres_block_size:  # the block is complete: it becomes a source
            return {"values": [*state["values"], partial], "normed": [*state["normed"], self._unit(partial)],
                    "partial": None, "count": 0}
        return {**state, "partial": partial, "count": count}

    def readable(self, state):
        total = torch.stack(state["values"]).sum(0)  # [B, T, D]
        return total if state["partial"] is None else total + state["partial"]


def sinkhorn(logits: torch.Tensor, iters: int, tol: float = 1e-5, max_iters: int = 2000) -> torch.Tensor:
    """Sinkhorn-Knopp projection onto doubly-stochastic matrices (mHC eq. 9): M = exp(logits), then
    alternately normalise rows and columns. logits [..., n, n] -> [..., n, n].

    The paper runs t_max = 20 iterations. Near-permutation matrices (H_res starts near the identity and
    training sharpens it) converge slowly: after 20 iterations a trained model here was 3e-2 off in its row
    sums. So after `iters` iterations this keeps going (still differentiable) until every row and column sum
    is within `tol` of 1, or `max_iters`; the remaining error is recorded and shown."""
    m = (logits - logits.amax(dim=(-2, -1), keepdim=True)).exp()  # [..., n, n] stable exp
    done = 0
    while True:
        for _ in range(iters if done == 0 else 10):
            m = m / m.sum(dim=-1, keepdim=True)  # rows sum to 1
            m = m / m.sum(dim=-2, keepdim=True)  # columns sum to 1
        done += iters if done == 0 else 10
        if done >= max_iters or float((m.detach().sum(dim=-1) - 1).abs().max()) <= tol:
            return m


class MHC(Connection):
    """Manifold-Constrained Hyper-Connections (Xie et al. 2025, arXiv 2512.24880, eq. 3 and 7-9).

    n residual streams x in R^{n x D}; sublayer k reads H_pre x and writes
        x <- H_res x + H_post^T f_k(H_pre x)                           (eq. 3)
    with input-dependent coefficients from x~ = RMSNorm(vec(x)) (eq. 7-8):
        H_pre = sigmoid(a_pre * x~ phi_pre + b_pre),  H_post = 2 sigmoid(a_post * x~ phi_post + b_post),
        H_res = SinkhornKnopp(a_res * mat(x~ phi_res) + b_res)           (doubly stochastic)
    Init (the paper leaves it to the HC recipe): a = 0.01, phi ~ N(0, 0.02); b_pre reads mostly stream
    k mod n (hyper-connections' init; identical streams with a uniform H_pre never train, because H_res
    gets zero gradient), b_res near the identity, b_post = 0 (H_post = 1: write to every stream).
    The embedding starts in every stream. Readout (left open): a learned softmax over streams, starting
    at the mean; a plain mean would leave the last H_res untrainable, since a doubly-stochastic H_res
    preserves the streams' mean.
    """

    def __init__(self, config):
        super().__init__(config)
        n, d, k = config.mhc_streams, config.hidden_size, config.n_sublayers
        self.n = n
        self.norm = RMSNorm(n * d, config.rms_norm_eps)
        self.phi = nn.Parameter(torch.randn(k, n * d, n + n + n * n) * 0.02)  # [K, nD, 2n + n^2]
        self.alpha = nn.Parameter(torch.full((k, 3), 0.01))  # [K, 3] a_pre, a_post, a_res
        b_pre = torch.full((k, n), -4.0)
        b_pre[torch.arange(k), torch.arange(k) % n] = 4.0  # sublayer k reads stream k mod n
        self.b_pre = nn.Parameter(b_pre)  # [K, n]
        self.b_post = nn.Parameter(torch.zeros(k, n))  # [K, n]
        self.b_res = nn.Parameter(torch.eye(n).repeat(k, 1, 1) * 4.0)  # [K, n, n] near identity
        self.readout = nn.Parameter(torch.zeros(n))  # [n]
        self._pending: dict[int, tuple] = {}
        self.override: dict[str, torch.Tensor] = {}  # tests: fixed H_pre / H_post

    def start(self, emb):
        return emb.unsqueeze(2).expand(-1, -1, self.n, -1).contiguous()  # [B, T, n, D]

    def coefficients(self, state, k):
        b, t, n, d = state.shape
        x = self.norm(state.reshape(b, t, n * d))  # [B, T, nD] x~
        proj = x @ self.phi[k]  # [B, T, 2n + n^2]
        a = self.alpha[k]
        h_pre = torch.sigmoid(a[0] * proj[..., :n] + self.b_pre[k])  # [B, T, n]
        h_post = 2 * torch.sigmoid(a[1] * proj[..., n:2 * n] + self.b_post[k])  # [B, T, n]
        h_res = sinkhorn(a[2] * proj[..., 2 * n:].reshape(b, t, n, n) + self.b_res[k],
                         self.config.mhc_sinkhorn_iters)  # [B, T, n, n]
        h_pre = self.override.get("pre", h_pre).expand_as(h_pre)
        h_post = self.override.get("post", h_post).expand_as(h_post)
        return h_pre, h_post, h_res

    def read(self, state, k):
        h_pre, h_post, h_res = self.coefficients(state, k)
        self._pending[k] = (h_post, h_res)
        if self.record is not None:
            self.record.setdefault("mhc", {})[k] = (h_pre.detach(), h_post.detach(), h_res.detach())
        return torch.einsum("btn,btnd->btd", h_pre, state)  # [B, T, D] H_pre x

    def write(self, state, k, y):
        h_post, h_res = self._pending.pop(k)
        mixed = torch.einsum("btij,btjd->btid", h_res, state)  # [B, T, n, D] H_res x
        return mixed + h_post.unsqueeze(-1) * y.unsqueeze(2)  # [B, T, n, D] + H_post^T y

    def final(self, state):
        w = self.readout.softmax(0)  # [n]
        if self.record is not None:
            self.record["mhc_readout"] = w.detach()
        return torch.einsum("n,btnd->btd", w, state)  # [B, T, D]

    def readable(self, state):
        return state.mean(2)  # [B, T, D] the streams' mean (== the plain residual sum while H_post = 1)


CONNECTIONS: dict[str, type[Connection]] = {
    "plain": PlainResidual,
    "moda": PlainResidual,  # MoDA changes the attention, not the residual
    "engram": PlainResidual,  # Engram adds a memory module on the plain residual
    "attnres": AttnRes,
    "attnres-block": BlockAttnRes,
    "mhc": MHC,
}
