"""Tokenizer comparison: boundaries, agreement and counts on hand-checked examples."""

from __future__ import annotations

import pytest

from explorer.core.analysis.tokenizer_compare import (
    boundaries,
    boundary_agreement,
    compare,
    compare_tokenizations,
    load_tokenizer,
    readable_vocab,
    tokenize_text,
)
from explorer.core.events import Token, TokenKind


def _tokens(text: str, cuts: list[int]) -> list[Token]:
    edges = [0, *cuts, len(text)]
    return [Token(id=i, text=text[a:b], start=a, end=b, kind=TokenKind.PROMPT)
            for i, (a, b) in enumerate(zip(edges, edges[1:], strict=False))]


def test_hand_checked_agreement_and_counts():
    text = "unbelievable cats"  # 17 characters
    a = _tokens(text, [2, 6, 12])  # un|beli|evable| cats
    b = _tokens(text, [2, 12, 13])  # un|believable| |cats
    # an inserted special token (no characters) counts as a token but adds no boundary
    b = [Token(id=99, text="", start=0, end=0, kind=TokenKind.SPECIAL, is_special=True), *b]
    assert boundaries(a) == {2, 6, 12}
    assert boundaries(b) == {2, 12, 13}
    result = compare(text, a, b, "A", "B")
    assert result.shared_boundaries == 2
    assert result.agreement == pytest.approx(2 / 4)  # {2, 12} of {2, 6, 12, 13}
    assert (result.a.n_tokens, result.b.n_tokens) == (4, 5)
    assert result.a.chars_per_token == pytest.approx(17 / 4)
    assert result.b.chars_per_token == pytest.approx(17 / 5)


def test_agreement_edges():
    assert boundary_agreement(set(), set()) == 1.0
    assert boundary_agreement({1, 2}, {1, 2}) == 1.0
    assert boundary_agreement({1}, {2}) == 0.0


def test_same_tokenizer_agrees_fully_and_differs_from_wordpiece():
    text = "The capital of France is Paris. 東京は日本の首都です。"
    llama = load_tokenizer("tiny-llama")
    ours = tokenize_text(llama, text)
    same = compare_tokenizations(text, ours, llama)
    assert same.agreement == 1.0 and same.a.n_tokens == same.b.n_tokens
    other = compare_tokenizations(text, ours, load_tokenizer("tiny-bert"))
    assert other.b.n_tokens == len(tokenize_text(load_tokenizer("tiny-bert"), text))
    assert 0.0 < other.agreement < 1.0
    # every tokenization's spans tile the text
    for toks in (ours, list(other.b.tokens)):
        spans = [(t.start, t.end) for t in toks if t.end > t.start]
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_readable_vocab_decodes_bytes():
    tok = load_tokenizer("tiny-llama")
    vocab = readable_vocab(tok)
    assert len(vocab) == len(tok)
    ids = tok(" capital", add_special_tokens=False)["input_ids"]
    assert "".join(vocab[i] for i in ids) == " capital"  # the byte-level 'Ġ' reads as a space


def test_load_tokenizer_rejects_unknown(tmp_path):
    from explorer.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError):
        load_tokenizer(str(tmp_path / "missing"))
