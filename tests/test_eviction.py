"""Eviction policies keep exactly what their definitions say; masking is a real re-computation."""

from __future__ import annotations

import numpy as np
import pytest

from explorer import capture
from explorer.core.analysis import eviction as ev


def _pattern(n: int, heavy: list[int], kv: int = 1) -> np.ndarray:
    """[kv, n, n] causal attention where every query gives most of its weight to the `heavy` keys it can see."""
    attn = np.zeros((kv, n, n))
    for q in range(n):
        attn[:, q, : q + 1] = 0.01
        for k in heavy:
            if k <= q:
                attn[:, q, k] = 1.0 + k / 100  # distinct scores: later heavy keys slightly heavier
        attn[:, q] /= attn[:, q].sum()
    return attn


def test_streaming_keeps_sinks_and_recent_window():
    keep = ev.streaming_keep(20, np.array([5, 19]), sinks=2, window=3)
    assert np.flatnonzero(keep[0]).tolist() == [0, 1, 3, 4, 5]
    assert np.flatnonzero(keep[1]).tolist() == [0, 1, 17, 18, 19]


def test_h2o_keeps_heavy_hitters_and_recent_window():
    attn = _pattern(20, heavy=[3, 7, 11], kv=2)
    keep = ev.h2o_keep(attn, np.array([4, 19]), budget=6, window=3)
    assert keep.shape == (2, 2, 20)
    assert np.flatnonzero(keep[0, 0]).tolist() == [0, 1, 2, 3, 4]  # 5 positions fit the budget
    # row 19: recent 17..19, then the 3 keys with most accumulated attention: 3, 7, 11
    assert np.flatnonzero(keep[1, 1]).tolist() == [3, 7, 11, 17, 18, 19]
    keep2 = ev.h2o_keep(attn, np.array([19]), budget=5, window=3)  # room for 2 heavy hitters
    # accumulated over queries 0..18: key 3 is seen by 16 queries, 7 by 12, 11 by 8
    assert np.flatnonzero(keep2[0, 0]).tolist() == [3, 7, 17, 18, 19]


def test_snapkv_keeps_pooled_top_prompt_keys_window_and_generated():
    n_prompt, n = 16, 20
    attn = np.full((1, n, n), 1e-3)
    attn[0, 12:16, 5] = 1.0  # the observation window (last 4 prompt queries) looks at key 5
    attn[0, 12:16, 9] = 0.5  # ... and key 9
    attn[0, :11, 2] = 5.0  # earlier queries' attention does not count
    keep = ev.snapkv_keep(attn, n_prompt, np.array([16, 18]), budget=7, window=4, pool=1)
    # window 12..15, top 3 prefix keys by window attention: 5, 9, then the first of the ties (0)
    assert np.flatnonzero(keep[0, 0]).tolist() == [0, 5, 9, 12, 13, 14, 15, 16]
    assert np.flatnonzero(keep[0, 1]).tolist() == [0, 5, 9, 12, 13, 14, 15, 16, 17, 18]
    pooled = ev.snapkv_keep(attn, n_prompt, np.array([16]), budget=7, window=4, pool=3)
    kept = np.flatnonzero(pooled[0, 0, :12]).tolist()  # pooling spreads 5's score to 4 and 6
    assert kept == [4, 5, 6]
    assert ev.avg_pool(np.array([[0.0, 3.0, 0.0]]), 3).tolist() == [[1.0, 1.0, 1.0]]


@pytest.fixture(scope="module")
def tiny_run(tiny_llama):
    return capture("the cat sat on the mat and then the dog sat on the log", tiny_llama, max_new_tokens=10)


def test_keep_mask_shapes_and_budget(tiny_run):
    rows = ev.decode_rows(tiny_run, 32)
    assert rows.tolist() == list(range(tiny_run.n_prompt, tiny_run.n_tokens))
    for kind in ev.POLICIES:
        keep = ev.keep_mask(tiny_run, ev.EvictionPolicy(kind, budget=8, sinks=2, window=4), rows)
        assert keep.shape == (4, 2, len(rows), rows[-1] + 1)
        if kind != "snapkv":  # SnapKV keeps every generated token on top of its prompt budget
            assert keep.sum(-1).max() == 8
        assert keep[:, :, np.arange(len(rows)), rows].all()  # the query's own position is always kept


def test_masking_nothing_gives_zero_kl_and_reproduces_the_run(tiny_llama, tiny_run):
    rows = ev.decode_rows(tiny_run, 32)
    full = np.ones((4, 2, len(rows), rows[-1] + 1), bool)
    effect = ev.measure_effects(tiny_llama, tiny_run, {"none": full}, rows)["none"]
    assert np.abs(effect.kl).max() < 1e-6
    assert not effect.top1_changed.any()
    # the re-computation is the run itself: greedy decoding chose each next token as the top-1
    assert effect.top1_full[:-1].tolist() == tiny_run.token_ids[rows[1:]].tolist()
    assert tiny_llama.model.config._attn_implementation != ev.EVICT_NAME  # restored


def test_masking_all_but_sinks_changes_the_distribution(tiny_llama, tiny_run):
    rows = ev.decode_rows(tiny_run, 32)
    sinks_only = ev.keep_mask(tiny_run, ev.EvictionPolicy("streaming", budget=3, sinks=2), rows)
    effect = ev.measure_effects(tiny_llama, tiny_run, {"sinks": sinks_only}, rows)["sinks"]
    assert effect.kl.min() > 1e-3
    assert effect.mean_kl > 0.01
    assert 0 < effect.kept_fraction < 0.3
