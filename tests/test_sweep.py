"""Head sweep: its map equals per-head ablations run one by one through the instrumented runner."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from numeric import approx, assert_close

from explorer.core.analysis.sweep import default_target, head_sweep, sweep_plan
from explorer.core.api import run_request
from explorer.core.errors import InputError
from explorer.core.events import RunRequest
from explorer.core.interventions import Intervention
from explorer.core.runner import Session

PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture
def session(tiny_llama):
    return Session(tiny_llama, store_dtype=torch.float32)


@pytest.mark.parametrize("mode", ["last", "all"])
def test_sweep_map_equals_one_by_one_ablations(session, mode):
    base = run_request(session, RunRequest(PROMPT))
    pos = base.n_tokens - 2
    target = default_target(base, pos)
    assert target == base.tokens[pos + 1].id
    result = head_sweep(session, base.token_ids, pos, target, mode=mode)
    assert result.complete and result.heads.shape == (session.info.n_layers, session.info.n_heads)
    assert result.baseline == approx(float(base.next_token_logprobs(pos)[target]), 1e-4)
    positions = (pos,) if mode == "last" else None
    layers = range(session.info.n_layers) if mode == "last" else [1]  # the full map once, one layer for "all"
    expected = result.heads.copy()
    for layer in layers:
        for head in range(session.info.n_heads):
            run = run_request(session, RunRequest(PROMPT, interventions=(Intervention("zero_head", layer, head,
                                                                                       positions),)))
            expected[layer, head] = run.next_token_logprobs(pos)[target] - base.next_token_logprobs(pos)[target]
    assert_close(result.heads, expected, 2e-4)
    assert np.abs(expected).max() > 1e-3  # ablations do move the prediction
    mlp = run_request(session, RunRequest(PROMPT, interventions=(Intervention("zero_mlp", 2, None, positions),)))
    assert result.mlp[2] == approx(mlp.next_token_logprobs(pos)[target] - base.next_token_logprobs(pos)[target], 2e-4)
    assert result.strongest(1)[0][2] == approx(expected.flat[np.abs(expected).argmax()], 2e-4)


def test_sweep_progress_cancel_and_errors(session):
    base = run_request(session, RunRequest(PROMPT))
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done >= 4:
            cancel.set()

    result = head_sweep(session, base.token_ids, base.n_tokens - 1, 3, batch=2, progress=progress, cancel=cancel)
    assert not result.complete and np.isfinite(result.heads.ravel()[:4]).all()
    assert np.isnan(result.heads.ravel()[4:]).all()
    assert seen == [(2, seen[0][1]), (4, len(sweep_plan(session.info.n_layers, session.info.n_heads, 0, "last")))]
    one = head_sweep(session, base.token_ids, base.n_tokens - 1, 3, batch=1)  # unbatched gives the same map
    assert_close(one.heads.ravel()[:4], result.heads.ravel()[:4], 1e-4)
    with pytest.raises(InputError):
        head_sweep(session, base.token_ids, base.n_tokens - 1, 3, mode="sideways")
    # the session's own cache is untouched: the next run still reuses its prefix
    again = run_request(session, RunRequest(PROMPT + " Rome"), previous=base)
    assert again.steps[0].cached_prefix > 0
