"""Next-token panel: bars of the prediction at the selected position, what-if sliders that filter
exactly as the runner's sampler does."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pytest
import torch
from numeric import assert_close

from explorer.core import sampling
from explorer.core.api import run_request
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.runner import Session
from explorer.ui import plot_style
from explorer.ui.panels.next_token import CHOSEN, FILTERED


@pytest.fixture
def run(tiny_session):
    request = RunRequest(prompt="The capital of France is", settings=GenerationSettings(max_new_tokens=4))
    return run_request(tiny_session, request)


def _model_logits(loaded, run, pos):
    with torch.inference_mode():
        ids = torch.from_numpy(run.token_ids[: pos + 1])[None]  # [1, pos + 1]
        return loaded.model(input_ids=ids).logits[0, -1].float().numpy()  # [vocab]


@pytest.mark.parametrize(("t", "k", "p"), [(0.7, 5, None), (1.5, None, 0.8), (1.0, 20, 0.5), (0.0, None, None)])
def test_slider_filter_equals_sampler(qtbot, tiny_llama, run, t, k, p, make_panel):
    panel, selection = make_panel("next_token", run, size=(500, 400), show=False)
    pos = run.n_prompt - 2
    selection.set("position", pos)
    panel.temperature.setValue(round(t * 100))
    panel.top_k.setValue(k or 0)
    panel.top_p.setValue(round((p or 1.0) * 100))
    assert panel.settings() == (t, k, p)
    expected = sampling.filter_logits(_model_logits(tiny_llama, run, pos), t, k, p)  # from the model itself
    np.testing.assert_array_equal(panel.filtered.kept, expected.kept)
    assert_close(panel.filtered.probs, expected.probs, 1e-4)
    if t == 0:
        assert panel.filtered.kept.sum() == 1
    # the bars show it: kept tokens blue, cut ones pale
    n = panel.show_k.value()
    order = np.argsort(-panel.logprobs)[:n]
    brushes = panel.bars.opts["brushes"][n:]
    for i, brush in zip(order, brushes, strict=True):
        want = pg.mkColor(FILTERED) if expected.kept[i] else plot_style.faint()
        assert brush.color().getRgb()[:3] == want.getRgb()[:3]


def test_runner_samples_with_the_same_function(monkeypatch, tiny_llama):
    calls = []
    original = sampling.filter_logits

    def spy(logits, temperature, top_k=None, top_p=None):
        out = original(logits, temperature, top_k, top_p)
        calls.append(out)
        return out

    monkeypatch.setattr(sampling, "filter_logits", spy)
    settings = GenerationSettings(max_new_tokens=5, temperature=1.2, top_k=6, top_p=0.9, seed=4)
    run = run_request(Session(tiny_llama), RunRequest(prompt="Once upon a time", settings=settings))
    generated = [t.id for t in run.tokens[run.n_prompt:]]
    assert len(calls) == len(generated) > 0
    for filtered, token in zip(calls, generated, strict=True):
        assert filtered.kept[token]  # every sampled token survived that very filter
        assert filtered.kept.sum() <= 6


def test_bars_highlight_actual_token_and_follow_selection(qtbot, run, make_panel):
    panel, selection = make_panel("next_token", run, size=(500, 400), show=False)
    pos = run.n_prompt - 1
    selection.set("position", pos)
    actual = run.tokens[pos + 1].id
    order = list(np.argsort(-panel.logprobs)[: panel.show_k.value()])
    assert actual in order  # greedy run: the chosen token is the top one
    brush = panel.bars.opts["brushes"][order.index(actual)]
    assert brush.color().getRgb()[:3] == pg.mkColor(CHOSEN).getRgb()[:3]
    assert "entropy" in panel.info.text() and f"position <b>{pos}</b>" in panel.info.text()
    longest = float(np.max(panel.bars.opts["width"]))
    (_, right), _ = panel.plot.getViewBox().viewRange()
    assert longest <= right <= 1.05 and right <= 1.5 * longest + 1e-3  # every bar in view, the axis never past 1
    panel.show_k.setValue(20)
    assert len(panel.bars.opts["y"]) == 40
    selection.set("position", 1)
    np.testing.assert_array_equal(panel.logprobs, run.next_token_logprobs(1))
    panel.top_k.setValue(3)
    panel.reset_to_run()
    assert panel.settings() == (0.0, None, None)


def test_encoder_has_no_prediction(qtbot, tiny_models, make_panel):
    run = run_request(Session(tiny_models["tiny-bert"]), RunRequest(prompt="hello world"))
    panel, _ = make_panel("next_token", run, size=(500, 400), show=False)
    assert "encoder" in panel.info.text()
    assert panel.filtered is None and not panel.bars.isVisible()
