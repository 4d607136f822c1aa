"""Attention analyses: maps equal Run.attention, transforms, pooling, rollout, head statistics."""

from __future__ import annotations

import numpy as np
import pytest
from numeric import assert_close

from explorer.core.analysis import attention as att
from explorer.core.api import capture


@pytest.fixture(scope="module")
def llama_run(tiny_llama):
    return capture("The capital of France is Paris. The capital of Italy is", tiny_llama, max_new_tokens=3)


def test_rows_equal_run_attention(llama_run):
    run = llama_run
    q, k = run.array("queries"), run.array("keys")
    for layer, head in [(0, 0), (1, 3), (3, 2)]:
        fn = att.head_row_fn(q, k, layer, head, run.info.group_size, run.layer_scaling(layer), True)
        full = fn(np.arange(run.n_tokens))
        assert_close(full, run.attention(layer, head), 1e-5)
        picked = np.array([0, 5, run.n_tokens - 1])
        assert_close(fn(picked), run.attention(layer, head)[picked], 1e-5)
        assert np.allclose(np.triu(full, 1), 0)


def test_encoder_rows_are_bidirectional(tiny_models):
    run = capture("attention heads and the cache", tiny_models["tiny-bert"])
    fn = att.head_row_fn(run.array("queries"), run.array("keys"), 0, 1, run.info.group_size,
                         run.layer_scaling(0), causal=False)
    full = fn(np.arange(run.n_tokens))
    assert_close(full, run.attention(0, 1), 1e-5)
    assert np.triu(full, 1).sum() > 0.1


def test_hide_sink_renormalises():
    rng = np.random.default_rng(0)
    a = att.renormalize(np.tril(rng.random((6, 6))).astype(np.float32))
    out = att.transform_rows(a, att.MapOptions(hide_sink=True))
    assert np.all(out[:, 0] == 0)
    assert_close(out[1:].sum(axis=1), 1, 1e-6)
    assert out[0].sum() == 0  # the first query sees only the sink: nothing left
    assert_close(out[3, 1:4], a[3, 1:4] / a[3, 1:4].sum(), 1e-6)


def test_value_weighting_and_keep():
    a = np.full((2, 4), 0.25, np.float32)
    norms = np.array([1.0, 3.0, 0.0, 4.0], np.float32)
    out = att.transform_rows(a, att.MapOptions(value_weighted=True), value_norms=norms)
    np.testing.assert_allclose(out[0], norms / norms.sum())
    kept = att.transform_rows(a, att.MapOptions(), keep=np.array([1, 2]))
    np.testing.assert_allclose(kept, 0.5)


def test_max_pool_and_pooled_map():
    rng = np.random.default_rng(1)
    a = rng.random((10, 10)).astype(np.float32)
    p = att.max_pool(a, 4)
    assert p.shape == (3, 3)
    assert p[0, 0] == a[:4, :4].max() and p[2, 2] == a[8:, 8:].max()
    chunked = att.pooled_map(lambda rows: a[rows], 10, 4, chunk=4)
    np.testing.assert_array_equal(chunked, p)
    low = np.tril(a)
    np.testing.assert_array_equal(att.pooled_map(lambda rows: low[rows], 10, 4, chunk=4, causal=True),
                                  att.max_pool(low, 4))
    assert att.max_pool(a, 3)[1, 2] == a[3:6, 6:9].max() and att.max_pool(a, 3)[3, 3] == a[9, 9]
    assert att.pool_factor(4096, 1024) == 4 and att.pool_factor(1000, 1024) == 1


def test_rollout_definition_on_three_layers():
    rng = np.random.default_rng(2)
    maps = [att.renormalize(np.tril(rng.random((2, 4, 4)) + 0.01)) for _ in range(3)]  # [heads, N, N] each
    eye = np.eye(4)

    def adj(m):
        x = 0.5 * m.mean(axis=0) + 0.5 * eye
        return x / x.sum(axis=1, keepdims=True)

    expected = adj(maps[2]) @ adj(maps[1]) @ adj(maps[0])
    assert_close(att.rollout(maps), expected, 1e-6)
    assert_close(att.rollout(maps).sum(axis=1), 1, 1e-5)
    assert not np.allclose(att.rollout(maps), att.rollout(maps[::-1]))  # order matters


def _synthetic_layer(tokens: np.ndarray):
    """Four hand-wired heads over one-hot position/token codes: previous-token, sink, uniform, induction."""
    n = tokens.size
    vocab = int(tokens.max()) + 1
    d = n + vocab
    big = 50.0
    q = np.zeros((1, 4, n, d), np.float32)
    k = np.zeros((1, 4, n, d), np.float32)
    pos = np.eye(n, dtype=np.float32)
    q[0, 0, 1:, :n] = big * pos[:-1]  # query i looks for position i - 1
    k[0, 0, :, :n] = pos
    q[0, 1, :, 0] = big  # everything looks at position 0
    k[0, 1, :, :n] = pos
    # head 2: zero queries -> uniform over visible keys
    onehot = np.eye(vocab, dtype=np.float32)[tokens]  # [n, vocab]
    q[0, 3, :, n:] = big * onehot  # looks for keys whose PREVIOUS token equals the current token
    k[0, 3, 1:, n:] = onehot[:-1]
    return q, k


def test_head_statistics_label_hand_wired_heads():
    rng = np.random.default_rng(3)
    first = rng.permutation(40)[:20]
    tokens = np.concatenate([first, first])  # a repeated random sequence
    q, k = _synthetic_layer(tokens)
    summary = att.layer_summary(q, k, 0, group_size=1, scale=1.0, causal=True, token_ids=tokens)
    th = att.Thresholds()
    labels = [att.label_head(s, th) for s in summary.scores]
    assert labels[0] == "previous-token"
    assert labels[1] == "sink"
    assert labels[2] == "broad"
    assert labels[3] == "induction"
    stats = dict(zip(att.STAT_NAMES, summary.scores[0], strict=True))
    assert stats["previous"] > 0.9 and stats["sink"] < 0.1
    assert summary.scores[3, att.STAT_NAMES.index("induction")] > 0.9
    assert summary.scores[0, att.STAT_NAMES.index("induction")] < 0.2
    assert summary.thumbs.shape == (4, 24, 24) and summary.thumbs.max() <= 1.0


def test_sampled_rows_give_similar_statistics():
    tokens = np.tile(np.arange(30), 3)
    q, k = _synthetic_layer(tokens)
    full = att.layer_summary(q, k, 0, 1, 1.0, True, tokens, max_rows=1000)
    sampled = att.layer_summary(q, k, 0, 1, 1.0, True, tokens, max_rows=20)
    assert_close(sampled.scores[:2, 1:3], full.scores[:2, 1:3], 0.1)


def test_induction_prompt_repeats():
    text = att.induction_prompt(10, 2, seed=4)
    words = text.split()
    assert len(words) == 20 and words[:10] == words[10:]
    assert att.induction_prompt(10, 2, seed=5) != text
