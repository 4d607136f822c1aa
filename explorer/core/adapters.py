"""Architecture adapters: where each model family keeps its modules, in one small place.

Adding a family is one adapter class and one registry line. The capture code asks the
adapter for the decoder layers, the module that calls the attention function, the
attention block and MLP block (whose outputs add into the residual stream), the final norm
and the unembedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ModelLoadError


@dataclass(frozen=True)
class NormParams:
    """The final norm as numpy, so analyses can apply it without the model."""

    kind: str  # "rms" | "layer"
    weight: np.ndarray  # [hidden]
    bias: np.ndarray | None  # [hidden]
    eps: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32, copy=False)  # [..., hidden]
        if self.kind == "rms":
            scale = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps)  # [..., 1]
            return x * scale * self.weight
        mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
        centred = x - mean  # [..., hidden]
        scale = 1.0 / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        out = centred * scale * self.weight
        return out + self.bias if self.bias is not None else out


class Adapter:
    kind = "causal"
    uses_rope = True
    additive_residual = True  # embedding + sum(attn_out + mlp_out) == final residual

    # config fields
    def n_layers(self, cfg: Any) -> int:
        return cfg.num_hidden_layers

    def n_heads(self, cfg: Any) -> int:
        return cfg.num_attention_heads

    def n_kv_heads(self, cfg: Any) -> int:
        return getattr(cfg, "num_key_value_heads", None) or self.n_heads(cfg)

    def hidden_size(self, cfg: Any) -> int:
        return cfg.hidden_size

    def head_dim(self, cfg: Any) -> int:
        return getattr(cfg, "head_dim", None) or self.hidden_size(cfg) // self.n_heads(cfg)

    def context_length(self, cfg: Any) -> int:
        return cfg.max_position_embeddings

    # modules
    def layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        raise NotImplementedError

    def attention_core(self, layer: torch.nn.Module) -> torch.nn.Module:
        """The module that calls the registered attention function."""
        raise NotImplementedError

    def attention_block(self, layer: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def mlp_block(self, layer: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def output_projection(self, layer: torch.nn.Module) -> torch.nn.Module:
        """The attention output projection, whose input is the heads' outputs side by side [n, heads * head_dim]."""
        raise NotImplementedError

    def embedding(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def final_norm(self, model: torch.nn.Module) -> torch.nn.Module | None:
        return None

    def lm_head(self, model: torch.nn.Module) -> torch.nn.Module | None:
        return getattr(model, "lm_head", None)

    def norm_params(self, model: torch.nn.Module) -> NormParams | None:
        norm = self.final_norm(model)
        if norm is None:
            return None
        weight = norm.weight.detach().float().numpy()
        bias = getattr(norm, "bias", None)
        if hasattr(norm, "variance_epsilon"):
            return NormParams("rms", weight, None, float(norm.variance_epsilon))
        eps = float(getattr(norm, "eps", 1e-5))
        kind = "layer" if isinstance(norm, torch.nn.LayerNorm) else "rms"
        return NormParams(kind, weight, None if bias is None else bias.detach().float().numpy(), eps)


class LlamaAdapter(Adapter):
    """Llama and its look-alikes (Mistral, Qwen2/3): model.model.layers[i].{self_attn, mlp}."""

    def layers(self, model):
        return list(_base(model, "model").layers)

    def attention_core(self, layer):
        return layer.self_attn

    attention_block = attention_core

    def mlp_block(self, layer):
        return layer.mlp

    def output_projection(self, layer):
        return layer.self_attn.o_proj

    def embedding(self, model):
        return _base(model, "model").embed_tokens

    def final_norm(self, model):
        return _base(model, "model").norm


class GPT2Adapter(Adapter):
    uses_rope = False

    def n_layers(self, cfg):
        return cfg.n_layer

    def n_heads(self, cfg):
        return cfg.n_head

    def n_kv_heads(self, cfg):
        return cfg.n_head

    def hidden_size(self, cfg):
        return cfg.n_embd

    def head_dim(self, cfg):
        return cfg.n_embd // cfg.n_head

    def context_length(self, cfg):
        return cfg.n_positions

    def layers(self, model):
        return list(_base(model, "transformer").h)

    def attention_core(self, layer):
        return layer.attn

    attention_block = attention_core

    def mlp_block(self, layer):
        return layer.mlp

    def output_projection(self, layer):
        return layer.attn.c_proj

    def embedding(self, model):
        return _base(model, "transformer").wte

    def final_norm(self, model):
        return _base(model, "transformer").ln_f


class BertAdapter(Adapter):
    """Post-LayerNorm encoder: block outputs are recorded before their residual LayerNorm,
    so they are not exactly additive; attention is bidirectional; no generation."""

    kind = "encoder"
    uses_rope = False
    additive_residual = False

    def layers(self, model):
        return list(_base(model, "bert").encoder.layer)

    def attention_core(self, layer):
        return layer.attention.self

    def attention_block(self, layer):
        return layer.attention.output.dense

    def mlp_block(self, layer):
        return layer.output.dense

    def output_projection(self, layer):
        return layer.attention.output.dense

    def embedding(self, model):
        return _base(model, "bert").embeddings


def _base(model: torch.nn.Module, attr: str) -> torch.nn.Module:
    """The inner base model: `model.model` for *ForCausalLM, or the model itself for bare base models."""
    inner = getattr(model, attr, None)
    return inner if isinstance(inner, torch.nn.Module) and inner is not model else model


def _lab_adapter() -> Adapter:
    """The Depth lab's trainable decoders (explorer/lab), imported on first use."""
    from ..lab.adapter import LabAdapter

    return LabAdapter()


ADAPTERS: dict[str, type[Adapter]] = {
    "llama": LlamaAdapter,
    "mistral": LlamaAdapter,
    "qwen2": LlamaAdapter,
    "qwen3": LlamaAdapter,
    "gpt2": GPT2Adapter,
    "bert": BertAdapter,
    "explorer_lab": _lab_adapter,
}


def adapter_for(model_type: str) -> Adapter:
    try:
        return ADAPTERS[model_type]()
    except KeyError:
        supported = ", ".join(sorted(ADAPTERS))
        raise ModelLoadError(
            f"The architecture '{model_type}' is not supported yet (supported: {supported})."
        ) from None
