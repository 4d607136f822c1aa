"""Tokenizer comparison and readable vocabularies (pure Python: no Qt, no model weights).

`load_tokenizer` loads only a tokenizer (a built-in by catalogue name, or a local folder);
`compare_tokenizations` tokenizes one text with a second tokenizer and measures how many token
boundaries the two tokenizations share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..events import Token
from ..tokens import tokenize
from ..vocab import readable_vocab  # noqa: F401 - its home is core/vocab.py (the Session uses it)


def load_tokenizer(name_or_path: str | os.PathLike) -> Any:
    """Load only the tokenizer of a built-in model or of a local folder (never the weights).

    Built-ins: the tiny models build theirs in code; the default model uses its converted cache
    folder when present (else the tokenizer stored in the GGUF file); folder models read the
    tokenizer files next to the weights.
    """
    from .. import catalogue
    from ..errors import ModelLoadError
    from ..models import _load_tokenizer, _package_dir, cached_tokenizer_dir

    spec = str(name_or_path)
    entry = catalogue.get(spec)
    if entry is None:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"'{spec}' is neither a built-in model nor a tokenizer folder.")
        return _load_tokenizer(path)
    if entry.is_tiny:
        from ..tiny import build_tokenizer

        return build_tokenizer(entry.config["model_type"])
    if entry.format == "gguf":
        cached = cached_tokenizer_dir(entry)  # the converted copy, its tokenizer files checked
        if cached is not None:
            return _load_tokenizer(cached)
        root = _package_dir(entry)
        return _load_tokenizer(root, gguf_file=entry.file)  # reads the vocabulary, not the tensors
    return _load_tokenizer((_package_dir(entry) / entry.file).parent)


def boundaries(tokens: list[Token]) -> set[int]:
    """Character offsets where one token's text ends and the next one's begins (text ends excluded)."""
    spans = [(t.start, t.end) for t in tokens if t.end > t.start]
    if not spans:
        return set()
    first, last = spans[0][0], spans[-1][1]
    return {end for _start, end in spans if first < end < last}


def boundary_agreement(a: set[int], b: set[int]) -> float:
    """Share of boundaries in common: |A & B| / |A | B| (1.0 when both have none)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


@dataclass(frozen=True)
class TokenizationStats:
    name: str
    tokens: tuple[Token, ...]
    n_tokens: int  # all tokens, inserted specials included
    n_chars: int

    @property
    def chars_per_token(self) -> float:
        return self.n_chars / self.n_tokens if self.n_tokens else 0.0


@dataclass(frozen=True)
class Comparison:
    a: TokenizationStats
    b: TokenizationStats
    shared_boundaries: int
    agreement: float  # share of boundaries in common (see boundary_agreement)


def stats_for(name: str, text: str, tokens: list[Token]) -> TokenizationStats:
    return TokenizationStats(name=name, tokens=tuple(tokens), n_tokens=len(tokens), n_chars=len(text))


def tokenize_text(tokenizer: Any, text: str) -> list[Token]:
    """Tokenize `text` as plain text with exact spans (the comparison side)."""
    return tokenize(tokenizer, text, chat=False).tokens


def compare_tokenizations(text: str, tokens_a: list[Token], tokenizer_b: Any, name_a: str = "A",
                          name_b: str = "B") -> Comparison:
    """Tokenize `text` with `tokenizer_b` and compare with tokenization A (the run's tokens)."""
    tokens_b = tokenize_text(tokenizer_b, text)
    return compare(text, tokens_a, tokens_b, name_a, name_b)


def compare(text: str, tokens_a: list[Token], tokens_b: list[Token], name_a: str = "A",
            name_b: str = "B") -> Comparison:
    ba, bb = boundaries(tokens_a), boundaries(tokens_b)
    return Comparison(a=stats_for(name_a, text, tokens_a), b=stats_for(name_b, text, tokens_b),
                      shared_boundaries=len(ba & bb), agreement=boundary_agreement(ba, bb))
