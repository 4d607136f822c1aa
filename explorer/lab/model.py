"""The lab decoder as a transformers PreTrainedModel (registered locally under model_type
"explorer_lab", never through remote code), so it loads, caches and is captured like every other model.

    ids -> embed -> [engram] -> per layer: read, attn, write, read, MLP, write -> final -> norm -> lm_head

The depth connection (core of each variant) lives in `connections.CONNECTIONS`; MoDA lives in the
attention, Engram in `layers.Engram`. Layer l's module returns (readable state, connection state,
MoDA depth keys/values): the capture engine's layer hooks read the first element as `resid.{l+1}`;
the last layer returns the connection's final state, which the final norm and lm_head read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from .config import MODEL_TYPE, LabConfig
from .connections import CONNECTIONS
from .layers import Attention, Engram, RMSNorm, SwiGLU


class LabBlock(nn.Module):
    def __init__(self, config: LabConfig, idx: int):
        super().__init__()
        self.idx = idx
        self.is_last = idx == config.num_hidden_layers - 1
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.moda = config.depth == "moda"
        self.mlp = SwiGLU(config, depth_kv=self.moda)
        self.engram = Engram(config) if config.depth == "engram" and idx in config.engram_layers else None
        if self.engram is not None:
            self.engram.layer_idx = idx

    def forward(self, hidden_states, *, state, conn, positions, cache=None, ids_ctx=None, depth=None,
                drop_outputs=frozenset()):
        """hidden_states [B, T, D] (the readable state, for capture hooks); `state` the connection's."""
        k = 2 * self.idx
        if self.engram is not None:  # Engram: memory added to the residual before the layer (plain residual)
            state = state + self.engram(state, ids_ctx)  # [B, T, D]
        depth_kv = torch.stack(depth, dim=2) if self.moda and depth else None  # [B, T, S, 2, KV, d]
        y = self.self_attn(self.input_layernorm(conn.read(state, k)), positions, cache, depth_kv)  # [B, T, D]
        state = conn.write(state, k, y * 0 if k in drop_outputs else y)
        if self.moda:
            depth = [*depth, self.self_attn.depth_out]  # [B, T, 2, KV, d] each
        y = self.mlp(self.post_attention_layernorm(conn.read(state, k + 1)))  # [B, T, D]
        state = conn.write(state, k + 1, y * 0 if k + 1 in drop_outputs else y)
        if self.moda:
            b, t, _ = y.shape
            kv = self.mlp.depth_out.view(b, t, 2, self.self_attn.n_kv, self.self_attn.head_dim)
            depth = [*depth, kv]  # [B, T, 2, KV, d]
        out = conn.final(state) if self.is_last else conn.readable(state)  # [B, T, D]
        return out, state, depth


class LabPreTrainedModel(PreTrainedModel):
    config_class = LabConfig
    base_model_prefix = "model"
    _supports_attention_backend = True
    _supports_sdpa = True
    _no_split_modules = ["LabBlock"]

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)


class LabModel(LabPreTrainedModel):
    def __init__(self, config: LabConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.connection = CONNECTIONS[config.depth](config)
        self.layers = nn.ModuleList(LabBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.drop_outputs: frozenset[int] = frozenset()  # ablation: sublayer outputs switched off
        self.post_init()

    def forward(self, input_ids, cache=None):
        b, t = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        positions = torch.arange(past, past + t, device=input_ids.device)  # [T]
        ids_ctx = self._engram_context(input_ids, cache, past)
        emb = self.embed_tokens(input_ids)  # [B, T, D]
        state, hidden, depth = self.connection.start(emb), emb, []
        for layer in self.layers:
            hidden, state, depth = layer(hidden_states=hidden, state=state, conn=self.connection,
                                         positions=positions, cache=cache, ids_ctx=ids_ctx, depth=depth,
                                         drop_outputs=self.drop_outputs)
        return hidden  # [B, T, D] the final state before the norm

    def _engram_context(self, input_ids, cache, past):
        """Token ids with the n-1 previous ids in front (from the cache's record of earlier ids)."""
        if self.config.depth != "engram":
            return None
        need = max(self.config.engram_orders) - 1
        history = getattr(cache, "_lab_ids", None) if cache is not None else None
        history = history[:, :past] if history is not None else input_ids[:, :0]  # [B, P]
        if cache is not None:
            cache._lab_ids = torch.cat([history, input_ids], dim=1)  # [B, P + T]
        pad = torch.full((input_ids.shape[0], need), self.config.vocab_size, dtype=torch.long,
                         device=input_ids.device)  # one past the vocabulary: "before the start"
        return torch.cat([pad, history, input_ids], dim=1)[:, -(input_ids.shape[1] + need):]  # [B, T + n-1]


class LabForCausalLM(LabPreTrainedModel, GenerationMixin):
    def __init__(self, config: LabConfig):
        super().__init__(config)
        self.model = LabModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids=None, cache=None, use_cache=None, labels=None,
                logits_to_keep: int = 0, attention_mask=None, position_ids=None, **kwargs):
        cache = cache if cache is not None else kwargs.get("past_key_values")
        hidden = self.model(input_ids, cache=cache if use_cache is not False else None)  # [B, T, D]
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(self.model.norm(hidden[:, keep]))  # [B, T', V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    def depth_routing(self, ids) -> dict:
        """The learned routing over a token sequence (explorer.lab.routing.record): the runner attaches it
        to a finished Run as `run.routing`."""
        from .routing import record

        return record(self, torch.as_tensor(list(ids), dtype=torch.long))

    def set_recording(self, record: dict | None) -> None:
        """Start (a dict) or stop (None) recording the learned routing of the next forward passes."""
        self.model.connection.record = record
        for layer in self.model.layers:
            layer.self_attn.record = record
            if layer.engram is not None:
                layer.engram.record = record


AutoConfig.register(MODEL_TYPE, LabConfig, exist_ok=True)
AutoModelForCausalLM.register(LabConfig, LabForCausalLM, exist_ok=True)
