"""The core benchmark's measuring functions run and report consistent figures (no timing targets here)."""

from __future__ import annotations

from explorer.core import benchmarks
from explorer.core.runner import Session


def test_eager_bytes_formula(tiny_llama):
    info = tiny_llama.info
    n = 100
    assert benchmarks.eager_bytes(info, n) == info.n_layers * info.n_heads * n * n * 4 + (
        info.n_layers + 1) * n * info.hidden_size * 4


def test_prompt_of_fits(tiny_llama):
    text, ids = benchmarks.prompt_of(tiny_llama.tokenizer, 40)
    assert 30 <= len(ids) <= 40 and text


def test_measurements_on_a_tiny_model(tiny_llama):
    session = Session(tiny_llama)
    decode = benchmarks.measure_decode(session, new_tokens=4, repeats=1, prompt_tokens=16)
    assert decode["plain_tokens_per_s"] > 0 and decode["instrumented_tokens_per_s"] > 0
    prefill, runs = benchmarks.measure_prefill(session, sizes=(64,), repeats=1)
    row = prefill["sizes"]["64"]
    assert row["tokens"] == runs[64].n_tokens <= 64 and row["plain_ms"] > 0 and row["instrumented_ms"] > 0
    memory = benchmarks.measure_memory(runs[64])
    assert memory["capture_bytes"] == memory["capture_used_bytes"]  # buffers sized to the plan: no slack
    assert 0 < memory["ratio"] < 1
    results = {"load": {}, "decode": decode, "prefill": prefill, "memory": memory}
    results["checks"] = benchmarks.checks(results)
    assert set(results["checks"]) == set(benchmarks.TARGETS)
    text = benchmarks.table(results)
    assert "decode 4 tokens" in text and "prefill" in text and "memory_ratio" in text
    # the model is back on the capturing attention after the plain measurements
    assert tiny_llama.model.config._attn_implementation == "explorer_capture"
