"""Depth analyses against the model itself: logit lens, attribution, residual share, similarity,
update ratios and the counterfactual depth attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numeric import approx, assert_close

from explorer.core.analysis.depth import (
    LensTable,
    direct_logit_attribution,
    layer_similarity,
    lens_columns,
    position_mask,
    residual_share,
    token_logprob,
    update_ratios,
)
from explorer.core.analysis.depth_attention import (
    depth_attention,
    depth_keys,
    depth_weights,
    head_attribution,
    head_outputs,
)
from explorer.core.api import run_request
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.runner import Session

PROMPT = "The capital of France is Paris. Once upon a time"


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def exact_run(request, tiny_models):
    """A float32-stored run (prompt + 3 generated tokens) and its model."""
    loaded = tiny_models[request.param]
    session = Session(loaded, store_dtype=torch.float32)
    req = RunRequest(PROMPT, settings=GenerationSettings(max_new_tokens=3))
    return loaded, run_request(session, req)


def _real_logits(loaded, ids) -> np.ndarray:
    with torch.inference_mode():
        return loaded.model(input_ids=torch.tensor([list(ids)])).logits[0].float().numpy()  # [N, vocab]


def test_lens_last_layer_is_the_models_real_prediction(exact_run):
    loaded, run = exact_run
    n = run.n_tokens
    cols = lens_columns(run, 0, n, k=5)
    logits = _real_logits(loaded, run.token_ids)  # [N, vocab]
    real_lp = torch.log_softmax(torch.from_numpy(logits), -1).numpy()
    top = np.argsort(-logits, axis=-1)[:, :5]
    np.testing.assert_array_equal(cols.top_ids[-1, :, 0], top[:, 0])
    assert_close(cols.top_probs[-1], np.exp(np.take_along_axis(real_lp, top, -1)), 1e-4)
    for p in (0, n // 2, n - 1):
        assert_close(cols.lse[-1, p] - logits[p].max(), np.log(np.exp(logits[p] - logits[p].max()).sum()), 1e-4)
        assert np.argmax(run.next_token_logprobs(p)) == cols.top_ids[-1, p, 0]
    # target mode: the actually following token's logprob and rank at the last depth
    ids = run.token_ids
    for p in range(n - 1):
        assert cols.target_ids[p] == ids[p + 1]
        assert cols.target_logprob[-1, p] == approx(real_lp[p, ids[p + 1]], 1e-4)
        assert cols.target_rank[-1, p] == int((logits[p] > logits[p, ids[p + 1]]).sum())
    assert cols.target_ids[-1] == run.steps[-1].choice.token_id if run.steps[-1].choice else cols.target_ids[-1] == -1


def test_lens_applies_the_final_norm_once_at_every_depth(exact_run):
    loaded, run = exact_run
    cols = lens_columns(run, 2, 5, k=3)
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.tensor([list(run.token_ids)]), output_hidden_states=True)
    hs = out.hidden_states  # entry 0 embeddings, last already normalised by the model
    norm = loaded.model.model.norm if hasattr(loaded.model, "model") else loaded.model.transformer.ln_f
    for layer in range(1, len(hs) - 1):
        logits = loaded.model.lm_head(norm(hs[layer][0, 2:5]))  # [3, vocab]
        np.testing.assert_array_equal(cols.top_ids[layer, :, 0], logits.argmax(-1).numpy())


def test_lens_table_fills_progressively_and_token_logprob_is_exact(exact_run):
    _, run = exact_run
    n = run.n_tokens
    table = LensTable(run.info.n_layers + 1, k=4)
    table.grow(n)
    block = 4
    seen = []
    while (nxt := table.next_missing(around=n - 1, block=block)) is not None:
        seen.append(nxt)
        table.merge(lens_columns(run, *nxt, k=4))
    assert seen[0][1] == n  # the block around the requested position came first
    full = lens_columns(run, 0, n, k=4)
    np.testing.assert_array_equal(table.top_ids, full.top_ids)
    tok = int(full.top_ids[1, 3, 0])
    lp = token_logprob(run, tok, table.lse)  # [L+1, N]
    assert lp[1, 3] == approx(np.log(full.top_probs[1, 3, 0]), 1e-4)
    probs, rank = table.token_prob(tok)
    assert probs[1, 3] == approx(full.top_probs[1, 3, 0], 1e-5) and rank[1, 3] == 0  # float32, two paths


def test_attribution_sums_to_the_real_logit(exact_run):
    loaded, run = exact_run
    logits = _real_logits(loaded, run.token_ids)
    for p in (0, run.n_prompt - 1, run.n_tokens - 1):
        for token in (int(run.token_ids[min(p + 1, run.n_tokens - 1)]), 7):
            att = direct_logit_attribution(run, p, token)
            assert att.logit == approx(float(logits[p, token]), 1e-3)
            assert att.contributions.sum() + att.offset == approx(att.logit, 1e-3)
            assert len(att.labels) == 2 * run.info.n_layers + 1
            if run.norm.kind == "layer":  # GPT-2: the LayerNorm bias is the stated offset
                assert att.offset == approx(float(run.norm.bias @ run.unembed[token]), 1e-6)
            else:
                assert att.offset == 0.0


def test_attribution_per_head_sums_to_the_attention_block(exact_run):
    loaded, run = exact_run
    weights = depth_weights(loaded)
    p = run.n_tokens - 2
    for layer in range(run.info.n_layers):
        heads, bias = head_outputs(run, weights, layer, p)
        assert_close(heads.sum(0) + bias, run.array("attn_out")[layer, p], 1e-4)
    token = int(run.token_ids[p + 1])
    att = direct_logit_attribution(run, p, token)
    per_head = head_attribution(run, weights, p, token, att.scale)  # [L, H+1]
    assert_close(per_head.sum(1), att.contributions[1::2], 1e-4)


def test_residual_share_rows_sum_to_one(exact_run):
    _, run = exact_run
    n_layers = run.info.n_layers
    for p in (0, run.n_tokens - 1):
        merged = residual_share(run, p)
        split = residual_share(run, p, split=True)
        assert merged.shape == (n_layers + 1, n_layers + 1) and split.shape == (n_layers + 1, 2 * n_layers + 1)
        assert_close(np.nansum(merged, axis=1), 1.0, 1e-4)
        assert_close(np.nansum(split, axis=1), 1.0, 1e-4)
        assert merged[0, 0] == pytest.approx(1.0)
        assert np.isnan(merged[1, 2]) and not np.isnan(merged[2, 2])  # lower-triangular


def test_residual_share_rows_sum_to_one_with_float16_storage(tiny_session):
    run = run_request(tiny_session, RunRequest(PROMPT))
    assert_close(np.nansum(residual_share(run, 3), axis=1), 1.0, 2e-2)


def test_similarity_and_update_ratios(exact_run):
    _, run = exact_run
    mask = position_mask(run, skip_first=True)
    assert not mask[0] and mask[1:].all()
    sim = layer_similarity(run, mask)
    n_layers = run.info.n_layers
    assert sim.shape == (n_layers + 1, n_layers + 1)
    assert_close(np.diag(sim), 1.0, 1e-5)
    assert_close(sim, sim.T, 1e-6)
    ratios = update_ratios(run, mask)
    resid, attn = run.array("resid"), run.array("attn_out")
    expected = np.mean([np.linalg.norm(attn[1, p]) / np.linalg.norm(resid[1, p]) for p in range(1, run.n_tokens)])
    assert ratios.attn[1] == pytest.approx(expected, rel=1e-4)
    assert ratios.block.shape == (n_layers,) and (ratios.block > 0).all()


def test_depth_attention_matches_a_direct_computation(exact_run):
    loaded, run = exact_run
    weights = depth_weights(loaded)
    layer, head, p = run.info.n_layers - 1, 1, run.n_tokens - 1
    keys = depth_keys(run, weights, layer, p)  # [l+1, kv, d]
    # the depth key from the state this layer actually reads is the real key at p
    assert_close(keys[layer], run.array("keys")[layer][:, p], 1e-4)
    # direct: the model's own modules on the earlier states
    states = torch.from_numpy(run.array("resid")[: layer + 1, p].copy())[None]  # [1, l+1, D]
    block = loaded.model.model.layers[layer] if hasattr(loaded.model, "model") else loaded.model.transformer.h[layer]
    d, kv = run.info.head_dim, run.info.n_kv_heads
    with torch.inference_mode():
        if hasattr(block, "input_layernorm"):
            k = block.self_attn.k_proj(block.input_layernorm(states)).view(1, layer + 1, kv, d).transpose(1, 2)
            pos = torch.full((1, layer + 1), p)
            cos, sin = loaded.model.model.rotary_emb(k, pos)
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            _, k = apply_rotary_pos_emb(k, k, cos, sin)
        else:
            hd = run.info.hidden_size
            k = block.attn.c_attn(block.ln_1(states))[..., hd:2 * hd].view(1, layer + 1, kv, d).transpose(1, 2)
    direct_keys = k[0].transpose(0, 1).numpy()  # [l+1, kv, d]
    assert_close(keys, direct_keys, 1e-4)
    q = torch.from_numpy(run.array("queries")[layer, head, p].copy())
    seq_k = torch.from_numpy(run.array("keys")[layer, head // run.info.group_size, : p + 1].copy())
    scores = torch.cat([seq_k @ q, torch.from_numpy(direct_keys[:, head // run.info.group_size]) @ q])
    expected = torch.softmax(scores * run.layer_scaling(layer), -1).numpy()
    att = depth_attention(run, weights, layer, head, p)
    assert_close(att.weights, expected, 1e-5)
    assert_close(att.real, run.attention(layer, head)[p, : p + 1], 1e-5)
    assert att.weights.sum() == pytest.approx(1.0) and 0 < att.depth_mass < 1
