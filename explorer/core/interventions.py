"""Interventions: knock out, scale or patch parts of the model while it runs (no Qt).

    zero_head / mean_head / scale_head / patch_head   a head's output z_h before the output projection
                                                     (forward pre-hook on o_proj / c_proj / output.dense)
    zero_attn / zero_mlp                             a whole attention or MLP block's output (forward hook)
    patch_resid                                      the residual stream after a layer (forward hook)

`InterventionContext` installs the hooks for one run (Session.stream enters it inside the same
`with` as the capture, so no hook outlives a run). Hooks are prepended, so the capture's own hooks
record the modified values. Positions are absolute token positions; the context reads the cache
length when the model is called, so it works with a reused prefix and during decoding.

Per-head outputs for mean/patch sources come from a Run: z_h[pos] = attention(l, h)[pos] @ values[l, h // group].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .adapters import Adapter
from .errors import InputError

HEAD_KINDS = ("zero_head", "mean_head", "scale_head", "patch_head")
BLOCK_KINDS = ("zero_attn", "zero_mlp")
KINDS = HEAD_KINDS + BLOCK_KINDS + ("patch_resid",)
_NEEDS_SOURCE = ("mean_head", "patch_head", "patch_resid")


@dataclass(frozen=True)
class Intervention:
    """One change to the forward pass. Hashable: the source array is compared through its digest."""

    kind: str
    layer: int
    head: int | None = None
    positions: tuple[int, ...] | None = None  # None = every position
    scale: float = 0.0  # scale_head's factor
    source: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)
    # mean_head: [head_dim]; patch_head: [positions, head_dim]; patch_resid: [positions, hidden] (by absolute position)
    label: str = field(default="", compare=False)  # e.g. "from run B"
    source_digest: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"Unknown intervention '{self.kind}' (one of: {', '.join(KINDS)}).")
        if self.layer < 0:
            raise InputError("An intervention's layer cannot be negative.")
        if self.kind in HEAD_KINDS and (self.head is None or self.head < 0):
            raise InputError(f"'{self.kind}' needs a head.")
        if self.positions is not None:
            positions = tuple(sorted({int(p) for p in self.positions}))
            if not positions or positions[0] < 0:
                raise InputError("Intervention positions must be non-negative (or None for all).")
            object.__setattr__(self, "positions", positions)
        if self.kind in _NEEDS_SOURCE:
            if self.source is None:
                raise InputError(f"'{self.kind}' needs source values.")
            src = np.array(self.source, dtype=np.float32)  # private, read-only copy
            want = 1 if self.kind == "mean_head" else 2
            if src.ndim != want or not np.isfinite(src).all():
                raise InputError(f"'{self.kind}' needs a finite {want}-D source, got shape {src.shape}.")
            src.flags.writeable = False
            object.__setattr__(self, "source", src)
            digest = hashlib.sha1(src.tobytes() + str(src.shape).encode()).hexdigest()[:16]
            object.__setattr__(self, "source_digest", digest)
        elif self.source is not None:
            raise InputError(f"'{self.kind}' takes no source values.")

    @property
    def first_position(self) -> int:
        """The first position whose computation this intervention can change."""
        return 0 if self.positions is None else self.positions[0]

    def describe(self) -> str:
        rows = self.source.shape[0] if self.source is not None and self.source.ndim == 2 else None
        where = ("all positions" if rows is None else f"positions 0-{rows - 1} (the source's {rows})") \
            if self.positions is None else (
            f"position {self.positions[0]}" if len(self.positions) == 1 else f"{len(self.positions)} positions")
        what = {
            "zero_head": f"zero head L{self.layer}.H{self.head}",
            "mean_head": f"mean-ablate head L{self.layer}.H{self.head}",
            "scale_head": f"scale head L{self.layer}.H{self.head} x{self.scale:g}",
            "patch_head": f"patch head L{self.layer}.H{self.head}", "zero_attn": f"zero attention block L{self.layer}",
            "zero_mlp": f"zero MLP block L{self.layer}", "patch_resid": f"patch residual after L{self.layer}",
        }[self.kind]
        return f"{what} at {where}" + (f" ({self.label})" if self.label else "")


# --- building sources from a Run -----------------------------------------------------------------------------
def head_outputs(run: Any, layer: int, head: int) -> np.ndarray:
    """[N, head_dim] the head's output before the output projection: attention(l, h) @ values[l, h // group]."""
    a = run.attention(layer, head)  # [N, N]
    v = run.array("values")[layer, head // run.info.group_size].astype(np.float32)  # [N, head_dim]
    return a @ v


def mean_ablation(run: Any, layer: int, head: int, positions: tuple[int, ...] | None = None) -> Intervention:
    """Replace the head's output with its mean over this run's positions (one prompt, not a dataset)."""
    return Intervention("mean_head", layer, head, positions, source=head_outputs(run, layer, head).mean(axis=0),
                        label=f"mean over this prompt's {run.n_tokens} positions")


def patch_head_from(run_b: Any, layer: int, head: int, positions: tuple[int, ...] | None = None,
                    label: str = "from run B") -> Intervention:
    """Patch with run B's head output at the SAME absolute positions (only B's first N_b exist).

    For a run B of another length or wording use `analysis.patching.patch_from_run_b`, which aligns tokens.
    """
    return Intervention("patch_head", layer, head, positions, source=head_outputs(run_b, layer, head), label=label)


def patch_resid_from(run_b: Any, layer: int, positions: tuple[int, ...] | None = None,
                     label: str = "from run B") -> Intervention:
    """Patch the residual stream after `layer` with run B's (float32 exact for the last layer)."""
    last = layer == run_b.info.n_layers - 1
    src = run_b.array("final_resid") if last else run_b.array("resid")[layer + 1]  # [N, hidden]
    return Intervention("patch_resid", layer, None, positions, source=src, label=label)


# --- prefix reuse ----------------------------------------------------------------------------------------------
def first_affected(before: tuple[Intervention, ...], after: tuple[Intervention, ...]) -> int | None:
    """First position where runs under `before` and `after` can differ (None: they cannot)."""
    changed = set(before) ^ set(after)
    return min((iv.first_position for iv in changed), default=None)


# --- serialisation ---------------------------------------------------------------------------------------------
def to_json(iv: Intervention) -> dict:
    return {"kind": iv.kind, "layer": iv.layer, "head": iv.head,
            "positions": None if iv.positions is None else list(iv.positions), "scale": float(iv.scale),
            "label": iv.label, "source": None if iv.source is None else iv.source.tolist()}


def from_json(d: Any) -> Intervention:
    """Rebuild (and validate) an intervention from `to_json`'s dict; raises InputError or TypeError."""
    if not isinstance(d, dict):
        raise TypeError("an intervention must be a JSON object")
    positions = d.get("positions")
    head = d.get("head")
    source = d.get("source")
    return Intervention(kind=str(d["kind"]), layer=int(d["layer"]), head=None if head is None else int(head),
                        positions=None if positions is None else tuple(int(p) for p in positions),
                        scale=float(d.get("scale", 0.0)), label=str(d.get("label", "")),
                        source=None if source is None else np.asarray(source, np.float32))


# --- applying them ---------------------------------------------------------------------------------------------
class InterventionContext:
    """Hooks for a tuple of interventions, installed on enter and removed on exit."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter, interventions: tuple[Intervention, ...],
                 n_heads: int, head_dim: int, batch_rows: tuple[int, ...] | None = None):
        self.model, self.adapter = model, adapter
        self.interventions = tuple(interventions)
        # which batch element each intervention acts on (None: all of them), for sweeps that batch ablations
        self._batch = {id(iv): b for iv, b in zip(self.interventions, batch_rows, strict=True)} if batch_rows else {}
        self.n_heads, self.head_dim = n_heads, head_dim
        self.offset = 0  # absolute position of the forward pass' first token
        self._handles: list = []

    def __enter__(self) -> InterventionContext:
        if not self.interventions:
            return self
        layers = self.adapter.layers(self.model)
        for iv in self.interventions:
            if iv.layer >= len(layers):
                raise InputError(f"{iv.describe()}: the model has only {len(layers)} layers.")
            if iv.head is not None and iv.head >= self.n_heads:
                raise InputError(f"{iv.describe()}: the model has only {self.n_heads} heads per layer.")
        self._handles.append(self.model.register_forward_pre_hook(self._read_offset, with_kwargs=True, prepend=True))
        by_layer: dict[tuple[str, int], list[Intervention]] = {}
        for iv in self.interventions:
            where = "heads" if iv.kind in HEAD_KINDS else iv.kind
            by_layer.setdefault((where, iv.layer), []).append(iv)
        for (where, layer), ivs in by_layer.items():
            block = layers[layer]
            if where == "heads":
                module = self.adapter.output_projection(block)
                self._handles.append(module.register_forward_pre_hook(self._heads_hook(ivs), prepend=True))
            else:
                module = {"zero_attn": self.adapter.attention_block, "zero_mlp": self.adapter.mlp_block}.get(
                    where, lambda b: b)(block)
                self._handles.append(module.register_forward_hook(self._output_hook(ivs), prepend=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _read_offset(self, _module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.offset = int(cache.get_seq_length()) if cache is not None else 0

    def _rows(self, iv: Intervention, n: int) -> np.ndarray:
        """Rows of this forward pass (0 .. n-1) that `iv` touches, limited to its source's positions."""
        lo = self.offset
        pos = np.arange(lo, lo + n) if iv.positions is None else np.array(
            [p for p in iv.positions if lo <= p < lo + n], np.int64)
        if iv.source is not None and iv.source.ndim == 2:
            pos = pos[pos < iv.source.shape[0]]
        return pos - lo

    def _heads_hook(self, ivs: list[Intervention]):
        H, d = self.n_heads, self.head_dim

        def hook(_module, args):
            x = args[0]  # [batch, n, heads * head_dim]
            n = x.shape[1]
            z = x.reshape(x.shape[0], n, H, d).clone()  # [batch, n, heads, head_dim]
            for iv in ivs:
                rows = torch.from_numpy(self._rows(iv, n))
                if rows.numel() == 0:
                    continue
                b = self._batch.get(id(iv), slice(None))
                if iv.kind == "zero_head":
                    z[b, rows, iv.head] = 0
                elif iv.kind == "scale_head":
                    z[b, rows, iv.head] *= iv.scale
                elif iv.kind == "mean_head":
                    z[b, rows, iv.head] = torch.tensor(iv.source, dtype=z.dtype)
                else:  # patch_head
                    z[b, rows, iv.head] = torch.from_numpy(iv.source[rows.numpy() + self.offset]).to(z.dtype)
            return (z.reshape(x.shape), *args[1:])
        return hook

    def _output_hook(self, ivs: list[Intervention]):
        def hook(_module, _args, output):
            out = output[0] if isinstance(output, tuple) else output  # [batch, n, hidden]
            n = out.shape[1]
            new = out.clone()
            for iv in ivs:
                rows = self._rows(iv, n)
                if rows.size == 0:
                    continue
                b = self._batch.get(id(iv), slice(None))
                if iv.kind == "patch_resid":
                    if iv.source.shape[1] != new.shape[-1]:
                        raise InputError(f"{iv.describe()}: the source has width {iv.source.shape[1]}, "
                                         f"the model {new.shape[-1]}.")
                    new[b, torch.from_numpy(rows)] = torch.from_numpy(iv.source[rows + self.offset]).to(new.dtype)
                else:
                    new[b, torch.from_numpy(rows)] = 0
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook


def with_positions(ivs: tuple[Intervention, ...], positions: tuple[int, ...] | None) -> tuple[Intervention, ...]:
    """The same interventions restricted to other positions."""
    return tuple(replace(iv, positions=positions) for iv in ivs)
