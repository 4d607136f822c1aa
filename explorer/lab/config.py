"""The lab model's configuration: a transformers config class registered locally (no remote code).

One decoder family (RMSNorm, RoPE, SwiGLU, optional GQA) whose depth connection is chosen by
`depth` (a key of `explorer.lab.connections.CONNECTIONS`, or "moda"/"engram", which keep the
plain residual and change the attention / add a memory module).
"""

from __future__ import annotations

from transformers import PretrainedConfig

ARCHS = ("plain", "attnres", "attnres-block", "moda", "mhc", "engram")
MODEL_TYPE = "explorer_lab"
# A config.json is untrusted input: sizes are checked before anything is allocated.
LIMITS = {"vocab_size": 1_000_000, "hidden_size": 8192, "num_hidden_layers": 256, "num_attention_heads": 256,
          "intermediate_size": 65_536, "max_position_embeddings": 1_048_576, "attnres_block_size": 512,
          "mhc_streams": 16, "mhc_sinkhorn_iters": 1000, "engram_hash_heads": 16, "engram_table_size": 50_000_000,
          "engram_dim": 4096}


class LabConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(
        self,
        depth: str = "plain",
        vocab_size: int = 256,
        hidden_size: int = 128,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        intermediate_size: int | None = None,
        max_position_embeddings: int = 1024,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        attnres_block_size: int = 4,  # sublayers per block (Block AttnRes); 12 sublayers -> 3 blocks
        mhc_streams: int = 4,
        mhc_sinkhorn_iters: int = 20,
        engram_layers: tuple[int, ...] | list[int] = (1,),
        engram_orders: tuple[int, ...] | list[int] = (2, 3),
        engram_hash_heads: int = 2,
        engram_table_size: int = 4099,  # a prime, per (order, head) table
        engram_dim: int = 32,  # per-table embedding width
        **kwargs,
    ):
        if depth not in ARCHS:
            raise ValueError(f"unknown depth connection '{depth}' (choose from {', '.join(ARCHS)})")
        sizes = {"vocab_size": vocab_size, "hidden_size": hidden_size, "num_hidden_layers": num_hidden_layers,
                 "num_attention_heads": num_attention_heads, "intermediate_size": intermediate_size or 1,
                 "max_position_embeddings": max_position_embeddings, "attnres_block_size": attnres_block_size,
                 "mhc_streams": mhc_streams, "mhc_sinkhorn_iters": mhc_sinkhorn_iters,
                 "engram_hash_heads": engram_hash_heads, "engram_table_size": engram_table_size,
                 "engram_dim": engram_dim}
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= LIMITS[name]:
                raise ValueError(f"{name} must be an integer from 1 to {LIMITS[name]:,} (got {value!r})")
        kv = num_key_value_heads or num_attention_heads
        if hidden_size % num_attention_heads or not isinstance(kv, int) or kv < 1 or num_attention_heads % kv:
            raise ValueError("hidden_size must divide into the heads, and the heads into the key/value heads")
        if not all(isinstance(n, int) and 1 <= n <= 8 for n in engram_orders) or \
                not all(isinstance(i, int) and 0 <= i < num_hidden_layers for i in engram_layers):
            raise ValueError("engram_orders must be n-gram sizes 1-8 and engram_layers existing layer indices")
        self.depth = depth
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        # SwiGLU at 8/3 of the width (LLaMA's choice), rounded to a multiple of 16
        self.intermediate_size = intermediate_size or 16 * ((8 * hidden_size // 3 + 15) // 16)
        self.max_position_embeddings = max_position_embeddings
        self.rope_parameters = {"rope_type": "default", "rope_theta": float(rope_theta)}
        self.rms_norm_eps = rms_norm_eps
        self.attnres_block_size = attnres_block_size
        self.mhc_streams = mhc_streams
        self.mhc_sinkhorn_iters = mhc_sinkhorn_iters
        self.engram_layers = list(engram_layers)
        self.engram_orders = list(engram_orders)
        self.engram_hash_heads = engram_hash_heads
        self.engram_table_size = engram_table_size
        self.engram_dim = engram_dim
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @property
    def n_sublayers(self) -> int:
        """Attention and MLP of every layer, in order: sublayer 2l is layer l's attention, 2l+1 its MLP."""
        return 2 * self.num_hidden_layers

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters["rope_theta"])
