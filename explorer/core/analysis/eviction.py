"""KV-cache eviction what-ifs: which cache entries a policy keeps, and the measured effect of evicting the rest.

Policies (a budget is the number of entries kept per layer and KV head when query position p is processed):
    StreamingLLM  keep the first `sinks` positions and the (budget - sinks) most recent ones.
    H2O           keep the `window` most recent positions plus the heavy hitters: the remaining budget goes to
                  the keys with the most attention received so far (summed over the queries before p and over
                  the query heads sharing the KV head). Recomputed at each step from the full run's attention,
                  so it is H2O's score without its irreversible greedy eviction.
    SnapKV        once, at the prompt's end: score prompt keys by the attention the last `window` prompt queries
                  (the observation window) give them, summed over the group's query heads and average-pooled
                  along keys (kernel `pool`); keep the top (budget - window) plus the window; every generated
                  token is kept.

The effect is measured, not estimated: `measure_effects` re-runs the model over the decode steps with an
attention mask that hides the evicted keys (per layer, KV head and query position) and compares each step's
next-token distribution with the same re-computation on the full cache (KL divergence and top-1 change).

Masking keeps every token at its original position (its RoPE angle). That is what H2O and SnapKV do, but
StreamingLLM re-assigns positions within the rolling cache (the sinks, then the window, numbered from 0),
so its row here is a masking approximation of StreamingLLM, not the method itself (`APPROXIMATIONS`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..adapters import adapter_for
from ..capture import _capturing_attention
from ..engine import check_owner
from ..errors import Cancelled
from ..models import LoadedModel
from ..run import Run

POLICIES = ("streaming", "h2o", "snapkv")
LABELS = {"streaming": "StreamingLLM", "h2o": "H2O", "snapkv": "SnapKV"}
# how each what-if differs from the published method (shown next to its results)
APPROXIMATIONS = {
    "streaming": "masking approximation: evicted entries are hidden but the kept ones keep their original "
                 "positions; the paper re-numbers positions inside the cache (sinks, then the window)",
    "h2o": "scores recomputed from the full run at each step (no irreversible greedy eviction)",
    "snapkv": "",
}
EVICT_NAME = "explorer_evict"
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class EvictionPolicy:
    kind: str  # "streaming" | "h2o" | "snapkv"
    budget: int = 32  # entries kept per layer and KV head (StreamingLLM: sinks + window)
    sinks: int = 4  # StreamingLLM attention-sink tokens
    window: int = 16  # H2O's recent window or SnapKV's observation window (StreamingLLM: budget - sinks)
    pool: int = 5  # SnapKV pooling kernel along keys

    @property
    def label(self) -> str:
        return LABELS[self.kind]


# --- keep-masks from attention patterns (pure numpy) ---------------------------------------------------


def streaming_keep(n_keys: int, rows: np.ndarray, sinks: int, window: int) -> np.ndarray:
    """[R, n_keys] bool: sink positions plus the `window` most recent positions up to each row's query."""
    k = np.arange(n_keys)[None, :]  # [1, N]
    p = np.asarray(rows)[:, None]  # [R, 1]
    return (k <= p) & ((k < sinks) | (k > p - window))


def h2o_keep(attn: np.ndarray, rows: np.ndarray, budget: int, window: int) -> np.ndarray:
    """[KV, R, N] bool from `attn` [KV, N, N] (query rows x key columns, summed over each group's heads)."""
    kv, _, n = attn.shape
    cumulative = np.cumsum(attn, axis=1, dtype=np.float64)  # [KV, N, N] attention received by queries <= row
    out = np.zeros((kv, len(rows), n), bool)
    for r, p in enumerate(np.asarray(rows)):
        if p + 1 <= budget:
            out[:, r, : p + 1] = True
            continue
        recent_lo = max(0, p - window + 1)
        out[:, r, recent_lo: p + 1] = True
        n_heavy = budget - (p + 1 - recent_lo)
        if n_heavy <= 0 or recent_lo == 0:
            continue
        received = cumulative[:, p - 1, :recent_lo] if p > 0 else np.zeros((kv, recent_lo))  # [KV, recent_lo]
        top = np.argsort(-received, axis=1, kind="stable")[:, :n_heavy]  # [KV, n_heavy]
        np.put_along_axis(out[:, r, :recent_lo], top, True, axis=1)
    return out


def snapkv_keep(attn: np.ndarray, n_prompt: int, rows: np.ndarray, budget: int, window: int,
                pool: int) -> np.ndarray:
    """[KV, R, N] bool: SnapKV's prompt selection (made once at the prompt's end) plus every later token."""
    kv, _, n = attn.shape
    rows = np.asarray(rows)
    prompt_keep = np.zeros((kv, n), bool)
    window = min(window, n_prompt)
    prefix = n_prompt - window
    if n_prompt <= budget or prefix <= 0:
        prompt_keep[:, :n_prompt] = True
    else:
        prompt_keep[:, prefix:n_prompt] = True
        votes = attn[:, prefix:n_prompt, :prefix].sum(axis=1)  # [KV, prefix] attention from the window
        pooled = avg_pool(votes, pool)  # [KV, prefix]
        n_top = max(0, budget - window)
        top = np.argsort(-pooled, axis=1, kind="stable")[:, :n_top]  # [KV, n_top]
        np.put_along_axis(prompt_keep[:, :prefix], top, True, axis=1)
    k = np.arange(n)[None, None, :]  # [1, 1, N]
    later = (k >= n_prompt) & (k <= rows[None, :, None])  # [1, R, N]
    return prompt_keep[:, None, :] | later


def avg_pool(x: np.ndarray, kernel: int) -> np.ndarray:
    """1-D average pooling along the last axis, stride 1, zero 'same' padding (as torch avg_pool1d)."""
    if kernel <= 1:
        return x.astype(np.float64)
    pad = kernel // 2
    padded = np.pad(x.astype(np.float64), [(0, 0)] * (x.ndim - 1) + [(pad, pad)])
    c = np.cumsum(np.concatenate([np.zeros(x.shape[:-1] + (1,)), padded], axis=-1), axis=-1)
    out = (c[..., kernel:] - c[..., :-kernel]) / kernel
    return out[..., : x.shape[-1]]


def group_attention(run: Run, layer: int, n: int | None = None) -> np.ndarray:
    """[KV, n, n] causal attention of the first n positions, summed over the query heads of each KV head."""
    n = run.n_tokens if n is None else n
    info = run.info
    q = torch.tensor(run.array("queries")[layer, :, :n], dtype=torch.float32)  # [heads, n, head_dim]
    k = torch.tensor(run.array("keys")[layer, :, :n], dtype=torch.float32)  # [kv_heads, n, head_dim]
    k = k.repeat_interleave(info.group_size, dim=0)  # [heads, n, head_dim]
    scores = q @ k.transpose(1, 2) * run.layer_scaling(layer)  # [heads, n, n]
    scores.masked_fill_(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    attn = torch.softmax(scores, dim=-1)  # [heads, n, n]
    return attn.view(info.n_kv_heads, info.group_size, n, n).sum(1).numpy()  # [kv_heads, n, n]


def decode_rows(run: Run, n_steps: int) -> np.ndarray:
    """[R] query positions of decode steps 1..n_steps (the prompt's last position is predicted at prefill)."""
    n = min(n_steps, run.n_tokens - run.n_prompt)
    return run.n_prompt + np.arange(max(0, n))


def keep_mask(run: Run, policy: EvictionPolicy, rows: np.ndarray) -> np.ndarray:
    """[layers, KV heads, R, N] bool: the entries `policy` keeps while processing each query position in `rows`."""
    info = run.info
    n = int(rows[-1]) + 1 if len(rows) else run.n_prompt
    if policy.kind == "streaming":
        one = streaming_keep(n, rows, policy.sinks, max(1, policy.budget - policy.sinks))  # [R, N]
        return np.broadcast_to(one, (info.n_layers, info.n_kv_heads) + one.shape).copy()
    out = np.zeros((info.n_layers, info.n_kv_heads, len(rows), n), bool)
    for layer in range(info.n_layers):
        attn = group_attention(run, layer, n)  # [KV, n, n]
        if policy.kind == "h2o":
            out[layer] = h2o_keep(attn, rows, policy.budget, policy.window)
        elif policy.kind == "snapkv":
            out[layer] = snapkv_keep(attn, run.n_prompt, rows, policy.budget, policy.window, policy.pool)
        else:
            raise ValueError(f"unknown eviction policy {policy.kind!r}")
    return out


def keep_image(keep: np.ndarray, row: int) -> np.ndarray:
    """[layers, N] fraction of KV heads keeping each position at query row `row` (of a keep_mask)."""
    return keep[:, :, row, :].mean(axis=1, dtype=np.float32)


# --- the measured effect: re-run the model with evicted keys masked out -------------------------------------


@dataclass(frozen=True)
class EvictionEffect:
    positions: np.ndarray  # [R] query positions re-computed (decode steps 1..R)
    kl: np.ndarray  # [R] KL(full cache || evicted cache) of the next-token distribution, nats
    top1_full: np.ndarray  # [R] argmax with the full cache (re-computed)
    top1_evicted: np.ndarray  # [R] argmax with the evicted cache
    kept_fraction: float  # kept / causally visible entries, over layers, heads and rows

    @property
    def top1_changed(self) -> np.ndarray:
        return self.top1_full != self.top1_evicted

    @property
    def mean_kl(self) -> float:
        return float(self.kl.mean()) if len(self.kl) else 0.0


_local = threading.local()  # per thread: {layer index: keep [kv_heads, R, N] bool} while re-computing


def _evicting_attention(module, query, key, value, attention_mask, **kwargs):
    """In a re-computing thread: sdpa with the evicted keys hidden (or plain sdpa with no keep-mask set).
    With no keep-mask set on this thread (outside an eviction job): the capturing attention, unchanged."""
    keeps = getattr(_local, "keeps", None)
    if keeps is None:
        return _capturing_attention(module, query, key, value, attention_mask, **kwargs)
    keep = keeps.get(getattr(module, "layer_idx", None)) if keeps else None
    if keep is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    _local.applied += 1
    q_len, k_len = query.shape[2], key.shape[2]
    q_pos = torch.arange(k_len - q_len, k_len)[:, None]  # [q, 1]
    k_pos = torch.arange(k_len)[None, :]  # [1, k]
    group = query.shape[1] // keep.shape[0]
    kept = keep[:, -q_len:, :k_len].repeat_interleave(group, dim=0)  # [heads, q, k]
    mask = ((kept & (k_pos <= q_pos)) | (k_pos == q_pos))[None]  # [1, heads, q, k] the own position always
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


AttentionInterface.register(EVICT_NAME, _evicting_attention)
AttentionMaskInterface.register(EVICT_NAME, sdpa_mask)


@contextmanager
def _evicting(model: torch.nn.Module):
    """Route attention through the evicting implementation for the duration of one engine job. Only the engine
    thread may call this (check_owner): the swap is then never behind, or under, another job's forward."""
    previous = getattr(model.config, "_attn_implementation", None)
    model.set_attn_implementation(EVICT_NAME)
    _local.keeps, _local.applied = {}, 0
    try:
        yield
    finally:
        _local.keeps = None
        if previous and previous != EVICT_NAME:
            model.set_attn_implementation(previous)


def measure_effects(model: LoadedModel, run: Run, keeps: dict[str, np.ndarray], rows: np.ndarray,
                    progress: Progress | None = None, cancel: threading.Event | None = None
                    ) -> dict[str, EvictionEffect]:
    """Re-compute decode rows `rows` (consecutive, from the prompt's end) once with the full cache and once per
    keep-mask ([layers, KV, R, N] from `keep_mask`), returning each mask's per-step KL and top-1 change.

    `model` is the LoadedModel the run came from (a runner Session's `.loaded`); its own cache is untouched.
    """
    model = getattr(model, "loaded", model)  # accept a Session
    check_owner(model)  # an app's model is re-run only inside an engine job (core.analysis.jobs.EvictionWhatIf)
    if model.info.name != run.info.name:
        raise ValueError(f"the run came from {run.info.name}, the loaded model is {model.info.name}")
    rows = np.asarray(rows)
    if len(rows) == 0:
        raise ValueError("this run has no decode steps to re-compute (generate some tokens first)")
    if not np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        raise ValueError("decode rows must be consecutive")
    report = progress or (lambda _f, _m: None)
    net, start, end = model.model, int(rows[0]), int(rows[-1]) + 1
    ids = torch.from_numpy(run.token_ids[:end])[None]  # [1, end]
    adapter = adapter_for(model.info.architecture)
    layer_ids = [getattr(adapter.attention_core(layer), "layer_idx", i) for i, layer in enumerate(adapter.layers(net))]
    total_steps = 2 + len(keeps)
    out: dict[str, EvictionEffect] = {}
    with _evicting(net), torch.inference_mode():
        report(0.0, "Re-computing the prompt")
        cache = DynamicCache(config=net.config)
        net(input_ids=ids[:, :start], cache=cache, use_cache=True, logits_to_keep=1)
        report(1 / total_steps, "Re-computing the decode steps with the full cache")
        full = torch.log_softmax(net(input_ids=ids[:, start:end], cache=cache, use_cache=True).logits[0].float(),
                                 dim=-1)  # [R, vocab]
        for i, (name, keep) in enumerate(keeps.items()):
            if cancel is not None and cancel.is_set():
                raise Cancelled("Eviction what-if cancelled.")
            report((2 + i) / total_steps, f"Re-computing with {LABELS.get(name, name)}'s evictions")
            extra = cache.get_seq_length() - start
            if extra > 0:
                cache.crop(-extra)  # back to the prompt (this transformers takes tokens to remove, negative)
            _local.keeps = {idx: torch.from_numpy(np.ascontiguousarray(keep[layer, :, :, :end]))
                            for layer, idx in enumerate(layer_ids)}
            _local.applied = 0
            try:
                logits = net(input_ids=ids[:, start:end], cache=cache, use_cache=True).logits[0]  # [R, vocab]
            finally:
                _local.keeps = {}
            if _local.applied != len(layer_ids):  # an architecture whose attention bypasses the interface
                raise RuntimeError(f"the eviction mask reached {_local.applied} of {len(layer_ids)} layers")
            evicted = torch.log_softmax(logits.float(), dim=-1)  # [R, vocab]
            kl = (full.exp() * (full - evicted)).sum(-1).clamp_min(0.0)  # [R]
            visible = (rows[:, None] >= np.arange(end)[None, :]).sum() * keep.shape[0] * keep.shape[1]
            out[name] = EvictionEffect(positions=rows, kl=kl.numpy().astype(np.float64),
                                       top1_full=full.argmax(-1).numpy(), top1_evicted=evicted.argmax(-1).numpy(),
                                       kept_fraction=float(keep[..., :end].sum() / max(1, visible)))
    report(1.0, "Done")
    return out


def eviction_what_if(model: LoadedModel, run: Run, policies: list[EvictionPolicy], n_steps: int,
                     progress: Progress | None = None, cancel: threading.Event | None = None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, EvictionEffect]]:
    """Keep-masks and measured effects of `policies` over the first `n_steps` decode steps of `run`.

    Returns (rows [R], {kind: keep [layers, KV, R, N]}, {kind: EvictionEffect})."""
    rows = decode_rows(run, n_steps)
    keeps = {p.kind: keep_mask(run, p, rows) for p in policies}
    return rows, keeps, measure_effects(model, run, keeps, rows, progress, cancel)
