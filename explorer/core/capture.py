"""Capture of a model's internals through a registered attention function and forward hooks.

The arrays captured, their shapes and dtypes are defined once, in core/arrays.py (`CAPTURED`);
the hooks fill `StepRecord`'s activation arrays by those names, layer by layer.

Hooks live inside `CaptureContext`; leaving it removes every hook, so none outlives a run.

Arrays are stored in float16 (the store dtype). An array with a value beyond float16's range
(|x| > 65504, e.g. the residual stream's massive activations in some models) is stored in
float32 for that step instead of turning into inf; the Run keeps it in float32 from then on and
lists it in `Run.widened` so a panel can say so.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .adapters import Adapter
from .arrays import ACTIVATIONS, CAPTURED, model_dims
from .errors import Cancelled

if TYPE_CHECKING:
    from .models import ModelInfo

ATTENTION_NAME = "explorer_capture"
_HALF_MAX = 65504.0  # the largest finite float16


def _beyond_half(value: torch.Tensor) -> bool:
    """Whether `value` holds a number float16 cannot store (|x| > 65504). Two reductions on the source (an
    isfinite pass over the float16 copy costs about 10x more on CPUs without native float16 arithmetic)."""
    if value.dtype == torch.float16:
        return False
    return bool(value.amax() > _HALF_MAX) or bool(value.amin() < -_HALF_MAX)


_DEFER_MAX = 8  # steps with at most this many new positions keep references and stack them once


def _capturing_attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa, plus a record of the post-RoPE query and the new keys/values when a capture is active."""
    recorder = getattr(module, "_explorer_recorder", None)
    if recorder is not None:
        recorder.on_attention(module._explorer_layer, query, key, value)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTENTION_NAME, _capturing_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def prepare_model(model: torch.nn.Module) -> None:
    """Route the model's attention through the capturing function (a plain sdpa when no capture is active)."""
    if getattr(model.config, "_attn_implementation", None) != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)


@dataclass
class StepRecord:
    """What one forward pass recorded: tensors of the new positions, allocated once per step in the
    store dtype; the hooks write into them (one copy that also converts the dtype). The activation
    fields are core/arrays.py's ACTIVATIONS (a test checks they match)."""

    queries: torch.Tensor  # [layers, heads, n_new, head_dim]
    keys: torch.Tensor  # [layers, kv_heads, n_new, head_dim]
    values: torch.Tensor  # [layers, kv_heads, n_new, head_dim]
    resid: torch.Tensor  # [layers + 1, n_new, hidden]
    attn_out: torch.Tensor  # [layers, n_new, hidden]
    mlp_out: torch.Tensor  # [layers, n_new, hidden]
    final_resid: torch.Tensor | None = None  # [n_new, hidden] float32 output of the last layer
    marks: dict[str, float] = field(default_factory=dict)  # stage -> perf_counter()
    layer_ms: list[float] = field(default_factory=list)
    filled: dict[str, int] = field(default_factory=dict)  # array name -> hook calls that wrote into it

    deferred: dict[str, list] | None = None  # decode steps: references, stacked once at the end
    skip: frozenset[str] = frozenset()  # arrays not stored (memory budget): hooks ignore them

    widened: set[str] = field(default_factory=set)  # arrays kept in float32: a value overflowed float16

    def put(self, name: str, index: int, value: torch.Tensor) -> None:
        if name in self.skip:
            return
        self.filled[name] = self.filled.get(name, 0) + 1
        if self.deferred is not None:  # a few positions: one stack per array beats L small copies
            self.deferred.setdefault(name, []).append((index, value.detach()))
            return
        # many positions: convert layer by layer, never holding L float32 copies
        target = getattr(self, name)
        if target.dtype == torch.float16 and _beyond_half(value):
            # beyond float16's range: this array is kept in float32 from here on, never inf
            target = target.float()
            setattr(self, name, target)
            self.widened.add(name)
        target[index].copy_(value)

    def finish(self) -> None:
        """Check every layer's hook fired once per array, and stack what was deferred."""
        for name in ACTIVATIONS:
            if name in self.skip:
                continue
            target = getattr(self, name)
            if self.filled.get(name, 0) != target.shape[0]:
                raise RuntimeError(f"capture of '{name}' saw {self.filled.get(name, 0)} of {target.shape[0]} layers")
            if self.deferred is not None:
                parts = [v for _i, v in sorted(self.deferred[name], key=lambda iv: iv[0])]
                stacked = torch.stack(parts)
                if target.dtype == torch.float16 and _beyond_half(stacked):
                    setattr(self, name, stacked.float())  # beyond float16's range: stored in float32, never inf
                    self.widened.add(name)
                else:
                    setattr(self, name, stacked.to(target.dtype))
        self.deferred = None


class CaptureContext:
    """Installs hooks for one run; `begin_step()` starts a fresh record for each forward pass."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter, info: ModelInfo,
                 store_dtype: torch.dtype = torch.float16, cancel: threading.Event | None = None,
                 skip: tuple[str, ...] = ()):
        self.model = model
        self.info = info
        self.adapter = adapter
        self.layers = adapter.layers(model)
        self.store_dtype = store_dtype
        self.cancel = cancel
        self.skip = frozenset(skip)  # arrays not stored (core.arrays.OPTIONAL)
        self.record: StepRecord | None = None
        self._handles: list = []
        self._layer_start = 0.0

    def __enter__(self) -> CaptureContext:
        prepare_model(self.model)
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            core = self.adapter.attention_core(layer)
            core._explorer_recorder = self
            core._explorer_layer = i
            self._handles.append(layer.register_forward_pre_hook(self._layer_pre(i), with_kwargs=True))
            self._handles.append(layer.register_forward_hook(self._layer_post(i, n)))
            self._handles.append(self.adapter.attention_block(layer).register_forward_hook(self._block(i, "attn_out")))
            self._handles.append(self.adapter.mlp_block(layer).register_forward_hook(self._block(i, "mlp_out")))
        embed = self.adapter.embedding(self.model)
        self._handles.append(embed.register_forward_pre_hook(lambda *_: self._mark("embed_start")))
        self._handles.append(embed.register_forward_hook(lambda *_: self._mark("embed_end")))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for layer in self.layers:
            core = self.adapter.attention_core(layer)
            core._explorer_recorder = None
        self.record = None

    def begin_step(self, n_new: int) -> StepRecord:
        dims = model_dims(self.info, n_new)
        defer = n_new <= _DEFER_MAX

        def empty(name: str) -> torch.Tensor:
            if name in self.skip:
                return torch.empty(0, dtype=self.store_dtype)
            shape = CAPTURED[name].shape_for(dims)  # e.g. [layers, heads, n_new, head_dim]
            return torch.empty((shape[0], 0) if defer else shape, dtype=self.store_dtype)

        self.record = StepRecord(
            **{name: empty(name) for name in ACTIVATIONS},
            layer_ms=[0.0] * self.info.n_layers, deferred={} if defer else None, skip=self.skip,
        )
        self.record.marks["forward_start"] = time.perf_counter()
        return self.record

    # --- hooks ------------------------------------------------------------------------------
    def _mark(self, name: str) -> None:
        if self.record is not None:
            self.record.marks[name] = time.perf_counter()

    def on_attention(self, layer: int, query, key, value) -> None:
        rec = self.record
        if rec is None:
            return
        n_new = query.shape[2]
        rec.put("queries", layer, query[0])  # [heads, n_new, head_dim]
        rec.put("keys", layer, key[0, :, -n_new:])  # [kv_heads, n_new, head_dim]
        rec.put("values", layer, value[0, :, -n_new:])  # [kv_heads, n_new, head_dim]

    def _layer_pre(self, i: int):
        def hook(_module, args, kwargs):
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled("Run cancelled.")
            self._layer_start = time.perf_counter()
            if i == 0 and self.record is not None:
                hidden = args[0] if args else kwargs["hidden_states"]
                self.record.put("resid", 0, hidden[0])  # [n_new, hidden]
        return hook

    def _layer_post(self, i: int, n_layers: int):
        def hook(_module, _args, output):
            rec = self.record
            if rec is None:
                return
            hidden = output[0] if isinstance(output, tuple) else output
            rec.put("resid", i + 1, hidden[0])  # [n_new, hidden]
            if i == n_layers - 1:
                rec.marks["final_resid"] = time.perf_counter()
                rec.final_resid = hidden[0].detach().float()  # [n_new, hidden] exact, for logits
            rec.layer_ms[i] = (time.perf_counter() - self._layer_start) * 1e3
        return hook

    def _block(self, i: int, name: str):
        def hook(_module, _args, output):
            if self.record is not None:
                out = output[0] if isinstance(output, tuple) else output
                self.record.put(name, i, out[0])  # [n_new, hidden]
        return hook
