"""Layer-depth panel: progressive logit lens, streaming columns, the lower views, selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numeric import approx, assert_close

from explorer.core.analysis.depth import lens_columns
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.runner import Session
from explorer.ui.panels import depth as depth_module
from explorer.ui.panels.depth import DepthPanel
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background

REQUEST = RunRequest("The capital of France is Paris. Once upon a time",
                     settings=GenerationSettings(max_new_tokens=4, stop_at_eos=False))


_HOSTS = []


@pytest.fixture(autouse=True)
def _stop_engines():
    yield
    while _HOSTS:
        assert _HOSTS.pop().shutdown(5000)


def _panel(qtbot, loaded=None):
    sel = Selection()
    panel = DepthPanel(sel)
    if loaded is not None:  # the weights are read by an engine job
        from explorer.core.runner import Session
        from explorer.ui.panels.base import PanelServices
        from explorer.ui.worker import EngineHost

        host = EngineHost(panel, session=Session(loaded))
        panel.services = PanelServices(submit_job=host.submit_job)
        _HOSTS.append(host)
    qtbot.addWidget(panel)
    panel.resize(900, 800)
    panel.show()
    return panel, sel


def _stream(session, panel, sel):
    run = session.new_run(REQUEST)
    for event in session.stream(REQUEST):
        run.apply(event)
        sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers,
                       heads=run.info.n_heads)
        panel.on_step(run, event)
    return run


def _settle(qtbot):
    Background.wait_idle()
    qtbot.wait(20)


def _drawn(qtbot, panel):
    """The views compute off the GUI thread and draw at the next frame: let that happen."""
    for _ in range(3):
        Background.wait_idle()
        qtbot.wait(1)
        panel.frames.flush()


def test_streams_and_fills_the_lens_progressively(qtbot, tiny_llama, monkeypatch):
    monkeypatch.setattr(depth_module, "WINDOW", 4)  # several background blocks on a tiny prompt
    session = Session(tiny_llama, store_dtype=torch.float32)
    panel, sel = _panel(qtbot, tiny_llama)
    run = _stream(session, panel, sel)
    _settle(qtbot)
    for _ in range(50):  # the chain of blocks: each completion submits the next
        if panel.table.done.all():
            break
        _settle(qtbot)
    assert panel.error is None, panel.error
    table = panel.table
    assert table.n == run.n_tokens and table.done.all()
    full = lens_columns(run, 0, run.n_tokens)
    np.testing.assert_array_equal(table.top_ids, full.top_ids)
    assert_close(table.target_logprob, full.target_logprob, 1e-5)
    values, _ = panel.lens_values()
    np.testing.assert_allclose(panel.lens.data, values)
    assert_close(values, full.top_probs[:, :, 0], 1e-5)
    assert "all" in panel.status.text()


def test_views_follow_the_selection(qtbot, tiny_llama):
    session = Session(tiny_llama, store_dtype=torch.float32)
    panel, sel = _panel(qtbot, tiny_llama)
    run = _stream(session, panel, sel)
    _settle(qtbot)
    qtbot.waitUntil(lambda: panel._weights is not None, timeout=10000)  # read by an engine job
    sel.set("position", 5)
    _drawn(qtbot, panel)
    att = panel.attribution.last
    assert att.position == 5 and att.token_id == run.token_ids[6]
    assert att.contributions.sum() + att.offset == approx(att.logit, 1e-3)
    heights = panel.attribution.bars.opts["height"]
    np.testing.assert_allclose(heights, att.contributions)
    panel.attribution.by_head.setChecked(True)
    _drawn(qtbot, panel)
    assert panel.attribution.heads.isVisible() and panel.attribution.heads.data.shape == (run.info.n_heads,
                                                                                         run.info.n_layers)
    panel.tabs.setCurrentWidget(panel.share)
    _drawn(qtbot, panel)
    assert_close(np.nansum(panel.share.map.data, axis=1), 1.0, 1e-4)
    panel.tabs.setCurrentWidget(panel.similarity)
    _drawn(qtbot, panel)
    assert_close(np.diag(panel.similarity.map.data), 1.0, 1e-5)
    panel.tabs.setCurrentWidget(panel.depth_attention)
    sel.set("layer", 2)
    sel.set("head", 3)
    _drawn(qtbot, panel)
    da = panel.depth_attention.last
    assert (da.layer, da.head, da.position) == (2, 3, 5) and da.depth_scores.size == 3
    assert "Counterfactual" in panel.depth_attention.banner.text()
    assert panel.error is None, panel.error


def test_clicked_token_mode_and_no_model(qtbot, tiny_llama):
    session = Session(tiny_llama)
    panel, sel = _panel(qtbot)  # no model attached: depth attention explains why it is empty
    run = _stream(session, panel, sel)
    _settle(qtbot)
    panel.mode.setCurrentIndex(2)
    panel._on_click(3, 4)
    assert sel.position == 4 and sel.layer == 2
    token = int(panel.table.top_ids[3, 4, 0])
    assert panel.target_token == token and panel.attribution_target() == token
    values, _ = panel.lens_values()
    assert values[3, 4] == pytest.approx(panel.table.top_probs[3, 4, 0])
    panel.tabs.setCurrentWidget(panel.depth_attention)
    assert panel.depth_attention.last is None and "no model" in panel.depth_attention.caption.text()
    panel.set_run(None)
    assert panel.table is None and panel.error is None
    assert run.n_tokens > 0


def test_encoder_has_no_lens(qtbot, tiny_models):
    session = Session(tiny_models["tiny-bert"])
    panel, sel = _panel(qtbot)
    run = session.new_run(RunRequest("the capital of france"))
    for event in session.stream(RunRequest("the capital of france")):
        run.apply(event)
    panel.set_run(run)
    assert panel.table is None and "encoder" in panel.status.text()
    assert panel.error is None
