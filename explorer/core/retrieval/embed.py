"""Sentence embeddings from the MiniLM encoder in the catalogue: mean pooling, then L2 normalisation.

This is all-MiniLM-L6-v2's own recipe as its files declare it for sentence-transformers (modules.json:
Transformer -> Pooling -> Normalize; 1_Pooling/config.json: `pooling_mode_mean_tokens`;
sentence_bert_config.json: `max_seq_length` 256): the token states of the last layer, averaged over the
real (unpadded) tokens, scaled to length 1, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import torch

from ..errors import Cancelled
from ..models import LoadedModel, load_model

EMBEDDER = "minilm-l6"  # catalogue name of all-MiniLM-L6-v2
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length: longer input is cut (chunks are planned to fit)
BATCH = 32


class Embedder:
    """Embeds texts with an encoder model (used from one thread at a time: the engine's, or the caller's)."""

    def __init__(self, loaded: LoadedModel, max_tokens: int = MAX_TOKENS):
        if loaded.info.is_causal:
            raise ValueError(f"{loaded.info.name} is not an encoder: embeddings need one (e.g. {EMBEDDER})")
        self.loaded = loaded
        self.name = loaded.info.name
        self.dim = loaded.info.hidden_size
        self.max_tokens = min(max_tokens, loaded.info.context_length)

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Word pieces of each text, without [CLS]/[SEP]."""
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def embed(self, texts: list[str], cancel: threading.Event | None = None,
              on_batch=None) -> np.ndarray:
        """[len(texts), dim] float32, each row of length 1. `on_batch(done)` after each batch."""
        out = np.empty((len(texts), self.dim), np.float32)
        # longest first keeps padding small within a batch
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for lo in range(0, len(texts), BATCH):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Indexing cancelled.")
                idx = order[lo: lo + BATCH]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.max_tokens, return_tensors="pt")
                states = self.loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           token_type_ids=batch.get("token_type_ids")).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # [b, seq, 1]
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [b, dim] mean over real tokens
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)  # [b, dim] unit length
                out[idx] = pooled.float().numpy()
                if on_batch is not None:
                    on_batch(min(lo + BATCH, len(texts)))
        return out


@lru_cache(maxsize=2)
def embedder(name: str = EMBEDDER) -> Embedder:
    """The embedder of a catalogue encoder, loaded once per process."""
    return Embedder(load_model(name))
