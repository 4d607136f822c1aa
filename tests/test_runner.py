"""The instrumented runner against transformers itself: attention, residual sums, KV sizes, generation."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from numeric import approx, assert_close

from explorer.core.api import capture, run_request
from explorer.core.errors import InputError, PromptTooLongError
from explorer.core.events import GenerationSettings, RunRequest, TokenKind
from explorer.core.runner import Session

PROMPT = "The capital of France is Paris. Once upon a time"


@pytest.fixture(scope="module")
def eager_models(tiny_models):
    """Eager-attention copies (same weights) that return attention weights."""
    out = {}
    for name, loaded in tiny_models.items():
        model = copy.deepcopy(loaded.model)
        model.set_attn_implementation("eager")
        out[name] = model
    return out


def _eager(model, ids) -> tuple:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(ids)]), output_attentions=True, output_hidden_states=True)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_attention_matches_eager_after_every_step(name, tiny_models, eager_models):
    loaded = tiny_models[name]
    info = loaded.info
    checked = []

    def on_step(event, run):
        out = _eager(eager_models[name], run.token_ids)
        assert len(out.attentions) == info.n_layers
        for layer in range(info.n_layers):
            for head in range(info.n_heads):
                ours = run.attention(layer, head)  # [N, N]
                theirs = out.attentions[layer][0, head].numpy()
                assert ours.shape == theirs.shape == (run.n_tokens, run.n_tokens)
                assert_close(ours, theirs, 2e-3, err_msg=f"step {event.step} L{layer} H{head}")
        checked.append(event.step)

    run = capture(PROMPT, Session(loaded), max_new_tokens=3, on_step=on_step)
    expected_steps = [0, 1, 2, 3] if info.is_causal else [0]
    assert checked == expected_steps
    assert run.n_tokens == run.n_prompt + (3 if info.is_causal else 0)


def test_attention_rows_slice_matches_full(tiny_models):
    run = capture(PROMPT, Session(tiny_models["tiny-llama"]), max_new_tokens=2)
    full = run.attention(1, 3)
    assert_close(run.attention(1, 3, rows=slice(4, 9)), full[4:9], 1e-6)
    assert_close(full.sum(1), 1.0, 1e-5)
    assert np.all(np.triu(full, 1) == 0)  # causal


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_embedding_plus_components_equals_last_residual(name, tiny_models, eager_models):
    loaded = tiny_models[name]
    L = loaded.info.n_layers
    run = capture(PROMPT, Session(loaded, store_dtype=torch.float32), max_new_tokens=4)
    total = run.hidden_states(0) + run.array("attn_out").sum(0) + run.array("mlp_out").sum(0)  # [N, D]
    assert_close(total, run.hidden_states(L), 1e-4)
    assert_close(run.array("final_resid"), run.hidden_states(L), 1e-6)
    # hidden_states(l) agree with transformers' (its last entry is after the final norm: compare before it)
    out = _eager(eager_models[name], run.token_ids)
    for layer in range(L):
        assert_close(run.hidden_states(layer), out.hidden_states[layer][0].numpy(), 1e-4)
    assert_close(run.norm.apply(run.hidden_states(L)), out.hidden_states[L][0].numpy(), 1e-4)


def test_float16_storage_stays_close(tiny_models):
    loaded = tiny_models["tiny-llama"]
    run = capture(PROMPT, Session(loaded), max_new_tokens=2)
    assert run.array("queries").dtype == np.float16 and run.array("final_resid").dtype == np.float32
    total = run.hidden_states(0).astype(np.float32) + run.array("attn_out").astype(np.float32).sum(0) \
        + run.array("mlp_out").astype(np.float32).sum(0)
    scale = np.abs(run.array("final_resid")).max()
    assert np.abs(total - run.array("final_resid")).max() < 1e-2 * scale


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_kv_bytes_follow_the_formula_at_every_step(name, tiny_models):
    info = tiny_models[name].info
    seen = []

    def on_step(event, run):
        expected = 2 * info.n_kv_heads * info.head_dim * run.n_tokens * 4  # float32 cache, per layer
        kv = run.kv_bytes_per_layer(event.step)
        assert kv.shape == (info.n_layers,)
        assert np.all(kv == expected), (event.step, kv, expected)
        seen.append(int(kv.sum()))

    capture(PROMPT, Session(tiny_models[name]), max_new_tokens=5, on_step=on_step)
    assert len(seen) == 6 and seen == sorted(seen) and len(set(seen)) == 6


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_greedy_equals_model_generate(name, tiny_models):
    loaded = tiny_models[name]
    run = capture(PROMPT, Session(loaded), max_new_tokens=12)
    ids = torch.tensor([run.token_ids[: run.n_prompt].tolist()])
    with torch.inference_mode():
        ref = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                    pad_token_id=loaded.tokenizer.eos_token_id)
    assert run.token_ids.tolist() == ref[0].tolist()[: run.n_tokens]
    if run.finish_reason == "max_tokens":
        assert run.n_generated == 12
    # every chosen token is the arg-max of the logprobs the runner reports
    for event in run.steps[:-1]:
        assert event.choice.rank == 0 and event.choice.token_id == event.choice.top_ids[0]


def test_same_seed_same_sample_other_seed_differs(tiny_session):
    def sampled(seed):
        return capture(PROMPT, tiny_session, max_new_tokens=24, temperature=1.5, seed=seed).token_ids.tolist()

    first = sampled(7)
    assert sampled(7) == first
    assert sampled(8) != first
    greedy = capture(PROMPT, tiny_session, max_new_tokens=24).token_ids.tolist()
    assert first != greedy


def test_top_k_one_is_greedy(tiny_session):
    greedy = capture(PROMPT, tiny_session, max_new_tokens=8).token_ids.tolist()
    assert capture(PROMPT, tiny_session, max_new_tokens=8, temperature=3.0, top_k=1, seed=3).token_ids.tolist() \
        == greedy


def test_cancel_from_on_step_stops_within_one_step(tiny_llama):
    session = Session(tiny_llama)
    cancel = threading.Event()

    def on_step(event, run):
        if event.step == 3:
            cancel.set()

    run = capture(PROMPT, session, max_new_tokens=200, on_step=on_step, cancel=cancel)
    assert run.finish_reason == "cancelled"
    assert [s.step for s in run.steps] == [0, 1, 2, 3]
    # the session still works and gives what a fresh one gives
    again = capture(PROMPT, session, max_new_tokens=5)
    fresh = capture(PROMPT, Session(tiny_llama), max_new_tokens=5)
    assert again.token_ids.tolist() == fresh.token_ids.tolist()
    np.testing.assert_array_equal(again.array("keys"), fresh.array("keys"))


def test_cancel_from_another_thread_mid_forward(tiny_llama):
    session = Session(tiny_llama)
    cancel = threading.Event()
    steps = []

    def on_step(event, run):
        steps.append(event.step)
        if event.step == 2:
            setter = threading.Thread(target=cancel.set)
            setter.start()
            setter.join()

    run = capture(PROMPT, session, max_new_tokens=200, on_step=on_step, cancel=cancel)
    assert run.finish_reason == "cancelled" and steps == [0, 1, 2]
    # a cancel inside a forward pass (raised by a layer hook) leaves no half-updated cache behind
    cancel2 = threading.Event()
    cancel2.set()
    cut = capture(PROMPT + " more", session, previous=run, max_new_tokens=5, cancel=cancel2)
    assert cut.finish_reason == "cancelled" and cut.n_tokens == 0
    after = capture(PROMPT, session, previous=cut, max_new_tokens=3)
    fresh = capture(PROMPT, Session(tiny_llama), max_new_tokens=3)
    assert after.token_ids.tolist() == fresh.token_ids.tolist()
    assert_close(after.array("final_resid"), fresh.array("final_resid"), 1e-5)


def test_prefix_reuse_matches_a_fresh_run(tiny_llama):
    session = Session(tiny_llama, store_dtype=torch.float32)
    first = capture("The capital of France is", session, max_new_tokens=3)
    longer = first.text + " Paris. Once upon a time"
    reused = capture(longer, session, previous=first, max_new_tokens=3)
    fresh = capture(longer, Session(tiny_llama, store_dtype=torch.float32), max_new_tokens=3)
    prefill = reused.steps[0]
    assert prefill.cached_prefix > 0
    n_cached = prefill.cached_prefix
    assert n_cached <= first.n_tokens
    assert [t.kind for t in reused.tokens[:n_cached]] == [TokenKind.CACHED_PREFIX] * n_cached
    assert all(t.kind != TokenKind.CACHED_PREFIX for t in reused.tokens[n_cached:])
    assert reused.token_ids.tolist() == fresh.token_ids.tolist()
    assert reused.text == fresh.text
    for name in ("queries", "keys", "values", "resid", "attn_out", "mlp_out", "final_resid", "pred_entropy",
                 "pred_top_logprobs", "token_logprob"):
        assert_close(reused.array(name), fresh.array(name), 0.0001, equal_nan=True, err_msg=name)
    np.testing.assert_array_equal(reused.array("pred_top_ids")[:, :3], fresh.array("pred_top_ids")[:, :3])
    np.testing.assert_array_equal(reused.array("token_rank"), fresh.array("token_rank"))
    for pos in (0, n_cached - 1, n_cached, reused.n_tokens - 1):
        assert_close(reused.next_token_logprobs(pos), fresh.next_token_logprobs(pos), 1e-4)
    for step in range(len(fresh.steps)):
        np.testing.assert_array_equal(reused.kv_bytes_per_layer(step), fresh.kv_bytes_per_layer(step))
    for layer in range(tiny_llama.info.n_layers):
        assert_close(reused.attention(layer, 1), fresh.attention(layer, 1), 1e-5)


def test_no_reuse_when_the_prompt_differs(tiny_llama):
    session = Session(tiny_llama)
    first = capture("Once upon a time", session, max_new_tokens=2)
    other = capture("The capital of France", session, previous=first, max_new_tokens=2)
    assert other.steps[0].cached_prefix == 0
    assert all(t.kind != TokenKind.CACHED_PREFIX for t in other.tokens)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_next_token_logprobs_equal_the_models_logits(name, tiny_models):
    loaded = tiny_models[name]
    run = capture(PROMPT, Session(loaded), max_new_tokens=3)
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([run.token_ids.tolist()])).logits[0]  # [N, vocab]
    ref = torch.log_softmax(logits.double(), -1).numpy()
    for pos in (0, run.n_prompt - 1, run.n_tokens - 1):
        assert_close(run.next_token_logprobs(pos), ref[pos], 1e-4)
    # the choice at the end of the prefill is the prediction at the last prompt position
    choice = run.steps[0].choice
    assert choice.token_id == int(np.argmax(ref[run.n_prompt - 1]))
    assert choice.logprob == approx(ref[run.n_prompt - 1, choice.token_id], 1e-4)
    # per-position stats agree with the same distribution
    np.testing.assert_array_equal(run.array("pred_top_ids")[:, 0], ref.argmax(-1))
    nxt = run.token_ids[1:]
    assert_close(run.array("token_logprob")[1:], ref[np.arange(run.n_tokens - 1), nxt], 1e-4)
    assert np.isnan(run.array("token_logprob")[0])
    # ranks, entropies and top-k logprobs against the reference distribution, prompt and decode positions alike
    chosen = ref[np.arange(run.n_tokens - 1), nxt]  # [N - 1]
    np.testing.assert_array_equal(run.array("token_rank")[1:], (ref[:-1] > chosen[:, None]).sum(-1))
    assert_close(run.array("pred_entropy"), -(np.exp(ref) * ref).sum(-1), 1e-3)
    top = run.array("pred_top_logprobs").shape[1]
    assert_close(run.array("pred_top_logprobs"), -np.sort(-ref, axis=-1)[:, :top], 1e-4)
    assert choice.entropy == approx(-(np.exp(ref[run.n_prompt - 1]) * ref[run.n_prompt - 1]).sum(), 1e-3)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_sampled_choices_report_their_rank_and_logprob(name, tiny_models):
    loaded = tiny_models[name]
    run = capture(PROMPT, Session(loaded), max_new_tokens=6, temperature=1.5, seed=3)
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([run.token_ids.tolist()])).logits[0]  # [N, vocab]
    ref = torch.log_softmax(logits.double(), -1).numpy()
    ranks = []
    for step in run.steps[:-1]:
        pos = step.start + step.n_new - 1  # the prediction this step's choice was sampled from
        c = step.choice
        assert c.logprob == approx(ref[pos, c.token_id], 1e-4)
        assert c.rank == int((ref[pos] > ref[pos, c.token_id]).sum())
        ranks.append(c.rank)
        # the sampled token's own position reports the same logprob and rank
        assert run.array("token_logprob")[pos + 1] == approx(c.logprob, 1e-6)
        assert run.array("token_rank")[pos + 1] == c.rank
    assert any(r > 0 for r in ranks), "at temperature 1.5 some sampled token should not be the arg-max"


def test_encoder_has_no_prediction(tiny_models):
    run = capture("The capital of France", Session(tiny_models["tiny-bert"]), max_new_tokens=5)
    assert run.finish_reason == "prompt_only" and run.n_generated == 0
    assert run.tokens[0].kind == TokenKind.SPECIAL
    with pytest.raises(ValueError, match="encoder"):
        run.next_token_logprobs(0)


def test_bad_inputs_are_refused(tiny_session):
    with pytest.raises(InputError, match="empty"):
        capture("", tiny_session)  # whitespace is a valid prompt (issue 16 item 13)
    for kwargs in ({"temperature": -1.0}, {"temperature": float("nan")}, {"top_k": 0}, {"top_p": 0.0},
                   {"top_p": 1.5}, {"max_new_tokens": -1}):
        with pytest.raises(InputError):
            capture("hello", tiny_session, **kwargs)
    with pytest.raises(PromptTooLongError) as err:
        capture("the " * 600, tiny_session)
    assert err.value.limit == 512 and "context" in str(err.value)
    with pytest.raises(PromptTooLongError):
        capture("hello world", tiny_session, max_new_tokens=600)
    # after refusals the session still runs
    assert capture("hello", tiny_session, max_new_tokens=1).n_generated == 1


def test_stream_events_are_immutable(tiny_session):
    request = RunRequest("Once upon a time", settings=GenerationSettings(max_new_tokens=2))
    run = run_request(tiny_session, request)
    event = run.steps[0]
    with pytest.raises(ValueError):
        event.queries[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        run.array("resid")[0, 0, 0] = 1.0
    assert [s.n_new for s in run.steps] == [run.n_prompt, 1, 1]
    assert run.steps[-1].finish_reason == "max_tokens"
    names = [k for k, _ in event.timings_ms]
    assert names[0] == "tokenize" and "embed" in names and "layer.0" in names and "lm_head" in names


def test_real_bert_encoder_attention_matches_eager():
    """all-MiniLM-L6-v2 (real weights): attention and hidden states equal transformers' eager outputs."""
    from explorer.core.models import load_model

    loaded = load_model("minilm-l6")
    run = capture("Attention is bidirectional in an encoder, even for émigrés.", Session(loaded), max_new_tokens=3)
    assert run.finish_reason == "prompt_only" and run.n_generated == 0
    eager = copy.deepcopy(loaded.model)
    eager.set_attn_implementation("eager")
    out = _eager(eager, run.token_ids)
    for layer in range(loaded.info.n_layers):
        for head in range(loaded.info.n_heads):
            assert_close(run.attention(layer, head), out.attentions[layer][0, head].numpy(), 2e-3)
        assert_close(run.hidden_states(layer + 1), out.hidden_states[layer + 1][0].numpy(), 0.02)
    assert np.triu(run.attention(0, 0), 1).sum() > 0.1  # not causal
