"""Speculative decoding: drafts verified in one pass give plain decoding's tokens and arrays at temperature 0."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from explorer.core import drafting
from explorer.core.api import capture
from explorer.core.arrays import ARRAY_FIELDS
from explorer.core.errors import InputError, RunFileError
from explorer.core.events import TokenKind
from explorer.core.runfile import load_run
from explorer.core.runner import Session
from explorer.core.speculative import (
    DraftStep,
    accept_greedy,
    accept_sampled,
    parse_speculative,
    prompt_lookup,
    summarize,
)
from tests.numeric import assert_close

PROMPT = "def add(a, b):\n\treturn a + b\n\nprint(add(2, 3))"
ACTIVATION_NAMES = ("queries", "keys", "values", "resid", "attn_out", "mlp_out", "final_resid")
STAT_NAMES = ("pred_entropy", "pred_top_logprobs", "token_logprob")


def oracle_drafter(plain_ids: list[int], vocab: int, wrong_every: int = 3):
    """A drafter class that proposes the plain run's own continuation, with every `wrong_every`-th position
    (by absolute position) changed, so passes accept some drafts and reject others."""

    class Oracle(drafting.Drafter):
        def __init__(self, config, session):
            self.config = config

        def propose(self, session, capture_ctx, ids, k, gen):
            n = len(ids)
            out = [t if (n + i) % wrong_every else (t + 1) % vocab for i, t in enumerate(plain_ids[n:n + k])]
            return out, None

    return Oracle


def _plain_and_speculative(model, monkeypatch, max_new=14, spec="prompt-lookup:k=5", wrong_every=3):
    plain = capture(PROMPT, Session(model, store_dtype=torch.float32), max_new_tokens=max_new)
    oracle = oracle_drafter(plain.token_ids.tolist(), model.info.vocab_size, wrong_every)
    monkeypatch.setitem(drafting.DRAFTER_CLASSES, "prompt-lookup", oracle)
    session = Session(model, store_dtype=torch.float32)
    spec_run = capture(PROMPT, session, max_new_tokens=max_new, speculative=spec)
    return plain, spec_run, session


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    ids = np.array([1, 2, 9, 1, 2, 8, 5, 1, 2])
    assert prompt_lookup(ids, 3, 3) == [8, 5, 1]  # the 2-gram [1, 2] last seen at 3: what followed it
    assert prompt_lookup(np.array([4, 1, 2, 3, 4]), 2, 3) == [1, 2]  # falls back to the 1-gram [4]
    assert prompt_lookup(np.array([1, 2, 3]), 4, 3) == []
    assert prompt_lookup(np.array([7, 7]), 5, 3) == [7]  # never past the end
    assert prompt_lookup(np.array([4, 1, 2, 3, 4]), 2, 3, min_ngram=2) == []  # a lone repeated token is not enough


def test_draft_length_follows_the_heuristic_schedule():
    drafter = drafting.LookupDrafter(parse_speculative("prompt-lookup:k=5"), None)
    step = DraftStep(position=1, proposed=(1, 2, 3, 4, 5), accepted=2, target_token=9)
    drafter.update(step)
    drafter.update(step)
    assert drafter.k_now == 3  # two misses: 5 -> 4 -> 3
    drafter.update(DraftStep(position=1, proposed=(1, 2, 3), accepted=3, target_token=9))
    assert drafter.k_now == 5  # a full hit: +2, capped at k
    drafter.update(DraftStep(position=1, proposed=(), accepted=0, target_token=9))
    assert drafter.k_now == 5  # a pass with no draft changes nothing


def test_accept_greedy_stops_at_the_first_disagreement():
    rows = np.eye(6)[[2, 3, 4, 5]]  # greedy choices 2, 3, 4, then 5 after them
    assert accept_greedy(rows, [2, 3, 4]) == 3
    assert accept_greedy(rows, [2, 0, 4]) == 1
    assert accept_greedy(rows, [1, 3, 4]) == 0


@pytest.mark.parametrize("with_q", [False, True])
def test_speculative_sampling_keeps_the_models_distribution(with_q):
    """Leviathan et al.'s rule: the first token out is distributed as p whatever the draft distribution q."""
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    q = np.array([0.1, 0.1, 0.2, 0.3, 0.3])
    counts = np.zeros(5)
    n = 20000
    for _ in range(n):
        draft = int(rng.choice(5, p=q)) if with_q else 3  # a prompt-lookup draft is one fixed token
        kept, nxt = accept_sampled(np.stack([p, p]), [draft], q[None] if with_q else None, rng)
        counts[draft if kept else nxt] += 1
    np.testing.assert_allclose(counts / n, p, atol=0.02)


@pytest.mark.parametrize("spec", ["nope", "prompt-lookup:k=0", "prompt-lookup:k=x", "prompt-lookup:depth=3",
                                  "layers:n=-1", "prompt-lookup:k", "prompt-lookup:ngram=2,min=3"])
def test_bad_options_are_refused_with_the_valid_forms(spec, tiny_session):
    with pytest.raises(InputError, match="speculative|option"):
        capture(PROMPT, tiny_session, max_new_tokens=3, speculative=spec)


def test_options_parse():
    assert parse_speculative("") is None
    config = parse_speculative("prompt-lookup:k=6, ngram=2")
    assert (config.method, config.k, config.ngram) == ("prompt-lookup", 6, 2)
    assert parse_speculative("layers:n=3").n == 3


def test_models_that_cannot_draft_say_why(tiny_models):
    n_layers = tiny_models["tiny-llama"].info.n_layers
    with pytest.raises(InputError, match=f"from 1 to {n_layers - 1}"):
        capture(PROMPT, Session(tiny_models["tiny-llama"]), max_new_tokens=3, speculative=f"layers:n={n_layers}")
    with pytest.raises(InputError, match="Llama-like"):
        capture(PROMPT, Session(tiny_models["tiny-gpt2"]), max_new_tokens=3, speculative="layers")
    with pytest.raises(InputError, match="encoder"):
        capture("a b c", Session(tiny_models["tiny-bert"]), speculative="prompt-lookup")


@pytest.mark.parametrize("spec", ["prompt-lookup", "layers:n=1,k=3", "layers:k=2"])
def test_real_drafters_give_plain_tokens_at_temperature_zero(spec, tiny_llama):
    plain = capture(PROMPT, Session(tiny_llama), max_new_tokens=12)
    run = capture(PROMPT, Session(tiny_llama), max_new_tokens=12, speculative=spec)
    assert run.token_ids.tolist() == plain.token_ids.tolist()
    assert len(run.drafts) >= 1
    assert 1 + sum(d.accepted + (d.target_token is not None) for d in run.drafts) == run.n_generated


def test_layers_draft_is_the_models_first_blocks_with_the_shared_head(tiny_llama):
    """The layers drafter's first proposal is the arg-max of head(norm(hidden state after block n - 1))."""
    model = tiny_llama.model
    session = Session(tiny_llama)
    run = capture(PROMPT, session, max_new_tokens=3, speculative="layers:n=1,k=1")
    ids = torch.tensor([run.token_ids[: run.n_prompt + 1].tolist()])  # the prompt and the first token
    with torch.inference_mode():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0, -1]  # [hidden] after block 0
        expected = int(model.lm_head(model.model.norm(hidden)).argmax())
    assert run.drafts[0].proposed == (expected,)
    assert model.config.num_hidden_layers == tiny_llama.info.n_layers  # restored after drafting


def test_verified_run_equals_plain_decoding_token_for_token_and_array_for_array(tiny_llama, monkeypatch):
    plain, run, _session = _plain_and_speculative(tiny_llama, monkeypatch)
    assert run.token_ids.tolist() == plain.token_ids.tolist()
    assert run.text == plain.text and run.finish_reason == plain.finish_reason
    assert len(run.steps) == len(plain.steps)  # one event per position, as plain decoding emits them
    for name in ACTIVATION_NAMES + STAT_NAMES:
        assert_close(run.array(name), plain.array(name), 1e-4, equal_nan=True, err_msg=name)
    np.testing.assert_array_equal(run.array("pred_top_ids")[:, :3], plain.array("pred_top_ids")[:, :3])
    np.testing.assert_array_equal(run.array("token_rank"), plain.array("token_rank"))
    for step in range(len(plain.steps)):
        np.testing.assert_array_equal(run.kv_bytes_per_layer(step), plain.kv_bytes_per_layer(step))
        a, b = run.steps[step].choice, plain.steps[step].choice
        assert (a is None) == (b is None)
        if a is not None:
            assert (a.token_id, a.rank, a.top_ids[:3]) == (b.token_id, b.rank, b.top_ids[:3])
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    # both outcomes happened, and each kept draft is a speculative token
    assert any(d.accepted for d in run.drafts) and any(d.rejected for d in run.drafts)
    kinds = [t.kind for t in run.tokens[run.n_prompt:]]
    assert kinds.count(TokenKind.SPECULATIVE) == sum(d.accepted for d in run.drafts)


def test_draft_records_are_consistent(tiny_llama, monkeypatch):
    plain, run, _session = _plain_and_speculative(tiny_llama, monkeypatch, wrong_every=4)
    ids = run.token_ids
    for d in run.drafts:
        assert 0 <= d.accepted <= len(d.proposed)
        assert list(ids[d.position: d.position + d.accepted]) == list(d.proposed[: d.accepted])
        if d.rejected and d.target_token is not None:
            assert d.target_token != d.rejected[0]  # the model chose otherwise where the draft went wrong
            assert ids[d.position + d.accepted] == d.target_token
    total = summarize(run.drafts)
    assert 1 + total.generated == run.n_generated == plain.n_generated
    assert total.accepted < total.proposed  # the oracle's wrong tokens were all rejected


def test_budget_limits_drafts_to_the_tokens_asked_for(tiny_llama, monkeypatch):
    plain, run, _session = _plain_and_speculative(tiny_llama, monkeypatch, max_new=3, spec="prompt-lookup:k=8",
                                                  wrong_every=1000)
    assert run.n_generated == 3 and run.token_ids.tolist() == plain.token_ids.tolist()
    assert all(d.position + len(d.proposed) <= run.n_tokens for d in run.drafts)


def test_kv_cache_is_cropped_to_the_kept_positions(tiny_llama, monkeypatch):
    """After rejections the cache holds exactly the run's positions, with the keys the run captured."""
    _plain, run, session = _plain_and_speculative(tiny_llama, monkeypatch)
    assert any(d.rejected for d in run.drafts)
    assert session._cache_ids == run.token_ids.tolist()
    keys = run.array("keys")  # [layers, kv_heads, N, head_dim]
    for i, layer in enumerate(session._cache.layers):
        assert layer.keys.shape[-2] == run.n_tokens
        assert_close(layer.keys[0].numpy(), keys[i], 1e-5)
        assert_close(layer.values[0].numpy(), run.array("values")[i], 1e-5)
    # and the next run reuses that cache as a prefix, like after plain decoding
    longer = capture(run.text + " again", session, previous=run, max_new_tokens=2)
    assert longer.steps[0].cached_prefix > run.n_prompt


def test_saved_run_keeps_its_drafts(tiny_llama, monkeypatch, tmp_path):
    _plain, run, _session = _plain_and_speculative(tiny_llama, monkeypatch)
    path = tmp_path / "spec.npz"
    run.save(path)
    loaded = load_run(path)
    assert loaded.drafts == run.drafts
    assert loaded.request.speculative == run.request.speculative
    assert [t.kind for t in loaded.tokens] == [t.kind for t in run.tokens]
    assert run.upto(len(run.steps) - 1).drafts == run.drafts
    early = run.upto(3)
    assert all(d.position + d.accepted <= early.n_tokens for d in early.drafts)
    assert len(early.drafts) < len(run.drafts)


@pytest.mark.parametrize("garble", [
    lambda h: h["drafts"][0].update(accepted=99),
    lambda h: h["drafts"][0].update(proposed="abc"),
    lambda h: h["drafts"][0].update(position=10**9),
    lambda h: h.update(drafts={"a": 1}),
    lambda h: h["request"].update(speculative=[1]),
])
def test_garbled_drafts_in_a_file_are_refused(garble, tiny_llama, monkeypatch, tmp_path):
    _plain, run, _session = _plain_and_speculative(tiny_llama, monkeypatch, max_new=6)
    path = tmp_path / "spec.npz"
    run.save(path)
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    header = json.loads(members["header"].tobytes())
    garble(header)
    members["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with zipfile.ZipFile(path, "w") as zf:  # np.savez writes the same layout
        for name, value in members.items():
            with zf.open(name + ".npy", "w") as fh:
                np.lib.format.write_array(fh, value)
    with pytest.raises(RunFileError):
        load_run(path)


@pytest.mark.parametrize("spec", ["layers:n=1", "prompt-lookup"])
def test_sampled_speculation_runs_and_keeps_its_invariants(spec, tiny_llama, monkeypatch):
    if spec == "prompt-lookup":  # a deterministic drafter (q one-hot): the oracle proposes a plain sample's tokens
        plain = capture(PROMPT, Session(tiny_llama), max_new_tokens=10, temperature=0.8, seed=3)
        monkeypatch.setitem(drafting.DRAFTER_CLASSES, "prompt-lookup",
                            oracle_drafter(plain.token_ids.tolist(), tiny_llama.info.vocab_size))
    run = capture(PROMPT, Session(tiny_llama), max_new_tokens=10, temperature=0.8, seed=3, speculative=spec)
    assert any(d.proposed for d in run.drafts)
    assert run.n_generated == 10
    assert 1 + summarize(run.drafts).generated == run.n_generated
    assert all(np.isfinite(run.array("token_logprob")[run.n_prompt:]))


def test_real_model_prompt_lookup_matches_plain_decoding(default_model):
    torch.set_num_threads(1)
    prompt = "Repeat exactly: the cat sat on the mat, the cat sat on the mat."
    plain = capture(prompt, Session(default_model), max_new_tokens=10, chat=True)
    run = capture(prompt, Session(default_model), max_new_tokens=10, chat=True, speculative="prompt-lookup")
    assert run.token_ids.tolist() == plain.token_ids.tolist()
    assert summarize(run.drafts).accepted > 0  # the answer copies the prompt: some drafts are right
    for name in ("resid", "final_resid", "token_logprob"):
        a, b = run.array(name)[plain.n_prompt:], plain.array(name)[plain.n_prompt:]
        assert_close(a.astype(np.float32), b.astype(np.float32), 2e-2, err_msg=name)


def test_all_array_fields_are_covered():
    assert set(ACTIVATION_NAMES + STAT_NAMES) | {"pred_top_ids", "token_rank"} == set(ARRAY_FIELDS)
