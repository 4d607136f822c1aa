"""Attention panel: displayed map equals Run.attention, toggles, overview clicks, streaming rows, table."""

from __future__ import annotations

import numpy as np
import pytest
from numeric import assert_close
from PySide6.QtCore import QPointF, Qt

from explorer.core.api import capture, run_request
from explorer.core.events import GenerationSettings, RunRequest
from explorer.ui.panels.attention import AttentionPanel
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background


@pytest.fixture(scope="module")
def llama_run(tiny_llama):
    return capture("The capital of France is Paris. The capital of Italy is", tiny_llama, max_new_tokens=4)


def test_displayed_map_equals_run_attention(qtbot, llama_run, make_panel):
    panel, sel = make_panel(AttentionPanel, llama_run, size=(1100, 600))
    sel.set("layer", 2)
    sel.set("head", 3)
    shown = panel.heatmap.data
    assert shown.shape == (llama_run.n_tokens, llama_run.n_tokens)
    assert_close(shown, llama_run.attention(2, 3), 1e-5)
    assert panel.layer_box.value() == 2 and panel.head_box.value() == 3
    assert panel.error is None


def test_sink_toggle_renormalises_rows(qtbot, llama_run, make_panel):
    panel, sel = make_panel(AttentionPanel, llama_run, size=(1100, 600))
    sel.set("layer", 1)
    panel.sink_box.setChecked(True)
    shown = panel.heatmap.data
    assert np.all(shown[:, 0] == 0)
    assert_close(shown[1:].sum(axis=1), 1, 1e-5)
    raw = llama_run.attention(1, 0)
    assert_close(shown[5, 1:6], raw[5, 1:6] / raw[5, 1:6].sum(), 1e-5)
    panel.sink_box.setChecked(False)
    assert_close(panel.heatmap.data, raw, 1e-5)


def test_value_weighted_rows_sum_to_one(qtbot, llama_run, make_panel):
    panel, _ = make_panel(AttentionPanel, llama_run, size=(1100, 600))
    panel.value_box.setChecked(True)
    shown = panel.heatmap.data
    assert_close(shown.sum(axis=1), 1, 1e-5)
    assert not np.allclose(shown, llama_run.attention(0, 0), atol=1e-3)


def test_overview_click_opens_head_and_table_fills(qtbot, llama_run, make_panel):
    panel, sel = make_panel(AttentionPanel, llama_run, size=(1100, 600))
    assert Background.wait_idle()
    qtbot.waitUntil(lambda: panel.stats.table.rowCount() == 4 * 4, timeout=5000)
    grid = panel.overview
    x = grid.head_x(3) + grid.size / 2
    y = grid.layer_y(2) + grid.size / 2
    assert grid.cell_at(x, y) == (2, 3)
    assert grid.cell_at(grid.head_x(2) - 2.5, y) is None  # the gap between GQA groups (group of 2)
    scene = grid.plot.vb.mapViewToScene(QPointF(x, y))
    view_pos = grid.view.mapFromScene(scene)
    qtbot.mouseClick(grid.view.viewport(), Qt.LeftButton, pos=view_pos)
    assert (sel.layer, sel.head) == (2, 3)
    assert_close(panel.heatmap.data, llama_run.attention(2, 3), 1e-5)
    # thumbnails were painted (not the empty background)
    y0, x0 = grid.layer_y(0), grid.head_x(0)
    assert grid.rgb[y0: y0 + grid.size, x0: x0 + grid.size].std() > 0
    # a table row opens its head
    table = panel.stats.table
    table.sortItems(0)
    row = next(i for i in range(table.rowCount())
               if table.item(i, 0).text() == "1" and table.item(i, 1).text() == "2")
    panel.stats._on_cell(row, 0)
    assert (sel.layer, sel.head) == (1, 2)


def test_click_selects_query_and_head_view(qtbot, llama_run, make_panel):
    panel, sel = make_panel(AttentionPanel, llama_run, size=(1100, 600))
    panel.heatmap.clicked.emit(6, 2)
    assert sel.position == 6
    lines = panel.head_view.lines
    assert len(lines) == 1 and lines[0].head == sel.head
    row = llama_run.attention(sel.layer, sel.head)[6]
    assert lines[0].keys[0] == int(np.argmax(row))
    panel.all_heads_box.setChecked(True)
    assert len(panel.head_view.lines) == llama_run.info.n_heads


def test_streaming_appends_only_new_rows(qtbot, tiny_session):
    request = RunRequest(prompt="Once upon a time there was", settings=GenerationSettings(max_new_tokens=4,
                                                                                          stop_at_eos=False))
    sel = Selection()
    sel.set_limits(steps=8, positions=64, layers=4, heads=4)
    panel = AttentionPanel(sel)
    qtbot.addWidget(panel)
    sel.set("layer", 3)
    sel.set("head", 1)
    calls = []

    def on_step(event, run):
        if event.is_prefill:
            panel.set_run(run)
        else:
            original = panel.row_fn

            def spy(layer, head):
                fn = original(layer, head)

                def rows(r):
                    calls.append(np.asarray(r).tolist())
                    return fn(r)
                return rows
            panel.row_fn = spy
            panel.on_step(run, event)
            panel.row_fn = original

    run = run_request(tiny_session, request, on_step=on_step)
    assert_close(panel.heatmap.data, run.attention(3, 1), 1e-5)
    heatmap_calls = [c for c in calls if len(c) == 1 and c[0] == calls[0][0]]
    assert heatmap_calls and all(len(c) == 1 for c in calls)  # one new row per step, never the whole map


def test_encoder_bidirectional_and_hide_special(qtbot, tiny_models, make_panel):
    run = capture("attention heads and the cache", tiny_models["tiny-bert"])
    panel, sel = make_panel(AttentionPanel, run, size=(1100, 600))
    assert_close(panel.heatmap.data, run.attention(0, 0), 1e-5)
    assert np.triu(panel.heatmap.data, 1).sum() > 0.1
    special = [i for i, t in enumerate(run.tokens) if t.is_special]
    assert special
    panel.special_box.setChecked(True)
    n_keep = run.n_tokens - len(special)
    assert panel.heatmap.data.shape == (n_keep, n_keep)
    assert_close(panel.heatmap.data.sum(axis=1), 1, 1e-5)


def test_aggregates_and_rollout(qtbot, llama_run, make_panel):
    panel, sel = make_panel(AttentionPanel, llama_run, size=(1100, 600))
    sel.set("layer", 1)
    panel.mode_box.setCurrentIndex(1)  # mean over heads
    assert Background.wait_idle()
    qtbot.waitUntil(lambda: "computing" not in panel.heatmap.plot.titleLabel.text, timeout=5000)
    mean = np.mean([llama_run.attention(1, h) for h in range(4)], axis=0)
    assert_close(panel.heatmap.data, mean, 1e-5)
    panel.mode_box.setCurrentIndex(3)  # rollout
    assert Background.wait_idle()
    qtbot.waitUntil(lambda: "computing" not in panel.heatmap.plot.titleLabel.text, timeout=5000)
    assert_close(panel.heatmap.data.sum(axis=1), 1, 1e-4)


def test_induction_button_requests_prompt(qtbot, llama_run, make_panel):
    panel, _ = make_panel(AttentionPanel, llama_run, size=(1100, 600))
    with qtbot.waitSignal(panel.request_prompt) as blocker:
        panel.stats.button.click()
    words = blocker.args[0].split()
    half = len(words) // 2
    assert words[:half] == words[half:]


def test_a_long_map_is_max_pooled_to_its_size_on_screen_and_finer_when_it_grows(qtbot, tiny_llama, make_panel):
    from explorer.core.analysis import attention as att
    from explorer.ui.panels.attention import MIN_PIXELS

    run = capture(" ".join(["one two three four"] * 30), tiny_llama, max_new_tokens=1)  # ~400 of its 512 positions
    n = run.n_tokens
    assert MIN_PIXELS < n <= 512
    panel, _ = make_panel(AttentionPanel, run, size=(420, 360))  # a heatmap about 300 px a side
    factor = panel._factor
    assert factor == att.pool_factor(n, panel._pixels()) and factor >= 2
    full = run.attention(0, 0)
    assert_close(panel.heatmap.data, att.max_pool(full, factor), 1e-5)  # every peak kept, not scaled away
    assert panel.heatmap.data.max() == pytest.approx(float(full.max()), rel=1e-5)
    panel.resize(1800, 1400)  # the dock grows: the map is pooled finer at the next frame
    qtbot.waitUntil(lambda: panel._factor < factor, timeout=3000)
    assert panel.heatmap.data.shape[0] == -(-n // panel._factor) and panel.error is None


def _map_threads(monkeypatch) -> list[bool]:
    """For each full head map computed from now on: whether it was computed on the GUI thread."""
    import threading

    from explorer.core.analysis import attention as att

    threads: list[bool] = []
    original = att.pooled_map

    def spy(*args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(att, "pooled_map", spy)
    return threads


def test_a_streamed_long_runs_map_is_computed_off_the_gui_thread_and_catches_up(qtbot, tiny_llama, make_panel,
                                                                                monkeypatch):
    """A streamed run's first full map (10-25 ms of softmax rows at 1,024 tokens) is computed in the background;
    steps that arrive meanwhile are added when it lands, and the map then equals the run's attention."""
    from explorer.core.analysis import attention as att
    from explorer.core.runner import Session
    from explorer.ui.panels.attention import OFFTHREAD_TOKENS

    session = Session(tiny_llama)
    request = RunRequest(" ".join(["one two three four"] * 30), reuse_prefix=False,
                         settings=GenerationSettings(max_new_tokens=3, stop_at_eos=False))
    events = list(session.stream(request))
    run = session.new_run(request)
    run.apply(events[0])
    assert run.n_tokens >= OFFTHREAD_TOKENS
    panel, sel = make_panel(AttentionPanel, run, size=(1400, 1200), draw=False)
    sel.set("layer", 1)
    sel.set("head", 2)
    threads = _map_threads(monkeypatch)
    panel.set_run(run, postpone=True)  # the window's first draw of a run it streams
    panel.catch_up()
    assert not any(threads) and panel.heatmap.data is None  # not on the GUI thread; the old map not shown
    for event in events[1:]:  # steps arrive before the map lands
        run.apply(event)
        panel.on_step(run, event)
    assert panel.heatmap.data is None
    qtbot.waitUntil(lambda: panel.heatmap.data is not None, timeout=10_000)
    assert threads == [False]  # once, in the background (the steps were added as rows)
    full = run.attention(1, 2)
    assert_close(panel.heatmap.data, att.max_pool(full, panel._factor), 1e-5)
    assert panel._n == run.n_tokens and "computing" not in panel.heatmap.plot.titleLabel.text
    assert panel.error is None


def test_a_long_run_drawn_whole_computes_its_map_off_the_gui_thread(qtbot, tiny_llama, make_panel, monkeypatch):
    """A run opened whole (from a file, a script's capture) from WHOLE_OFFTHREAD_TOKENS on: its map (76 ms of the GUI
    thread at 4,096 tokens) and the map of each head selected are computed in the background."""
    from explorer.core.analysis import attention as att
    from explorer.ui.panels import attention as attention_panel

    run = capture(" ".join(["one two three four"] * 30), tiny_llama, max_new_tokens=1)
    monkeypatch.setattr(attention_panel, "WHOLE_OFFTHREAD_TOKENS", run.n_tokens)  # (the tiny model's longest run)
    threads = _map_threads(monkeypatch)
    panel, sel = make_panel(AttentionPanel, run, size=(1400, 1200), draw=False)
    panel.set_run(run)
    assert panel.heatmap.data is None and "computing" in panel.heatmap.plot.titleLabel.text
    qtbot.waitUntil(lambda: panel.heatmap.data is not None, timeout=10_000)
    sel.set("layer", 1)
    sel.set("head", 2)
    qtbot.waitUntil(lambda: panel.heatmap.data is not None and panel._waiting is None, timeout=10_000)
    assert threads and not any(threads)  # every map in the background
    assert_close(panel.heatmap.data, att.max_pool(run.attention(1, 2), panel._factor), 1e-5)
    assert "computing" not in panel.heatmap.plot.titleLabel.text and panel.error is None
