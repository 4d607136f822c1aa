"""Prompt A/B alignment: prefix, inserted words, substitutions, and the matched-position comparisons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numeric import approx, assert_close

from explorer.core.analysis.align import align_runs, align_tokens, attention_diff, lens_diff, next_token_diff
from explorer.core.api import run_request
from explorer.core.events import RunRequest
from explorer.core.runner import Session


def test_one_inserted_word_is_aligned():
    a = ["the", "cat", "sat", "on", "the", "mat"]
    b = ["the", "black", "cat", "sat", "on", "the", "mat"]
    al = align_tokens(a, b)
    assert al.prefix == 1
    assert al.pairs == ((0, 0), (None, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6))
    assert al.b_for(1) == 2 and al.a_for(1) is None
    back = align_tokens(b, a)  # a deletion the other way round
    assert back.pairs == tuple((j, i) for i, j in al.pairs)


def test_substitution_identity_and_empty():
    al = align_tokens([1, 2, 3, 4], [1, 2, 9, 4])
    assert al.pairs == ((0, 0), (1, 1), (2, 2), (3, 3)) and al.prefix == 2
    same = align_tokens([5, 6, 7], [5, 6, 7])
    assert same.prefix == 3 and same.matched == [(0, 0), (1, 1), (2, 2)]
    assert align_tokens([], [1]).pairs == ((None, 0),)


@pytest.mark.parametrize("seed", range(5))
def test_random_edits_cover_both_sequences_in_order(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 30).tolist()
    b = list(a)
    for _ in range(4):
        b.insert(int(rng.integers(0, len(b))), 99)
    al = align_tokens(a, b)
    assert [i for i, _ in al.pairs if i is not None] == list(range(len(a)))
    assert [j for _, j in al.pairs if j is not None] == list(range(len(b)))
    assert sum(1 for i, j in al.pairs if i is None or j is None or a[i] != b[j]) == 4  # four insertions only


def test_runs_with_an_inserted_word(tiny_llama):
    session = Session(tiny_llama, store_dtype=torch.float32)
    a = run_request(session, RunRequest("The capital of France is Paris."))
    b = run_request(session, RunRequest("The capital of beautiful France is Paris."))
    al = align_runs(a, b)
    inserted = [j for i, j in al.pairs if i is None]
    assert "".join(b.tokens[j].text for j in inserted).strip() == "beautiful"
    assert all(a.tokens[i].id == b.tokens[j].id for i, j in al.matched)
    d = next_token_diff(a, a.n_tokens - 1, b, b.n_tokens - 1)
    assert d["kl_ab"] >= 0 and d["kl_ba"] >= 0
    same = next_token_diff(a, a.n_tokens - 1, a, a.n_tokens - 1)
    assert same["kl_ab"] == approx(0, 1e-6)
    lens = lens_diff(a, 0, b, 0)  # identical prefix position: identical lens
    assert_close(lens["kl"], 0, 1e-5)
    assert lens_diff(a, a.n_tokens - 1, b, b.n_tokens - 1)["kl"].max() > 0
    diff, rows = attention_diff(a, b, al, 1, 0)
    assert diff.shape == (len(al.matched),) * 2
    assert_close(diff[: al.prefix, : al.prefix], 0, 1e-5)  # causal: the prefix is the same
