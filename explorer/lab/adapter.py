"""Where the lab model keeps its modules, for the capture engine (core/adapters.py's registry entry
"explorer_lab" imports this on first use, which also registers the config with transformers)."""

from __future__ import annotations

from ..core.adapters import LlamaAdapter
from . import model as _model  # noqa: F401  registers LabConfig / LabForCausalLM with the Auto classes


class LabAdapter(LlamaAdapter):
    """model.model.layers[i].{self_attn, mlp}, as Llama's. Only the plain, MoDA variants keep an additive residual;
    AttnRes/mHC reweight sources and Engram adds memory outside the attention/MLP blocks, so the
    direct attribution is not exact for them and is labelled as such."""

    additive_residual = False
