"""The captured-array table (core/arrays.py) is what runs, events, budgets and files actually use;
one rule each for massive positions and depth names; a prompt is tokenized once on its way in."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from numeric import assert_close

from explorer.core import arrays, budget, runfile
from explorer.core.analysis import depth, massive, projection
from explorer.core.api import capture, run_request
from explorer.core.arrays import ACTIVATIONS, CAPTURED, FALLBACKS, OPTIONAL, TOP_K, model_dims
from explorer.core.capture import StepRecord
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.naming import block_label, block_output_depth, depth_label
from explorer.core.runner import Session


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_every_event_array_has_the_tables_shape_and_dtype(name, tiny_models):
    events = []
    run = capture("One two three four", tiny_models[name], max_new_tokens=2, on_step=lambda e, _r: events.append(e))
    assert events
    for event in events:
        assert set(event.arrays) == set(CAPTURED)
        for key, spec in CAPTURED.items():
            a = event.arrays[key]
            assert a.shape == spec.shape_for(model_dims(run.info, event.n_new)), key
            assert a.dtype == np.dtype(spec.dtype), key
            assert getattr(event, key) is a  # the attribute is the same array
    for key, spec in CAPTURED.items():
        assert run.array(key).shape == spec.shape_for(model_dims(run.info, run.n_tokens)), key


def test_budget_estimate_is_the_tables_bytes(tiny_session):
    run = capture("Count my bytes", tiny_session, max_new_tokens=3)
    per = budget.array_bytes_per_position(run.info)
    assert set(per) == set(CAPTURED)
    for key in CAPTURED:  # one position of each stored array
        assert per[key] == run.array(key).nbytes // run.n_tokens, key


def test_fallbacks_grow_and_end_at_the_optional_arrays():
    assert FALLBACKS[-1] == tuple(sorted(OPTIONAL))
    for smaller, larger in zip(FALLBACKS, FALLBACKS[1:], strict=False):
        assert set(smaller) < set(larger)
    assert not OPTIONAL & {"queries", "keys", "final_resid", *arrays.STATS}  # what every panel needs stays


def test_capture_record_fields_are_the_tables_activations():
    tensors = [f.name for f in dataclasses.fields(StepRecord) if "Tensor" in str(f.type)]
    assert tensors == [*ACTIVATIONS, "final_resid"]


def test_run_file_expects_the_tables_shapes_and_kinds(tiny_session):
    run = capture("Save me", tiny_session, max_new_tokens=2)
    expected = runfile._expected_shapes(run.info, run.n_tokens, len(run.steps))
    for key in CAPTURED:
        got = run.array(key).shape
        want = expected[key]
        assert len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want, strict=True)), key
        assert run.array(key).dtype.kind in runfile._DTYPES[key], key


def test_a_step_event_refuses_arrays_outside_the_table(tiny_session):
    event = next(iter(tiny_session.stream(RunRequest("Hello"))))
    with pytest.raises(ValueError, match="core/arrays.py"):
        dataclasses.replace(event, arrays={**event.arrays, "surprise": event.keys})
    missing = dict(event.arrays)
    del missing["values"]
    with pytest.raises(ValueError, match="core/arrays.py"):
        dataclasses.replace(event, arrays=missing)
    with pytest.raises(AttributeError):
        event.not_an_array  # noqa: B018
    wide = event.with_arrays(resid=event.resid.astype(np.float32))
    assert wide.resid.dtype == np.float32 and wide.keys is event.keys and event.resid.dtype == np.float16


# --- one rule for massive positions -----------------------------------------------------------------


def _states(n: int = 12, depths: int = 4, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(depths, n, dim)).astype(np.float32)  # [L+1, N, D]


class _RunOf:
    """The part of a Run that position_mask reads."""

    def __init__(self, resid: np.ndarray):
        self._resid = resid
        self.n_tokens = resid.shape[1]

    def array(self, name: str) -> np.ndarray:
        assert name == "resid"
        return self._resid


def test_a_position_massive_at_one_depth_only_is_massive_for_every_view():
    states = _states()
    states[2, 3] *= 15.0  # 15x longer at depth 2 only: massive by the one rule (factor 10)
    expected = np.zeros(12, bool)
    expected[3] = True
    np.testing.assert_array_equal(massive.massive_positions(states), expected)
    _coords, _basis, flagged = projection.project_trajectories(states)
    np.testing.assert_array_equal(flagged, expected)  # the projection view
    mask = depth.position_mask(_RunOf(states), skip_massive=True)
    np.testing.assert_array_equal(mask, ~expected)  # the depth views


def test_massive_rule_flags_nothing_when_half_the_positions_stand_out():
    states = _states()
    states[:, :6] *= 50.0
    assert not massive.massive_positions(states).any()
    assert depth.position_mask(_RunOf(states), skip_massive=True).all()


# --- one naming rule for depth ----------------------------------------------------------------------


def test_depth_labels():
    assert [depth_label(d) for d in range(3)] == ["embed", "after block 0", "after block 1"]
    assert depth_label(4, short=True) == "after 3" and block_label(2) == "block 2"
    assert block_output_depth(0) == 1
    with pytest.raises(ValueError):
        depth_label(-1)


def test_hidden_states_is_indexed_by_depth(tiny_session):
    run = capture("Depth zero is the embedding", tiny_session, max_new_tokens=1)
    L = run.info.n_layers
    emb = tiny_session.adapter.embedding(tiny_session.loaded.model).weight.detach().numpy()  # [vocab, D]
    assert_close(run.hidden_states(0), emb[run.token_ids], 1e-2)  # depth 0: the embeddings (float16 stored)
    assert_close(run.hidden_states(depth=L), run.array("final_resid"), 1e-2)  # after the last block
    np.testing.assert_array_equal(run.hidden_states(layer=2), run.hidden_states(depth=2))  # the old keyword
    with pytest.raises(TypeError):
        run.hidden_states()
    with pytest.raises(TypeError):
        run.hidden_states(1, layer=1)


# --- a prompt is checked and tokenized once ----------------------------------------------------------


def _count_encodes(monkeypatch, tokenizer) -> list:
    calls: list = []
    original = type(tokenizer).__call__

    def counted(self, *args, **kwargs):
        calls.append(args[:1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counted)
    return calls


def test_fit_request_then_stream_tokenizes_once(tiny_llama, monkeypatch):
    session = Session(tiny_llama)
    request = RunRequest("Tokenize me only once, please", settings=GenerationSettings(max_new_tokens=2))
    expected = capture(request.prompt, session, max_new_tokens=2)
    calls = _count_encodes(monkeypatch, tiny_llama.tokenizer)
    fitted, plan = budget.fit_request(session, request)
    run = run_request(session, fitted)
    assert len(calls) == 1, calls
    assert run.text == expected.text and list(run.token_ids) == list(expected.token_ids)
    np.testing.assert_array_equal(run.array("pred_top_ids"), expected.array("pred_top_ids"))
    assert run.timings(0)["tokenize"] > 0  # the prepared prompt's tokenize time is reported


def test_a_stream_of_another_prompt_does_not_reuse_the_prepared_one(tiny_llama, monkeypatch):
    session = Session(tiny_llama)
    budget.fit_request(session, RunRequest("First prompt", settings=GenerationSettings(max_new_tokens=1)))
    run = run_request(session, RunRequest("Second prompt", settings=GenerationSettings(max_new_tokens=1)))
    assert run.text.startswith("Second prompt")
    # a prepared prompt serves one stream only, and its settings are checked again when they changed
    request = RunRequest("Hi", settings=GenerationSettings(max_new_tokens=1))
    budget.fit_request(session, request)
    longer = dataclasses.replace(request, settings=GenerationSettings(max_new_tokens=10_000))
    from explorer.core.errors import PromptTooLongError

    with pytest.raises(PromptTooLongError):
        next(iter(session.stream(longer)))


def test_top_k_of_the_table_is_what_the_runner_keeps(tiny_session):
    run = capture("Top k", tiny_session, max_new_tokens=1)
    assert run.array("pred_top_ids").shape[1] == TOP_K
