"""Where the lab model keeps its modules, for the capture engine (core/adapters.py's registry entry
"explorer_lab" imports this on first use, which also registers the config with transformers)."""

from __future__ import annotations

from ..core.adapters import Adapter
from . import model as _model  # noqa: F401  registers LabConfig / LabForCausalLM with the Auto classes


class LabAdapter(Adapter):
    """model.model.layers[i].{self_attn, mlp}. Only the plain, MoDA variants keep an additive residual;
    AttnRes/mHC reweight sources and Engram adds memory outside the attention/MLP blocks, so the
    direct attribution is not exact for them and is labelled as such."""

    additive_residual = False

    def layers(self, model):
        return list(model.model.layers)

    def attention_core(self, layer):
        return layer.self_attn

    attention_block = attention_core

    def mlp_block(self, layer):
        return layer.mlp

    def output_projection(self, layer):
        return layer.self_attn.o_proj

    def embedding(self, model):
        return model.model.embed_tokens

    def final_norm(self, model):
        return model.model.norm
