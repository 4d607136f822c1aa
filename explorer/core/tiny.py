"""Tiny random-initialised models and their tokenizers, built in milliseconds with no download.

The configs live in the catalogue; the tokenizers are trained here on a small built-in corpus
so that tests exercise real tokenization paths (byte-level BPE with chat template, WordPiece).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedTokenizerFast

from .catalogue import CatalogueEntry

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Once upon a time there was a small language model that wanted to see its own attention.",
    "def add(a, b):\n\treturn a + b\n\nprint(add(2, 3))",
    "Tokens, embeddings, attention heads and the KV cache grow while the model generates.",
    "Émilie a mangé une crème brûlée à Genève. 東京は日本の首都です。 مرحبا بالعالم",
    "Emoji: 👩‍👩‍👧 🇫🇷 😀 and combining marks: e\u0301 a\u0300 n\u0303.",
    "1234567890 !@#$%^&*()_+-=[]{};':\",./<>? the quick brown fox jumps over the lazy dog",
] * 4

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@cache
def _byte_level_tokenizer(chat: bool) -> Tokenizer:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if chat else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok


@cache
def _wordpiece_tokenizer() -> Tokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tok


def build_tokenizer(model_type: str) -> PreTrainedTokenizerFast:
    """A fresh HF tokenizer object for a tiny model family."""
    if model_type == "bert":
        return PreTrainedTokenizerFast(
            tokenizer_object=_wordpiece_tokenizer(),
            unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        )
    chat = model_type == "llama"
    tok = PreTrainedTokenizerFast(tokenizer_object=_byte_level_tokenizer(chat), eos_token="<|endoftext|>")
    if chat:
        tok.eos_token = "<|im_end|>"
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny(entry: CatalogueEntry) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """Instantiate a tiny model from its catalogue config with seeded random weights."""
    tokenizer = build_tokenizer(entry.config["model_type"])
    cfg: dict[str, Any] = dict(entry.config)
    model_type = cfg.pop("model_type")
    vocab = len(tokenizer)
    if model_type == "llama":
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta", 10000.0)}
        cfg.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=tokenizer.eos_token_id)
    elif model_type == "gpt2":
        cfg.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    config = AutoConfig.for_model(model_type, vocab_size=vocab, **cfg)
    torch.manual_seed(entry.seed)
    factory = AutoModel if entry.kind == "encoder" else AutoModelForCausalLM
    model = factory.from_config(config, dtype=torch.float32)
    _spread_weights(model, entry.seed)
    return model.eval(), tokenizer


def _spread_weights(model: torch.nn.Module, seed: int) -> None:
    """Random init with std 0.02 gives near-uniform attention; a larger spread gives tests real patterns."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.25)
