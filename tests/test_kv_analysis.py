"""KV-cache arithmetic: the formula equals the bytes the runner measured; the what-if catalogue's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from explorer import capture
from explorer.core.analysis import kv


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_formula_equals_measured_cache_bytes(tiny_models, name):
    loaded = tiny_models[name]
    run = capture("the cat sat on the mat", loaded, max_new_tokens=5)
    cfg = kv.config_from_info(run.info)
    assert cfg.variant == ("GQA" if name == "tiny-llama" else "MHA")
    bpe = kv.DTYPE_BYTES[kv.dtype_key(run.info.dtype)]  # float32 cache on CPU
    assert bpe == 4
    for step in range(len(run.steps)):
        tokens = run.steps[step].start + run.steps[step].n_new
        measured = int(run.kv_bytes_per_layer(step).sum())
        assert kv.formula(cfg, tokens, bpe).total == measured
    assert kv.formula(cfg, run.n_tokens, bpe).text().endswith(kv.format_bytes(measured))


def test_variants_and_savings():
    cfg = kv.catalogue_entry("llama-3-8b")
    f = kv.formula(cfg, 1000, 2)
    assert f.mha == 4 * f.total  # 32 query heads vs 8 KV heads
    assert f.mqa == f.total / 8
    assert f.saved_fraction == pytest.approx(0.75)
    assert "75%" in f.savings_text()
    assert {v.kv_heads for v in kv.variants(cfg).values()} == {32, 8, 1}


@pytest.mark.parametrize(("name", "tokens", "dtype", "batch", "expected"), [
    # hand-computed: 2 x layers x kv_heads x head_dim x tokens x bytes x batch
    ("llama-3-8b", 8192, "bf16", 1, 2 * 32 * 8 * 128 * 8192 * 2),  # 1 GiB
    ("llama-3-70b", 4096, "fp8", 4, 2 * 80 * 8 * 128 * 4096 * 1 * 4),
    ("gpt2-small", 1024, "fp32", 2, 2 * 12 * 12 * 64 * 1024 * 4 * 2),
    ("qwen2_5-7b", 32768, "int4", 1, 2 * 28 * 4 * 128 * 32768 // 2),
])
def test_calculator_matches_hand_computed(name, tokens, dtype, batch, expected):
    cfg = kv.catalogue_entry(name)
    assert cfg.bytes(tokens, dtype, batch) == expected
    curve = cfg.bytes(np.array([tokens, 2 * tokens]), dtype, batch)
    assert curve.tolist() == [expected, 2 * expected]
    assert kv.format_bytes(1 << 30) == "1.00 GiB"


def test_catalogue_entries_cite_sources_and_match_the_default_model():
    entries = {c.name: c for c in kv.catalogue()}
    assert {"smollm2-135m", "gpt2-small", "llama-3-8b", "llama-3-70b", "mistral-7b", "qwen2_5-7b"} <= set(entries)
    for cfg in entries.values():
        assert cfg.source.startswith("https://"), cfg.name
        assert cfg.query_heads % cfg.kv_heads == 0
    s = entries["smollm2-135m"]
    assert (s.layers, s.query_heads, s.kv_heads, s.head_dim) == (30, 9, 3, 64)
    assert kv.context_grid(100, 5).tolist() == [1, 26, 50, 75, 100]
