"""Head sweep: ablate each head (and each attention / MLP block) in turn and measure the change in one
target token's log-probability at one position.

Two modes:
    "last"  ablate only at the predicting position. Everything before it is unaffected (causal), so the
            prefix runs once into a KV cache and each ablation is a one-token forward (then the cache is
            cropped back): the cheap, standard choice, and the default.
    "all"   ablate at every position: each ablation recomputes the whole prompt.

Pure torch/numpy; runs on the caller's thread (the GUI calls it from the worker thread, never with a
capture active). The baseline goes through the same path, so every effect is an exact difference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from ..errors import InputError
from ..interventions import Intervention, InterventionContext

MODES = ("last", "all")


@dataclass(frozen=True)
class SweepResult:
    position: int  # the predicting position
    target_id: int
    mode: str
    baseline: float  # the target's logprob without interventions
    heads: np.ndarray  # [layers, heads] ablated logprob - baseline (NaN where not done: cancelled)
    attn: np.ndarray  # [layers] zeroing each attention block
    mlp: np.ndarray  # [layers] zeroing each MLP block
    forwards: int
    seconds: float

    @property
    def complete(self) -> bool:
        return not (np.isnan(self.heads).any() or np.isnan(self.attn).any() or np.isnan(self.mlp).any())

    def strongest(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The k heads whose ablation moves the target's logprob most: (layer, head, change)."""
        flat = np.nan_to_num(np.abs(self.heads), nan=-1.0).ravel()
        order = np.argsort(-flat)[:k]
        H = self.heads.shape[1]
        return [(int(i // H), int(i % H), float(self.heads.flat[i])) for i in order]


def sweep_plan(n_layers: int, n_heads: int, position: int, mode: str, blocks: bool = True) -> list[Intervention]:
    """The ablations in sweep order: every head of every layer, then (optionally) each block."""
    if mode not in MODES:
        raise InputError(f"Unknown sweep mode '{mode}' (one of: {', '.join(MODES)}).")
    positions = (position,) if mode == "last" else None
    plan = [Intervention("zero_head", layer, h, positions) for layer in range(n_layers) for h in range(n_heads)]
    if blocks:
        plan += [Intervention(kind, layer, None, positions) for kind in ("zero_attn", "zero_mlp")
                 for layer in range(n_layers)]
    return plan


def head_sweep(session, token_ids, position: int, target_id: int, *, mode: str = "last", blocks: bool = True,
               batch: int = 9, progress: Callable[[int, int], None] | None = None,
               cancel: threading.Event | None = None) -> SweepResult:
    """Ablate each head in turn at `position` of `token_ids` and score `target_id` (the token after it).

    `session` is a runner.Session (its model, adapter and info are used; its KV cache is left alone).
    `batch` ablations run side by side in one forward (batch element 0 is always the unablated baseline).
    On cancel the result holds what was done so far (NaN elsewhere).
    """
    info, model, adapter = session.info, session.loaded.model, session.adapter
    if not info.is_causal:
        raise InputError("A head sweep scores a next-token prediction: it needs a causal language model.")
    ids = [int(i) for i in np.asarray(token_ids)[: position + 1]]
    if not 0 <= position < len(token_ids):
        raise InputError(f"Position {position} is outside the run (0..{len(token_ids) - 1}).")
    plan = sweep_plan(info.n_layers, info.n_heads, position, mode, blocks)
    L, H = info.n_layers, info.n_heads
    effects = np.full(len(plan), np.nan, np.float64)
    t0 = time.perf_counter()
    forwards = 0
    batch = max(1, batch)
    with torch.inference_mode():
        if mode == "last":
            prefix = DynamicCache(config=model.config)
            if position > 0:
                model(input_ids=torch.tensor([ids[:position]]), cache=prefix, use_cache=True, logits_to_keep=1)
                forwards += 1
            cache = _repeat_cache(prefix, model, batch + 1) if position > 0 else None
            inputs = torch.tensor([ids[position:]] * (batch + 1))  # [batch + 1, 1]

            def score(ivs: tuple[Intervention, ...]) -> np.ndarray:
                """Row 0: no intervention (the baseline); row i + 1: ivs[i] alone."""
                with InterventionContext(model, adapter, ivs, H, info.head_dim, tuple(range(1, len(ivs) + 1))):
                    out = model(input_ids=inputs, cache=cache, use_cache=True, logits_to_keep=1)
                if cache is not None:
                    cache.crop(-1)  # back to the shared prefix
                return _logprobs(out.logits[:, -1], target_id)[: len(ivs) + 1]
        else:
            inputs = torch.tensor([ids] * (batch + 1))  # [batch + 1, position + 1]

            def score(ivs: tuple[Intervention, ...]) -> np.ndarray:
                with InterventionContext(model, adapter, ivs, H, info.head_dim, tuple(range(1, len(ivs) + 1))):
                    out = model(input_ids=inputs, logits_to_keep=1)
                return _logprobs(out.logits[:, -1], target_id)[: len(ivs) + 1]

        baseline = float(score(())[0])
        forwards += 1
        for lo in range(0, len(plan), batch):
            if cancel is not None and cancel.is_set():
                break
            chunk = tuple(plan[lo: lo + batch])
            effects[lo: lo + len(chunk)] = score(chunk)[1:] - baseline
            forwards += 1
            if progress is not None:
                progress(lo + len(chunk), len(plan))
    heads = effects[: L * H].reshape(L, H)
    rest = effects[L * H:]
    attn, mlp = (rest[:L], rest[L:]) if blocks else (np.full(L, np.nan), np.full(L, np.nan))
    return SweepResult(position, int(target_id), mode, baseline, heads, attn, mlp, forwards,
                       time.perf_counter() - t0)


def default_target(run, position: int) -> int:
    """The token that followed `position` in the run, or the model's top prediction after the last one."""
    if position + 1 < run.n_tokens:
        return int(run.tokens[position + 1].id)
    return int(run.array("pred_top_ids")[position, 0])


def _logprobs(logits: torch.Tensor, target: int) -> np.ndarray:
    logits = logits.float()  # [batch, vocab]
    return (logits[:, target] - torch.logsumexp(logits, dim=-1)).double().numpy()  # [batch]


def _repeat_cache(prefix: DynamicCache, model, n: int) -> DynamicCache:
    """A cache holding the prefix `n` times along the batch axis."""
    out = DynamicCache(config=model.config)
    for i, layer in enumerate(prefix.layers):
        out.update(layer.keys.expand(n, -1, -1, -1).contiguous(), layer.values.expand(n, -1, -1, -1).contiguous(), i)
    return out
