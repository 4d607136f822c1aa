"""Interventions on tiny models: hand-computed ablations, exact no-ops, activation patching, prefix reuse, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numeric import assert_close

from explorer.core.api import run_request
from explorer.core.errors import InputError, RunFileError
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.interventions import (
    Intervention,
    first_affected,
    from_json,
    head_outputs,
    mean_ablation,
    patch_head_from,
    patch_resid_from,
    to_json,
)
from explorer.core.runfile import load_run
from explorer.core.runner import Session

PROMPT = "The capital of France is Paris. Once upon a time"
PROMPT_B = "The capital of Italy is Rome. Once upon a time"


@pytest.fixture
def session32(tiny_models, request):
    """float32 storage, so hand computations from the captured arrays are exact to rounding."""
    return Session(tiny_models[getattr(request, "param", "tiny-llama")], store_dtype=torch.float32)


def _run(session, prompt=PROMPT, interventions=(), previous=None, **settings):
    return run_request(session, RunRequest(prompt, interventions=tuple(interventions),
                                           settings=GenerationSettings(**settings)), previous=previous)


def _head_columns(session, layer: int, head: int) -> np.ndarray:
    """[hidden, head_dim] the block of the output projection that reads head `head` (x @ W.T convention)."""
    proj = session.adapter.output_projection(session.adapter.layers(session.loaded.model)[layer])
    d = session.info.head_dim
    w = proj.weight.detach().float().numpy()
    w = w if isinstance(proj, torch.nn.Linear) else w.T  # Linear: [out, in]; GPT-2's Conv1D: [in, out]
    return w[:, head * d:(head + 1) * d]


@pytest.mark.parametrize("session32", ["tiny-llama", "tiny-gpt2"], indirect=True)
def test_zero_head_equals_layer_recomputed_by_hand(session32):
    base = _run(session32)
    layer, head = 1, 1
    ablated = _run(session32, interventions=[Intervention("zero_head", layer, head)], previous=None)
    z = head_outputs(base, layer, head)  # [N, head_dim] from the captured q, k, v
    expected = base.array("attn_out")[layer] - z @ _head_columns(session32, layer, head).T  # [N, hidden]
    got = ablated.array("attn_out")[layer]
    scale = np.abs(base.array("attn_out")[layer]).max()
    np.testing.assert_allclose(got, expected, atol=1e-4 * scale + 1e-6)
    assert np.abs(got - base.array("attn_out")[layer]).max() > 1e-3 * scale  # the head did something
    np.testing.assert_array_equal(ablated.array("resid")[: layer + 1], base.array("resid")[: layer + 1])


def test_ablating_nothing_reproduces_the_baseline_exactly(session32):
    base = _run(session32)
    for noop in ([Intervention("scale_head", 2, 0, scale=1.0)], [Intervention("zero_head", 0, 0, positions=(999,))]):
        again = _run(session32, interventions=noop)
        for name in ("resid", "attn_out", "mlp_out", "final_resid", "pred_top_logprobs"):
            np.testing.assert_array_equal(again.array(name), base.array(name))
        assert again.request.interventions == tuple(noop)


def test_patching_every_position_at_the_last_layer_gives_run_b_logits(session32):
    a, b = _run(session32), _run(session32, PROMPT_B)
    assert a.n_tokens == b.n_tokens
    patched = _run(session32, interventions=[patch_resid_from(b, session32.info.n_layers - 1)])
    for pos in range(a.n_tokens):
        assert_close(patched.next_token_logprobs(pos), b.next_token_logprobs(pos), 1e-5)
    assert np.abs(a.next_token_logprobs(a.n_tokens - 1) - b.next_token_logprobs(b.n_tokens - 1)).max() > 1e-3


def test_patch_head_from_b_at_one_position_and_mean_ablation(session32):
    a, b = _run(session32), _run(session32, PROMPT_B)
    layer, head, pos = 2, 3, 6
    cols = _head_columns(session32, layer, head)
    patched = _run(session32, interventions=[patch_head_from(b, layer, head, (pos,))])
    za, zb = head_outputs(a, layer, head), head_outputs(b, layer, head)
    expected = a.array("attn_out")[layer].copy()
    expected[pos] += (zb[pos] - za[pos]) @ cols.T
    assert_close(patched.array("attn_out")[layer], expected, 1e-4)
    mean = mean_ablation(a, layer, head)
    assert_close(mean.source, za.mean(axis=0), 1e-6)
    ablated = _run(session32, interventions=[mean])
    expected = a.array("attn_out")[layer] + (mean.source[None] - za) @ cols.T
    assert_close(ablated.array("attn_out")[layer], expected, 1e-4)


def test_block_zeroing_and_decode_positions(session32):
    base = _run(session32, max_new_tokens=3)
    n_prompt = base.n_prompt
    mlp = _run(session32, interventions=[Intervention("zero_mlp", 1)], max_new_tokens=3)
    assert not np.any(mlp.array("mlp_out")[1]) and np.any(base.array("mlp_out")[1])
    # an intervention at a generated position: the prompt is untouched, that position changes
    target = n_prompt + 1
    late = _run(session32, interventions=[Intervention("zero_attn", 0, positions=(target,))], max_new_tokens=3)
    np.testing.assert_array_equal(late.array("attn_out")[:, :target], base.array("attn_out")[:, :target])
    assert not np.any(late.array("attn_out")[0, target]) and np.any(base.array("attn_out")[0, target])


@pytest.mark.parametrize("session32", ["tiny-bert"], indirect=True)
def test_encoder_head_and_block_interventions(session32):
    base = _run(session32)
    out = _run(session32, interventions=[Intervention("zero_attn", 0)])
    assert not np.any(out.array("attn_out")[0])
    head = _run(session32, interventions=[Intervention("zero_head", 0, 1)])
    z = head_outputs(base, 0, 1)
    expected = base.array("attn_out")[0] - z @ _head_columns(session32, 0, 1).T
    assert_close(head.array("attn_out")[0], expected, 1e-4)


def test_prefix_reuse_only_up_to_the_first_affected_position(session32):
    base = _run(session32)
    n = base.n_tokens
    iv = Intervention("zero_head", 1, 0, positions=(n - 3,))
    first = _run(session32, interventions=[iv], previous=base)
    assert first.steps[0].cached_prefix == n - 3
    fresh = _run(Session(session32.loaded, store_dtype=torch.float32), interventions=[iv])
    assert_close(first.array("final_resid"), fresh.array("final_resid"), 0.0001)
    again = _run(session32, interventions=[iv], previous=first)  # same interventions: the whole prefix
    assert again.steps[0].cached_prefix == n - 1
    everywhere = _run(session32, interventions=[Intervention("zero_head", 1, 0)], previous=again)
    assert everywhere.steps[0].cached_prefix == 0
    assert first_affected((iv,), (iv,)) is None


def test_intervention_validation_hash_and_json():
    src = np.arange(8, dtype=np.float32)
    a = Intervention("mean_head", 0, 1, source=src)
    assert a == Intervention("mean_head", 0, 1, source=src.copy()) and hash(a) == hash(from_json(to_json(a)))
    assert a != Intervention("mean_head", 0, 1, source=src + 1)
    assert {a, from_json(to_json(a))} == {a}
    with pytest.raises(InputError):
        Intervention("zero_head", 0)  # no head
    with pytest.raises(InputError):
        Intervention("patch_resid", 0)  # no source
    with pytest.raises(InputError):
        Intervention("melt_head", 0, 0)
    assert Intervention("zero_head", 0, 0, positions=(3, 1, 3)).positions == (1, 3)


def test_saved_runs_keep_their_interventions(session32, tmp_path):
    b = _run(session32, PROMPT_B)
    ivs = (Intervention("scale_head", 1, 2, positions=(4, 5), scale=0.5), patch_head_from(b, 0, 1, (3,)))
    run = _run(session32, interventions=ivs)
    path = tmp_path / "run.npz"
    run.save(path)
    loaded = load_run(path)
    assert loaded.request.interventions == ivs
    np.testing.assert_array_equal(loaded.request.interventions[1].source, ivs[1].source)
    # a tampered header is refused with a sentence
    import json
    import zipfile

    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays["header"].tobytes())
    header["request"]["interventions"][0]["kind"] = "melt_head"
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    assert zipfile.is_zipfile(bad)
    with pytest.raises(RunFileError, match="intervention"):
        load_run(bad)
