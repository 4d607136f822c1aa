"""Replay is a replay: every panel shows the run as it was at the selected step (Run.upto)."""

from __future__ import annotations

import numpy as np
import pytest
from numeric import assert_close
from PySide6.QtWidgets import QApplication

from explorer.core.analysis import kv as kv_analysis
from explorer.core.api import capture
from explorer.ui.panels import REGISTRY, panel_class
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background

pytest.importorskip("pytestqt")


@pytest.fixture(scope="module")
def run(tiny_llama):
    return capture("The capital of France is Paris. The capital of Italy is", tiny_llama, max_new_tokens=5)


def _panel(qtbot, name, run):
    sel = Selection()
    sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers, heads=run.info.n_heads)
    sel.set("step", len(run.steps) - 1)
    sel.set("position", run.n_tokens - 1)  # as after streaming: the last token selected
    panel = panel_class(name)(sel)
    qtbot.addWidget(panel)
    panel.resize(900, 600)
    panel.show()
    panel.set_run(run)
    return panel, sel


def test_upto_is_the_run_as_it_was(run):
    k = 2
    view = run.upto(k)
    assert view.n_tokens == run.n_prompt + k and len(view.steps) == k + 1
    assert [t.id for t in view.tokens] == [t.id for t in run.tokens[: run.n_prompt + k]]
    assert view.array("queries").shape[2] == run.n_prompt + k
    assert_close(view.next_token_logprobs(view.n_tokens - 1), run.next_token_logprobs(run.n_prompt + k - 1), 1e-5)
    assert run.upto(len(run.steps) - 1) is run and run.n_tokens == run.n_prompt + 5  # the run itself is untouched


def test_tokens_panel_shows_the_tokens_so_far(qtbot, run):
    panel, sel = _panel(qtbot, "tokens", run)
    assert len(panel.view.tokens) == run.n_tokens
    sel.set("step", 2)
    assert len(panel.view.tokens) == run.n_prompt + 2
    sel.set("step", len(run.steps) - 1)
    assert len(panel.view.tokens) == run.n_tokens


def test_next_token_shows_the_prediction_at_that_step(qtbot, run):
    panel, sel = _panel(qtbot, "next_token", run)
    for k in (0, 3):
        sel.set("step", k)
        pos = run.n_prompt + k - 1  # the position whose prediction step k made
        np.testing.assert_array_equal(panel.logprobs, run.next_token_logprobs(pos))
        assert f"position <b>{pos}</b>" in panel.info.text()


def test_attention_has_the_rows_up_to_that_step(qtbot, run):
    panel, sel = _panel(qtbot, "attention", run)
    assert panel.heatmap.data.shape[0] == run.n_tokens
    sel.set("step", 1)
    n = run.n_prompt + 1
    assert panel.heatmap.data.shape == (n, n)
    assert_close(panel.heatmap.data, run.attention(sel.layer, sel.head)[:n, :n], 1e-5)


def test_kv_cache_shows_the_size_at_that_step(qtbot, run):
    panel, sel = _panel(qtbot, "kv_cache", run)
    k = 2
    sel.set("step", k)
    assert panel.figures["tokens in cache"].text() == f"{run.n_prompt + k:,}"
    total = float(np.sum(run.kv_bytes_per_layer(k)))
    assert panel.figures["KV cache"].text() == kv_analysis.format_bytes(total)


def test_depth_lens_has_the_columns_up_to_that_step(qtbot, run):
    panel, sel = _panel(qtbot, "depth", run)
    sel.set("step", 1)
    qtbot.waitUntil(lambda: panel.table is not None and panel.table.n == run.n_prompt + 1, timeout=10000)


def test_every_panel_draws_an_earlier_step_without_error(qtbot, run):
    for name in REGISTRY:
        panel, sel = _panel(qtbot, name, run)
        sel.set("step", 1)
        assert panel.run.n_tokens == run.n_prompt + 1 and panel.full_run is run, name
        assert not panel._error.isVisible(), f"{name}: {panel._error.text()}"
        Background.wait_idle()  # let its analyses land before the panel is deleted
        QApplication.processEvents()
        assert not panel._error.isVisible(), f"{name}: {panel._error.text()}"


def test_window_replay_moves_every_panel_back(qtbot, tmp_path, tiny_llama):
    from explorer.ui.main_window import MainWindow
    from explorer.ui.settings import open_settings

    w = MainWindow(open_settings(tmp_path / "s.json"), model="tiny-llama", autoload=False, autorun=False,
                   panels=["tokens", "next_token", "attention", "kv_cache"])
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-llama")
    w.prompt_bar.max_new.setValue(4)
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.run_text("one two three four")
    run = w.run
    assert w.selection.step == len(run.steps) - 1
    w.timeline.slider.setValue(1)  # what Left does from step 2
    for name, dock in w.docks.items():
        assert dock.panel.run.n_tokens == run.n_prompt + 1, name
    assert len(w.docks["tokens"].panel.view.tokens) == run.n_prompt + 1
    w.timeline.slider.setValue(len(run.steps) - 1)
    assert all(dock.panel.run is run for dock in w.docks.values())
    Background.wait_idle()
    QApplication.processEvents()
    w.close()
