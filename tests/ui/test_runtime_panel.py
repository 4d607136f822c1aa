"""Runtime panel: a batch drawn row by row with padding and mask, the paged layout, the throughput plot, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.core.analysis import batching as bt
from explorer.core.analysis import paged_kv as pk
from explorer.core.analysis.batch_bench import ThroughputRow, ThroughputTable
from explorer.core.analysis.batch_jobs import BatchRun
from explorer.ui.panels.base import PanelServices
from explorer.ui.panels.runtime import RuntimePanel
from explorer.ui.panels.runtime_views import CELL_H, GAP, HEAD_H, LABEL_W, MASK_H

PROMPTS = ["What is the capital of France?", "What is the capital of Italy?", "Why?"]


@pytest.fixture
def batch(tiny_llama):
    rows = bt.encode_prompts(tiny_llama, PROMPTS, 5, chat=True,
                             system="You are a helpful assistant who answers questions about geography briefly.")
    return bt.run_batch(tiny_llama, rows, 5, stop_at_eos=False)


@pytest.fixture
def panel(make_panel):
    p, _sel = make_panel(RuntimePanel, size=(1200, 800))
    return p


class FakeEngine:
    """submit_job as the window gives it, run at once on this thread with the tiny model."""

    def __init__(self, loaded):
        self.loaded, self.requests = loaded, []

    def __call__(self, request, on_done=None, on_error=None, on_progress=None, key=None):
        self.requests.append(request)
        rows = bt.encode_prompts(self.loaded, request.prompts, request.max_new_tokens, chat=request.chat)
        on_done(bt.run_batch(self.loaded, rows, request.max_new_tokens))


def test_batch_rows_padding_and_mask_are_drawn(panel, batch):
    panel.show_batch(batch)
    assert panel.error is None and not panel.is_empty()
    grid = panel.grid
    width = batch.n_prompt
    short = int(np.argmin(batch.prompt_lengths))
    pad_cols = width - batch.prompt_lengths[short]
    assert pad_cols > 0
    y = HEAD_H + short * (CELL_H + MASK_H + GAP) + 5  # a cell of the shortest row
    assert grid.cell_at(LABEL_W + 1, y) == (short, 0)
    assert "padding" in grid.describe(short, 0) and "mask 0" in grid.describe(short, 0)
    last_prompt = grid.describe(short, width - 1)
    assert f"position id {batch.prompt_lengths[short] - 1}" in last_prompt and "mask 1" in last_prompt
    assert f"{batch.padded_slots} of {batch.attention_mask.size}" in panel.status.text()
    image = grid.grab().toImage()
    assert image.width() >= LABEL_W + batch.input_ids.shape[1] * grid.cell_w


def test_paged_view_shows_the_shared_prefix_blocks_and_bytes(panel, batch, tiny_llama):
    panel.max_len.setValue(tiny_llama.info.context_length)
    panel.show_batch(batch)
    lay = panel.layout_
    expected = pk.from_batch(batch, max_length=tiny_llama.info.context_length)
    assert lay == expected and lay.shared_blocks >= 1
    text = panel.paged_text.text()
    assert f"{lay.shared_blocks} shared" in text and "Kwon et al. 2023" in text
    assert f"{lay.paged_bytes / 2**20:,.2f} MiB" in text
    panel.block_size.setValue(8)  # a new block size lays the same batch out again
    assert panel.layout_.block_size == 8 and panel.layout_.n_blocks > lay.n_blocks
    assert not panel.blocks.grab().toImage().isNull()


def test_throughput_plot_takes_the_table(panel):
    rows = tuple(ThroughputRow(b, 10.0 * b, 5.0 + b, 32, 16) for b in (1, 2, 4, 8, 16))
    panel.show_throughput(ThroughputTable("m", rows, 32, 16, 3, 1))
    curve = panel.curves["decode_tps"]
    x, y = curve.xData, curve.yData  # as given (getData returns the log-x display values)
    assert list(x) == [1, 2, 4, 8, 16]
    np.testing.assert_allclose(y, [r.decode_tok_s for r in rows])
    assert not panel.tps_plot.isHidden() and "16" in panel.throughput_text.text()


@pytest.mark.parametrize(("text", "words"), [("", "empty"), ("\n".join(["x"] * 17), "at most 16")])
def test_bad_prompt_lists_say_why_and_submit_nothing(panel, tiny_llama, text, words):
    engine = FakeEngine(tiny_llama)
    panel.services = PanelServices(submit_job=engine)
    panel.prompts.setPlainText(text)
    panel.start_batch()
    assert words in panel.status.text() and engine.requests == []


def test_run_batch_submits_a_plain_request_and_draws_the_result(panel, tiny_llama):
    engine = FakeEngine(tiny_llama)
    panel.services = PanelServices(submit_job=engine)
    panel.prompts.setPlainText("\n".join(PROMPTS))
    panel.new_tokens.setValue(3)
    panel.start_batch()
    (request,) = engine.requests
    assert isinstance(request, BatchRun) and request.prompts == tuple(PROMPTS) and request.max_new_tokens == 3
    assert panel.batch is not None and panel.batch.batch_size == 3 and panel.run_button.isEnabled()


def test_without_an_engine_the_panel_says_so(panel):
    panel.start_batch()
    assert "not connected" in panel.status.text()


class HeldJob:
    """A job the engine has not finished: Stop cancels it, the engine then reports 'cancelled'."""

    def __init__(self):
        self.cancelled, self.callbacks = False, None

    def __call__(self, request, on_done=None, on_error=None, on_progress=None, key=None):
        self.callbacks = (on_done, on_error, on_progress)
        return self

    def cancel(self):
        self.cancelled = True
        self.callbacks[1]("cancelled")


def test_stop_cancels_the_running_batch(panel):
    job = HeldJob()
    panel.services = PanelServices(submit_job=job)
    panel.start_batch()
    assert not panel.run_button.isEnabled() and panel.stop_button.isEnabled()
    job.callbacks[2](0.5, "decode step 6/12")
    assert "decode step 6/12" in panel.status.text()
    panel.stop_batch()
    assert job.cancelled and "stopped" in panel.status.text()
    assert panel.run_button.isEnabled() and not panel.stop_button.isEnabled()


def test_add_the_current_prompt_as_one_line(panel, tiny_llama):
    from explorer.core.api import capture

    panel.add_current_prompt()
    assert "No run yet" in panel.status.text()
    run = capture("first line\nsecond  line", tiny_llama, max_new_tokens=1)
    panel.set_run(run)
    panel.prompts.setPlainText("a\nb")
    panel.add_current_prompt()
    assert panel.prompt_list() == ["a", "b", "first line second line"]


def test_stop_cancels_the_measurement(panel):
    job = HeldJob()
    panel.services = PanelServices(submit_job=job)
    panel.start_measure()
    assert not panel.measure_button.isEnabled() and panel.measure_stop.isEnabled()
    panel.measure_stop.click()
    assert job.cancelled and "stopped" in panel.throughput_text.text() and panel.measure_button.isEnabled()


def test_before_a_batch_the_paged_view_pages_the_real_runs_on_screen(panel, tiny_session):
    """The run on screen's own cache in blocks; with the run before it, their common prefix is stored once."""
    from explorer.core.api import run_request
    from explorer.core.events import GenerationSettings, RunRequest

    text = "The capital of France is a city of many bridges, museums and cafes along the river"
    first = run_request(tiny_session, RunRequest(text, settings=GenerationSettings(max_new_tokens=4)))
    panel.set_run(first)
    assert not panel.is_empty() and panel.layout_ is not None
    assert len(panel.layout_.tables) == 1 and panel.layout_.seq_lengths == (first.n_tokens,)
    assert "run on screen" in panel.paged_text.text()
    second = run_request(tiny_session, RunRequest(text + " Seine", settings=GenerationSettings(max_new_tokens=4)),
                         previous=first)
    panel.set_run(second)
    lay = panel.layout_
    assert lay.seq_lengths == (first.n_tokens, second.n_tokens)
    common = next(i for i, (a, b) in enumerate(zip(first.token_ids, second.token_ids, strict=False)) if a != b)
    assert lay.shared_blocks == common // lay.block_size >= 1  # the whole blocks of the common prefix, once
    assert lay.tables[0][: lay.shared_blocks] == lay.tables[1][: lay.shared_blocks]
    assert "stored once" in panel.paged_text.text()


def test_the_paged_view_follows_a_streaming_run(panel, tiny_session):
    from explorer.core.events import GenerationSettings, RunRequest

    request = RunRequest("Pages grow as the model writes", settings=GenerationSettings(max_new_tokens=20,
                                                                                       stop_at_eos=False))
    run = tiny_session.new_run(request)
    for i, event in enumerate(tiny_session.stream(request)):
        run.apply(event)
        if i == 0:
            panel.set_run(run)
        else:
            panel.on_step(run, event)
    assert panel.layout_.seq_lengths[-1] == run.n_tokens  # the finished run, not its prompt
    assert sum(len(t) for t in panel.layout_.tables[-1:]) == -(-run.n_tokens // panel.layout_.block_size)


def test_the_tokens_panel_shows_the_batch_with_padding_and_mask(panel, batch, make_panel):
    from explorer.ui.batch_hub import hub
    from explorer.ui.panels.tokens import TokensPanel

    hub().latest = None  # (an earlier test's batch)
    tokens, _sel = make_panel(TokensPanel, size=(1000, 700))
    assert tokens.batch_box.isHidden()
    before = tokens.minimumSizeHint().height()
    panel.show_batch(batch)  # a batch finished in the Runtime panel
    assert not tokens.batch_box.isHidden() and tokens.batch_grid.result is batch
    assert tokens.minimumSizeHint().height() <= before + 60  # one line and a scrolling strip: docks still fit
    assert tokens.batch_box.height() >= min(tokens.batch_grid.sizeHint().height(), 300)  # its rows get room
    assert f"{batch.padded_slots} of {batch.attention_mask.size}" in tokens.batch_label.text()
    later, _sel2 = make_panel(TokensPanel, size=(1000, 700))  # a Tokens panel opened afterwards shows it too
    assert later.batch_grid.result is batch
