"""Batched generation: a padded batch computes what each prompt computes alone; masks, padding, bad input."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from numeric import assert_close

from explorer.core import engine as eng
from explorer.core.analysis import batching as bt
from explorer.core.analysis.batch_bench import measure_throughput
from explorer.core.analysis.batch_jobs import BatchRun, MeasureThroughput
from explorer.core.api import run_request
from explorer.core.errors import InputError, PromptTooLongError
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.runner import Session

PROMPTS = ["The capital of France is", "Once upon a time there was a small language model that",
           "def add", "Tokens, embeddings, attention heads and"]


def _greedy_alone(session: Session, prompt: str, n: int, chat: bool = False) -> list[int]:
    """The app's own instrumented run of one prompt at temperature 0: its generated ids."""
    settings = GenerationSettings(max_new_tokens=n, stop_at_eos=False)
    run = run_request(session, RunRequest(prompt, chat=chat, settings=settings))
    return run.token_ids[run.n_prompt:].tolist()


def test_batch_equals_each_prompt_alone(tiny_llama):
    rows = bt.encode_prompts(tiny_llama, PROMPTS, 10)
    assert len({len(r) for r in rows}) > 2  # different lengths: real padding
    batch = bt.run_batch(tiny_llama, rows, 10, stop_at_eos=False, keep_logits=True)
    for b, row in enumerate(rows):
        alone = bt.run_batch(tiny_llama, [row], 10, stop_at_eos=False, keep_logits=True)
        assert batch.generated[b] == alone.generated[0]
        assert_close(batch.logits[:, b], alone.logits[:, 0], 1e-4)
        assert batch.row_tokens(b) == row + list(alone.generated[0])


def test_batch_equals_the_instrumented_runner_at_temperature_0(tiny_llama):
    session = Session(tiny_llama)  # the runner routes attention through the capturing function: batch after it
    singles = [_greedy_alone(session, p, 8) for p in PROMPTS]
    rows = bt.encode_prompts(tiny_llama, PROMPTS, 8)
    batch = bt.run_batch(tiny_llama, rows, 8, stop_at_eos=False)
    assert [list(g) for g in batch.generated] == singles


def test_python_api_runs_a_batch(tiny_llama):
    import explorer

    res = explorer.capture_batch(PROMPTS[:2], tiny_llama, max_new_tokens=3, stop_at_eos=False)
    rows = bt.encode_prompts(tiny_llama, PROMPTS[:2], 3)
    assert res.prompt_lengths == tuple(map(len, rows)) and all(len(g) == 3 for g in res.generated)
    with pytest.raises(InputError, match="empty"):
        explorer.capture_batch([], tiny_llama)


def test_left_padding_mask_and_positions_for_different_lengths():
    ids, mask = bt.pad_left([[5, 6, 7], [8], [1, 2]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 1, 2]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    pos = bt.positions_from_mask(np.concatenate([mask, [[1], [1], [0]]], axis=1))
    assert pos[:, -2].tolist() == [2, 0, 1]  # every row's last prompt token at its own length - 1
    assert pos[:, -1].tolist()[:2] == [3, 1]  # a decode token continues its row's count


def test_batch_result_masks_padding_and_finished_rows(tiny_llama):
    rows = bt.encode_prompts(tiny_llama, PROMPTS[:3], 6)
    res = bt.run_batch(tiny_llama, rows, 6)
    width = max(map(len, rows))
    assert res.n_prompt == width and res.input_ids.shape == res.attention_mask.shape
    for b, row in enumerate(rows):
        prompt_mask = res.attention_mask[b, :width]
        assert prompt_mask.sum() == len(row) and prompt_mask[width - len(row):].all()  # padding on the left only
        assert (res.input_ids[b, :width - len(row)] == res.pad_id).all()
        gen_mask = res.attention_mask[b, width:]
        assert gen_mask.sum() == len(res.generated[b]) and (np.diff(gen_mask) <= 0).all()  # finished: padding after
    real = sum(len(r) + len(g) for r, g in zip(rows, res.generated, strict=True))
    assert res.padded_slots == res.attention_mask.size - real


def test_a_finished_row_stops_and_is_padded(tiny_llama, monkeypatch):
    rows = bt.encode_prompts(tiny_llama, PROMPTS[:2], 6)
    probe = bt.run_batch(tiny_llama, rows, 6, stop_at_eos=False)
    first = probe.generated[0][2]  # pretend the third token of row 0 ends its text
    assert first not in probe.generated[1][:3]
    monkeypatch.setattr(bt, "eos_ids", lambda _loaded: {first})
    res = bt.run_batch(tiny_llama, rows, 6)
    assert res.finish[0] == "eos" and res.generated[0] == probe.generated[0][:3]
    cut = res.n_prompt + 3
    assert res.attention_mask[0, cut:].sum() == 0 and (res.input_ids[0, cut:] == res.pad_id).all()
    assert res.generated[1][:3] == probe.generated[1][:3]  # another row's end does not change this one


@pytest.mark.parametrize(("prompts", "new", "words"), [
    ([], 4, "empty"),
    (["x"] * 17, 4, "at most 16"),
    (["ok", ""], 4, "Prompt 2 is empty"),
    (["ok", 3], 4, "not text"),
    ("just one string", 4, "list of prompts"),
    (["ok"], -1, "Max new tokens"),
    (["ok"], 10_000, "Max new tokens"),
])
def test_bad_batches_get_a_clear_message(tiny_llama, prompts, new, words):
    with pytest.raises(InputError, match=words):
        bt.encode_prompts(tiny_llama, prompts, new)


def test_a_prompt_longer_than_the_context_names_the_prompt(tiny_llama):
    long = " ".join(["attention"] * (tiny_llama.info.context_length + 10))
    with pytest.raises(PromptTooLongError, match=r"Prompt 2: The prompt is \d+ tokens long"):
        bt.encode_prompts(tiny_llama, ["short", long], 4)


def test_an_encoder_cannot_batch_generate(tiny_models):
    with pytest.raises(InputError, match="encoder"):
        bt.encode_prompts(tiny_models["tiny-bert"], ["hello"], 4)


def test_batch_job_through_the_engine_returns_plain_picklable_data(tiny_llama):
    done = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if isinstance(event, eng.Done | eng.Failed):
            done.set()

    engine = eng.Engine(on_event, session=Session(tiny_llama))
    try:
        engine.submit(BatchRun(tuple(PROMPTS[:2]), max_new_tokens=4))
        assert done.wait(60)
        final = events[-1]
        assert isinstance(final, eng.Done), final
        back = pickle.loads(pickle.dumps(final.result))
        assert back.generated == final.result.generated and back.input_ids.shape[0] == 2
        done.clear()
        engine.submit(BatchRun((), max_new_tokens=4))
        assert done.wait(60)
        assert isinstance(events[-1], eng.Failed) and "empty" in events[-1].message
        done.clear()
        engine.submit(MeasureThroughput(sizes=(1, 2), prompt_tokens=8, new_tokens=3, repeats=1))
        assert done.wait(120)
        table = pickle.loads(pickle.dumps(events[-1].result))
        assert [r.batch for r in table.rows] == [1, 2] and all(r.step_ms > 0 and r.prefill_ms > 0 for r in table.rows)
    finally:
        engine.shutdown()
        eng.release(engine.thread)


def test_throughput_table_reports_each_size_and_rejects_bad_sizes(tiny_llama):
    table = measure_throughput(tiny_llama, (1, 4), prompt_tokens=8, new_tokens=3, repeats=2)
    assert [r.batch for r in table.rows] == [1, 4]
    row = table.rows[1]
    assert row.decode_tok_s == pytest.approx(4 / row.step_ms * 1e3)
    assert row.prefill_tok_s == pytest.approx(4 * table.prompt_tokens / row.prefill_ms * 1e3)
    assert "| 4 |" in table.text()
    for sizes in [(), (0,), (17,), (1.5,)]:
        with pytest.raises(InputError, match="Batch sizes"):
            measure_throughput(tiny_llama, sizes)


def test_real_model_batch_equals_single_runs(default_model):
    prompts = ["What is the capital of Italy?", "Why is the sky blue? Answer in one sentence."]  # chat: padded
    session = Session(default_model)
    singles = [_greedy_alone(session, p, 6, chat=True) for p in prompts]
    rows = bt.encode_prompts(default_model, prompts, 6, chat=True)
    assert len(rows[0]) != len(rows[1])
    res = bt.run_batch(default_model, rows, 6, stop_at_eos=False)
    assert [list(g) for g in res.generated] == singles
    assert res.kv_bytes_per_token == 30 * 3 * 64 * 2 * 4  # SmolLM2 in float32


def test_a_batch_reports_each_step_and_can_be_cancelled(tiny_llama):
    from explorer.core.errors import Cancelled

    rows = bt.encode_prompts(tiny_llama, PROMPTS[:2], 5)
    seen, cancel = [], threading.Event()

    def progress(fraction, message):
        seen.append(fraction)
        if len(seen) == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        bt.run_batch(tiny_llama, rows, 5, stop_at_eos=False, cancel=cancel, progress=progress)
    assert seen == [pytest.approx(1 / 5), pytest.approx(2 / 5)]
