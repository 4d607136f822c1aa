"""Issue 18, item 6 on the default model: a 45-token run saved as the app saves it is small, and every array the
panels read from the opened file agrees with the original within the stated tolerances."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from numeric import assert_close

from explorer.core.analysis import depth
from explorer.core.analysis.attention import layer_summary
from explorer.core.api import run_request
from explorer.core.arrays import ACTIVATIONS, CAPTURED
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.lens import lens_columns
from explorer.core.runfile import ENCODED_RTOL, load_run, row_errors, runs_equal
from explorer.core.runner import Session

PROMPT = "Write a long story about a lighthouse keeper."  # + 36 new tokens: 45 tokens (benchmarks/bench_runfile.py)


@pytest.fixture(scope="module")
def saved(default_model, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    session = Session(default_model)
    run = run_request(session, RunRequest(PROMPT, settings=GenerationSettings(max_new_tokens=36, stop_at_eos=False)))
    folder = tmp_path_factory.mktemp("runs")
    path, exact_path = folder / "run.npz", folder / "exact.npz"
    run.save(path, include_head=False)  # as the window saves (file_actions.save_run)
    run.save(exact_path, include_head=False, exact=True)  # the arrays as captured: the file before the encoding
    loaded = load_run(path)
    assert loaded.unembed is None and session.attach_head(loaded)  # what opening it in the window does
    return run, loaded, path, exact_path


def test_a_45_token_run_is_well_under_5_mb(saved):
    run, _loaded, path, exact_path = saved
    assert run.n_tokens == 45
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        members = zf.infolist()
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in members)
    assert not any(i.filename.startswith("unembed") for i in members)
    # 6.8 MiB with float16 activations and every vocabulary text; 2.65 MiB measured with the encoding
    assert size < 3.2 * 2**20, f"{run.n_tokens} tokens saved in {size / 2**20:.2f} MiB"
    assert size < 0.5 * exact_path.stat().st_size


def test_opened_without_the_model_it_names_every_alternative(saved):
    from explorer.core.labels import token_text

    run, _loaded, path, _exact = saved
    alone = load_run(path)  # no model attached
    ids = {*run.array("pred_top_ids").ravel().tolist(), *(t.id for t in run.tokens)}
    assert all(token_text(alone, i) == run.vocab[i] for i in ids)


def test_every_captured_array_agrees(saved):
    run, loaded, _path, _exact = saved
    assert runs_equal(run, loaded, rtol=ENCODED_RTOL)  # activations: every row within 2.5% (L2); the rest exact
    assert not runs_equal(run, loaded)  # (the encoding is lossy: the check above is not vacuous)
    for name in CAPTURED:
        if name not in ACTIVATIONS:
            np.testing.assert_array_equal(loaded.array(name), run.array(name))
    for name in ACTIVATIONS:  # the median row error well inside the bound (measured 0.8-1.1%)
        assert np.median(row_errors(run.array(name), loaded.array(name))) < 0.6 * ENCODED_RTOL, name


def test_attention_maps_and_head_statistics(saved):
    run, loaded, _path, _exact = saved
    info = run.info
    worst, total = 0.0, 0.0
    for layer in range(info.n_layers):
        for head in range(info.n_heads):
            gap = np.abs(loaded.attention(layer, head) - run.attention(layer, head))  # probabilities
            worst, total = max(worst, float(gap.max())), total + float(gap.mean())
    assert worst < 0.1  # measured 0.072: one cell of a peaked head
    assert total / (info.n_layers * info.n_heads) < 2e-3
    for layer in (0, info.n_layers // 2, info.n_layers - 1):  # Attention > Head statistics
        a, b = (layer_summary(r.array("queries"), r.array("keys"), layer, info.group_size, r.layer_scaling(layer),
                              info.is_causal, r.token_ids) for r in (run, loaded))
        np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=0.03)


def test_depth_panels(saved):
    run, loaded, _path, _exact = saved
    for p in range(run.n_tokens):
        # stored as the sum of its blocks, the opened run stays additive (the panel's check is 2e-2)
        assert depth.additivity_error(loaded, p).max() < 1.3e-2
        assert depth.is_additive(loaded, p) == depth.is_additive(run, p)
    for p in (1, run.n_prompt, run.n_tokens - 2):
        np.testing.assert_allclose(depth.residual_share(loaded, p), depth.residual_share(run, p), rtol=0, atol=0.01)
        token = int(run.token_ids[p + 1])
        a, b = depth.direct_logit_attribution(run, p, token), depth.direct_logit_attribution(loaded, p, token)
        assert_close(b.contributions, a.contributions, 0.05)
    np.testing.assert_allclose(depth.layer_similarity(loaded), depth.layer_similarity(run), rtol=0, atol=1e-2)


def test_logit_lens_and_next_token(saved):
    run, loaded, _path, _exact = saved
    a, b = lens_columns(run, 0, run.n_tokens), lens_columns(loaded, 0, loaded.n_tokens)
    assert (a.top_ids[..., 0] == b.top_ids[..., 0]).mean() > 0.97  # measured 99.2% of depth x position cells
    np.testing.assert_allclose(b.top_probs[..., 0], a.top_probs[..., 0], rtol=0, atol=0.1)
    np.testing.assert_array_equal(b.top_ids[-1], a.top_ids[-1])  # the last row: the model's own output, exact
    for p in (0, run.n_prompt, run.n_tokens - 1):  # final_resid is stored exactly (float32)
        assert_close(loaded.next_token_logprobs(p), run.next_token_logprobs(p), 1e-5)
