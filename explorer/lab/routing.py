"""The learned routing of a lab model, read from one recorded forward pass, and its measured importance
(the change in loss when a source is switched off: routing weight is not causal importance).

Arrays (numpy, one sequence; readers k = 0 .. 2L-1 are sublayers, reader 2L is the output; sources
s = 0 is the embedding, s = j + 1 is sublayer j's output):
    attnres           [readers, T, sources]  softmax weights (NaN where a source does not exist yet)
    mhc_read          [readers, T, sources]  effective read weight H_pre * prod(H_res) * H_post^T
    mhc_h_pre/post    [sublayers, n]         mean over tokens; mhc_h_res [sublayers, n, n]
    mhc_ds_error      [sublayers]            max |row/column sum - 1| of H_res (doubly-stochastic error)
    moda_depth        [layers, heads, T]     attention mass on depth keys (the rest is on sequence keys)
    moda_slots        [layers, heads, T, S]  mass on each depth slot (S = 2L-2 slots; NaN if absent)
    engram_gate       [engram layers, T]     the gate alpha_t; engram_rows [engram layers, T, tables]
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .model import LabForCausalLM


def source_labels(n_layers: int) -> list[str]:
    names = ["emb"]
    for i in range(n_layers):
        names += [f"a{i}", f"m{i}"]
    return names


def reader_labels(n_layers: int) -> list[str]:
    return source_labels(n_layers)[1:] + ["out"]


@torch.no_grad()
def record(model: LabForCausalLM, ids: torch.Tensor) -> dict[str, np.ndarray]:
    """Routing of one sequence ids [T] (or [1, T])."""
    ids = ids.reshape(1, -1).to(model.device)
    cfg = model.config
    rec: dict = {}
    model.set_recording(rec)
    try:
        model(ids, use_cache=False)
    finally:
        model.set_recording(None)
    rec = _cpu(rec)
    n_read, n_src, t = cfg.n_sublayers + 1, cfg.n_sublayers + 1, ids.shape[1]
    out: dict[str, np.ndarray] = {"arch": np.array(cfg.depth)}
    if "attnres" in rec:
        mat = np.full((n_read, t, n_src), np.nan, np.float32)
        for k, alpha in rec["attnres"].items():  # [1, T, S_k]
            mat[k, :, : alpha.shape[-1]] = alpha[0].numpy()
        out["attnres"] = mat
    if "mhc" in rec:
        out.update(_mhc(rec, cfg, t))
    if "moda" in rec:
        slots = 2 * (cfg.num_hidden_layers - 1)
        depth = np.zeros((cfg.num_hidden_layers, cfg.num_attention_heads, t), np.float32)
        per = np.full((cfg.num_hidden_layers, cfg.num_attention_heads, t, max(slots, 1)), np.nan, np.float32)
        for layer, p in rec["moda"].items():  # [1, H, T, S]
            depth[layer] = p[0].sum(-1).numpy()
            per[layer, :, :, : p.shape[-1]] = p[0].numpy()
        out["moda_depth"], out["moda_slots"] = depth, per
        kv = cfg.num_key_value_heads * cfg.head_dim
        # extra keys + values per token in one forward pass: layer l reads 2l depth slots (float32)
        out["moda_depth_kv_bytes_per_token"] = np.array(sum(2 * l * 2 * kv * 4 for l in range(cfg.num_hidden_layers)))
    if "engram" in rec:
        layers = sorted(rec["engram"])
        out["engram_layers"] = np.array(layers)
        out["engram_gate"] = np.stack([rec["engram"][i][0][0].numpy() for i in layers])  # [E, T]
        out["engram_rows"] = np.stack([rec["engram"][i][1][0].numpy() for i in layers])  # [E, T, tables]
    return out


def _cpu(obj):
    """The recorded tensors on the CPU (training may run on a GPU)."""
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_cpu(v) for v in obj)
    return obj


def _mhc(rec: dict, cfg, t: int) -> dict[str, np.ndarray]:
    k_total = cfg.n_sublayers
    pre = [rec["mhc"][k][0][0] for k in range(k_total)]  # [T, n]
    post = [rec["mhc"][k][1][0] for k in range(k_total)]  # [T, n]
    res = [rec["mhc"][k][2][0] for k in range(k_total)]  # [T, n, n]
    readout = rec["mhc_readout"]  # [n]
    read = np.full((k_total + 1, t, k_total + 1), np.nan, np.float32)
    for k in range(k_total + 1):
        u = pre[k] if k < k_total else readout.expand(t, -1)  # [T, n] the reader's row vector
        for j in range(k - 1, -1, -1):
            read[k, :, j + 1] = (u * post[j]).sum(-1).numpy()  # u . H_post_j
            u = torch.einsum("ti,tij->tj", u, res[j])  # [T, n] u H_res_j
        read[k, :, 0] = u.sum(-1).numpy()  # the embedding starts in every stream
    res_all = torch.stack(res)  # [K, T, n, n]
    err = torch.maximum((res_all.sum(-1) - 1).abs().amax(dim=(1, 2)), (res_all.sum(-2) - 1).abs().amax(dim=(1, 2)))
    return {"mhc_read": read, "mhc_h_pre": torch.stack(pre).mean(1).numpy(),
            "mhc_h_post": torch.stack(post).mean(1).numpy(), "mhc_h_res": res_all.mean(1).numpy(),
            "mhc_ds_error": err.numpy(), "mhc_readout": readout.numpy()}


def read_matrix(routing: dict) -> tuple[str, np.ndarray] | None:
    """The variant's layer x source-depth matrix (mean over tokens) and its name, on shared axes."""
    for key, name in (("attnres", "AttnRes weight"), ("mhc_read", "mHC effective read")):
        if key in routing:
            with warnings.catch_warnings():  # sources that do not exist yet are NaN for every token
                warnings.simplefilter("ignore", RuntimeWarning)
                return name, np.nanmean(routing[key], axis=1)  # [readers, sources]
    return None


def routing_summary(model: LabForCausalLM, rows: torch.Tensor) -> dict:
    """Small JSON-able means over a few held-out rows [B, T] (the training snapshots)."""
    was_training = model.training
    model.eval()
    try:
        parts = [record(model, r) for r in rows]
    finally:
        model.train(was_training)
    out: dict = {}
    for key in ("attnres", "mhc_read"):
        if key in parts[0]:
            with warnings.catch_warnings():  # sources that do not exist yet are NaN for every token
                warnings.simplefilter("ignore", RuntimeWarning)
                out[key] = _json(np.nanmean(np.stack([p[key] for p in parts]), axis=(0, 2)))
    if "moda_depth" in parts[0]:
        out["moda_depth"] = _json(np.mean([p["moda_depth"].mean(-1) for p in parts], axis=0))  # [L, H]
    if "engram_gate" in parts[0]:
        out["engram_gate"] = _json(np.mean([p["engram_gate"].mean(-1) for p in parts], axis=0))
    if "mhc_ds_error" in parts[0]:
        out["mhc_ds_error"] = float(max(p["mhc_ds_error"].max() for p in parts))
    return out


def _json(a: np.ndarray):
    return [[None if not np.isfinite(v) else round(float(v), 5) for v in row] for row in np.atleast_2d(a)]


@torch.no_grad()
def _loss(model: LabForCausalLM, rows: torch.Tensor) -> float:
    rows = rows.to(model.device)
    logits = model(rows[:, :-1], use_cache=False).logits  # [B, T, V]
    return float(F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())) / np.log(2)


@torch.no_grad()
def ablation(model: LabForCausalLM, rows: torch.Tensor) -> dict[str, np.ndarray]:
    """Held-out loss change (bits per byte) when each routing source is switched off.

    AttnRes: source s removed from reader k's softmax (the others renormalise)  -> [readers, sources]
    every variant: sublayer j's output zeroed everywhere                         -> [sources] (s = j + 1)
    MoDA: layer l's depth keys masked                                            -> [layers]
    Engram: the gate of each Engram layer set to 0                               -> [engram layers]
    """
    model.eval()
    cfg, inner = model.config, model.model
    base = _loss(model, rows)
    out: dict[str, np.ndarray] = {"base_bpb": np.array(base)}
    n = cfg.n_sublayers + 1
    conn = inner.connection
    if cfg.depth in ("attnres", "attnres-block"):
        pairs = np.full((n, n), np.nan, np.float32)
        probe = record(model, rows[0, :-1])["attnres"]  # [readers, T, sources]
        for k in range(n):
            avail = int(np.isfinite(probe[k, 0]).sum())
            for s in range(avail if avail > 1 else 0):
                conn.drop = {(k, s)}
                pairs[k, s] = _loss(model, rows) - base
        conn.drop = set()
        out["ablation_pairs"] = pairs
    sources = np.full(n, np.nan, np.float32)
    for j in range(cfg.n_sublayers):
        inner.drop_outputs = frozenset({j})
        sources[j + 1] = _loss(model, rows) - base
    inner.drop_outputs = frozenset()
    out["ablation_sources"] = sources
    if cfg.depth == "moda":
        vals = np.zeros(cfg.num_hidden_layers, np.float32)
        for layer in inner.layers[1:]:
            layer.self_attn.mask_depth = True
            vals[layer.idx] = _loss(model, rows) - base
            layer.self_attn.mask_depth = False
        out["ablation_moda"] = vals
    if cfg.depth == "engram":
        engrams = [layer.engram for layer in inner.layers if layer.engram is not None]
        vals = np.zeros(len(engrams), np.float32)
        for i, eng in enumerate(engrams):
            eng.gate_override = 0.0
            vals[i] = _loss(model, rows) - base
            eng.gate_override = None
        out["ablation_engram"] = vals
    return out
