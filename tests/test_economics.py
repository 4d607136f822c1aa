"""Token economics: compute by kind from the model's shapes, checked against a hand count."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from explorer.core.api import capture
from explorer.core.economics import Shapes, economics
from explorer.core.events import TokenKind

# tiny-llama by hand: d_model 64, 4 query heads and 2 KV heads of 16, d_ff 128 (gated: 3 matrices), 4 layers,
# vocabulary 400
Q, K, V, O = 64 * 64, 64 * 32, 64 * 32, 64 * 64
MLP = 3 * 64 * 128
N_TINY = 4 * (Q + K + V + O + MLP)  # 147,456
ATTN_PER_KEY = 4 * 4 * 4 * 16  # 4 (q.k and p.v, 2 FLOPs each) x layers x heads x head_dim
HEAD = 2 * 64 * 400


def _weight_matrices(loaded) -> int:
    """Elements of every weight matrix inside the transformer blocks (what N counts), read from the model."""
    from explorer.core.adapters import adapter_for

    adapter = adapter_for(loaded.info.architecture)
    return sum(p.numel() for layer in adapter.layers(loaded.model) for p in layer.parameters() if p.dim() == 2)


def test_n_is_the_models_own_weight_count(tiny_models):
    assert Shapes.from_info(tiny_models["tiny-llama"].info).body_params == N_TINY
    for name in ("tiny-llama", "tiny-gpt2", "tiny-bert"):
        loaded = tiny_models[name]
        shapes = Shapes.from_info(loaded.info)
        assert not shapes.estimated
        assert shapes.body_params == _weight_matrices(loaded), name


def test_prefill_and_decode_equal_a_hand_count(tiny_llama):
    run = capture("The capital of France is", tiny_llama, max_new_tokens=4)
    n_prompt, n = run.n_prompt, run.n_tokens
    e = economics(run)
    prefill = sum(2 * N_TINY + ATTN_PER_KEY * (p + 1) for p in range(n_prompt)) + HEAD
    decode = sum(2 * N_TINY + ATTN_PER_KEY * (p + 1) for p in range(n_prompt, n)) + HEAD * (n - n_prompt)
    assert e.prefill_flops == prefill
    assert e.decode_flops == decode
    assert e.head_flops == HEAD * (1 + n - n_prompt)
    rows = {r.kind: r for r in e.rows}
    assert rows["prompt"].tokens == rows["prompt"].prefill == n_prompt
    assert rows["generated"].decode == n - n_prompt
    assert sum(r.flops for r in e.rows) + e.head_flops == e.total_flops
    assert e.cached_tokens == 0 and e.cached_flops_saved == 0 and e.draft_tokens == 0


def test_cached_prefix_is_counted_as_saved(tiny_session):
    first = capture("The capital of France is", tiny_session, max_new_tokens=2)
    second = capture("The capital of France is Paris", tiny_session, max_new_tokens=2, previous=first)
    e = economics(second)
    c = second.steps[0].cached_prefix
    assert c > 0 and e.cached_tokens == c
    assert e.cached_flops_saved == sum(2 * N_TINY + ATTN_PER_KEY * (p + 1) for p in range(c))
    rows = {r.kind: r for r in e.rows}
    assert rows[TokenKind.CACHED_PREFIX.value].tokens == c and rows[TokenKind.CACHED_PREFIX.value].flops == 0
    assert e.prefill_flops == sum(2 * N_TINY + ATTN_PER_KEY * (p + 1) for p in range(c, second.n_prompt)) + HEAD


def test_encoder_tokens_attend_every_position_and_have_no_head(tiny_models):
    run = capture("The capital of France is", tiny_models["tiny-bert"])
    e = economics(run)
    n = run.n_tokens
    shapes = e.shapes
    per_token = 2 * shapes.body_params + 4 * shapes.n_layers * shapes.n_heads * shapes.head_dim * n
    assert e.prefill_flops == per_token * n and e.head_flops == 0 and e.decode_flops == 0


def test_drafts_are_read_defensively(tiny_llama):
    run = capture("The capital", tiny_llama, max_new_tokens=3)
    run.drafts = [{"proposed": [1, 2, 3, 4], "accepted": 1}, SimpleNamespace(proposed_ids=(5, 6), n_accepted=2),
                  {"proposed": None}, "garbage", {"ids": [1, 2], "accepted": 9}]
    e = economics(run)
    assert e.draft_tokens == 4 + 2 + 2
    assert e.rejected_tokens == 3
    mean = (run.n_prompt + run.n_tokens) // 2
    assert e.rejected_flops == 3 * (2 * N_TINY + ATTN_PER_KEY * (mean + 1) + HEAD)
    assert ("draft tokens rejected", 3, 0, 0, pytest.approx(e.rejected_flops * 1e-9)) in e.table()


def test_overhead_share_counts_what_nobody_typed(tiny_llama):
    run = capture("Hello there", tiny_llama, chat=True, system="Be brief.", max_new_tokens=2)
    e = economics(run)
    by_kind = {r.kind: r.flops for r in e.rows}
    hidden = by_kind.get("special", 0) + by_kind.get("system", 0)
    assert hidden > 0
    assert e.overhead_share() == pytest.approx(hidden / sum(by_kind.values()), rel=1e-12)


def test_shapes_are_estimated_for_a_run_file_without_the_mlp_size(tiny_llama):
    from dataclasses import replace

    info = replace(tiny_llama.info, d_ff=0, mlp_matrices=0)
    shapes = Shapes.from_info(info)
    assert shapes.estimated
    # the estimate spends the non-embedding parameters (norms included) on the MLP: close to the real N
    assert shapes.body_params == pytest.approx(N_TINY, rel=0.05)


def test_the_api_names_economics_and_tool_follow_up():
    import explorer
    from explorer.core import economics as economics_module
    from explorer.core import tools

    assert explorer.economics is economics_module.economics and explorer.follow_up is tools.follow_up
    assert issubclass(explorer.ToolError, explorer.InputError)
