"""KV cache panel: the chart is the runner's measured bytes, the formula matches, prefix reuse, what-if, eviction."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.core.analysis import eviction as ev
from explorer.core.events import GenerationSettings, RunRequest
from explorer.ui.panels.kv_cache import MIB, KVCachePanel
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background


def _request(prompt: str, n: int = 6) -> RunRequest:
    return RunRequest(prompt=prompt, settings=GenerationSettings(max_new_tokens=n, stop_at_eos=False))


def _stream(panel, session, request, previous=None):
    """Feed the panel as the main window does: an empty run, then one event at a time."""
    run = session.new_run(request)
    panel.set_run(run)
    for event in session.stream(request, previous=previous):
        run.apply(event)
        panel.on_step(run, event)
    return run


@pytest.fixture
def panel(qtbot):
    p = KVCachePanel(Selection())
    qtbot.addWidget(p)
    p.resize(1000, 800)
    p.show()
    return p


def test_chart_values_are_the_measured_bytes_and_steps_append(panel, tiny_session):
    request = _request("the cat sat on the mat")
    run = tiny_session.new_run(request)
    panel.set_run(run)
    total_item, layer_items = panel.total_item, list(panel._layer_items)
    for event in tiny_session.stream(request):
        run.apply(event)
        panel.on_step(run, event)
        x, y = panel.total_item.getData()
        assert len(x) == event.step + 1  # one point per step so far
    steps, per_layer = panel.chart_bytes()
    expected = np.stack([run.kv_bytes_per_layer(i) for i in range(len(run.steps))])
    assert steps.tolist() == list(range(len(run.steps)))
    assert np.array_equal(per_layer, expected)
    np.testing.assert_allclose(panel.total_item.getData()[1] * MIB, expected.sum(1))
    assert panel.total_item is total_item and panel._layer_items == layer_items  # updated, not re-created
    panel.mode.setCurrentIndex(1)  # stacked: the top curve is the total
    np.testing.assert_allclose(panel._layer_items[-1].getData()[1] * MIB, expected.sum(1))
    panel.mode.setCurrentIndex(2 + 1)  # layer 1 alone
    np.testing.assert_allclose(panel.total_item.getData()[1] * MIB, expected[:, 1])
    # figures and formula agree with the measured cache
    assert panel.figures["tokens in cache"].text() == str(run.n_tokens)
    assert "\u2713 equals" in panel.formula.text()
    ceiling = 2 * 4 * 2 * 16 * run.info.context_length * 4  # tiny-llama: 4 layers, 2 KV heads, head_dim 16, fp32
    assert panel.ceiling.value() * MIB == pytest.approx(ceiling)


def test_prefix_reuse_is_shown(panel, tiny_session):
    first = _stream(panel, tiny_session, _request("the cat sat on the mat", 3))
    assert first.steps[0].cached_prefix == 0
    assert "none in this run" in panel.reuse.text()
    second = _stream(panel, tiny_session, _request(first.text + " and the dog", 3), previous=first)
    reused = second.steps[0].cached_prefix
    assert reused > 0
    assert f"{reused:,} tokens came from the previous run" in panel.reuse.text()
    assert "The last full prefill" in panel.reuse.text() and "saved" in panel.reuse.text()
    x, y = panel.cached_item.getData()
    share = reused / second.steps[0].n_new
    np.testing.assert_allclose(y * MIB, share * second.kv_bytes_per_layer(0).sum())


def test_whatif_calculator(panel, tiny_session):
    _stream(panel, tiny_session, _request("hello there", 2))
    calc = panel.whatif
    assert calc.model.itemText(0).startswith("This model")
    calc.select("llama-3-8b")
    calc.dtype.setCurrentText("bf16")
    calc.spins["batch"].setValue(1)
    assert calc.spins["context"].value() == 8192
    assert calc.total_bytes() == 2 * 32 * 8 * 128 * 8192 * 2
    assert calc.result.text() == "1.00 GiB"
    calc.spins["batch"].setValue(3)
    calc.dtype.setCurrentText("int4")
    assert calc.total_bytes() == 2 * 32 * 8 * 128 * 8192 * 0.5 * 3
    x, y = calc.current_item.xData, calc.current_item.yData  # raw data (the plot is log-log)
    assert x[-1] == 8192 and y[-1] * (1 << 30) == pytest.approx(calc.total_bytes())
    calc.spins["kv_heads"].setValue(1)  # typing numbers makes it a custom MQA config
    assert calc.model.currentData() is None and calc.config().variant == "MQA"


def test_eviction_masks_and_measured_effect(panel, qtbot, tiny_session):
    from explorer.ui.panels.base import PanelServices
    from explorer.ui.worker import EngineHost

    host = EngineHost(session=tiny_session)  # the measurement is an engine job
    panel.services = PanelServices(submit_job=host.submit_job)
    panel.eviction.spins["budget"].setValue(6)
    run = _stream(panel, tiny_session, _request("one two three four five six seven eight nine ten", 8))
    view = panel.eviction
    qtbot.waitUntil(lambda: bool(view.keeps), timeout=20000)
    assert set(view.keeps) == set(ev.POLICIES)
    image = view.maps["streaming"].data
    assert image.shape == (run.info.n_layers, run.n_tokens)
    # shown for the first decode step: its query (at n_prompt) sees n_prompt + 1 entries, the rest is not there yet
    assert np.isfinite(image[:, : run.n_prompt + 1]).all() and np.isnan(image[:, run.n_prompt + 1:]).all()
    assert image[:, :4].min() == 1.0  # StreamingLLM's sinks are kept everywhere
    panel.tabs.setCurrentWidget(view)
    view.start_measure()
    assert not view.bar.isHidden() and not view.measure.isEnabled(), view.status.text()
    qtbot.waitUntil(lambda: bool(view.effects), timeout=30000)
    assert host.shutdown(5000)
    Background.wait_idle()
    assert view.bar.isHidden() and view.measure.isEnabled()
    for kind in ev.POLICIES:
        effect = view.effects[kind]
        assert len(effect.kl) == run.n_tokens - run.n_prompt
        assert np.array_equal(view.kl_items[kind].getData()[1], effect.kl)
        assert "mean KL" in view.captions[kind].text()


def test_the_growth_charts_axes_stay_put_while_a_run_streams(panel, tiny_session):
    """An axis whose range moves at every step is laid out again and repaints the whole plot (2-3 ms an axis per
    step): while a run streams the x axis holds the planned steps and the y axis grows to round numbers only,
    and every curve stays inside the view."""
    from explorer.ui.plot_style import headroom

    request = _request("the cat sat on the mat", n=12)
    run = tiny_session.new_run(request)
    panel.set_run(run)
    ranges = []
    for event in tiny_session.stream(request):
        run.apply(event)
        panel.on_step(run, event)
        (x0, x1), (y0, y1) = panel.plot.getViewBox().viewRange()
        ranges.append((x0, x1, y0, y1))
        x, y = panel.total_item.getData()
        assert x.max() <= x1 and y.max() <= y1  # what is drawn is in view
        if event.finish_reason is None:
            assert x1 >= 12 + 0.5  # room for the planned 12 generated steps after the prompt
    streaming = ranges[:-1]
    assert len({r[:2] for r in streaming}) == 1  # the x axis did not move while streaming
    assert len({r[2:] for r in streaming}) <= 2  # the y axis moved to a round number at most once
    assert all(headroom(r[3]) == pytest.approx(r[3]) for r in ranges)  # a round number is its own headroom
    # a run drawn whole (opened from a file), stopped before its planned steps: the axis fits the steps it has
    events = list(tiny_session.stream(request))
    stopped = tiny_session.new_run(request)
    for event in events[:4]:
        stopped.apply(event)
    panel.set_run(stopped)
    assert stopped.finish_reason is None and panel.plot.getViewBox().viewRange()[0][1] < 4 + 1


def test_headroom_is_the_next_round_number():
    from explorer.ui.plot_style import headroom

    assert [headroom(v) for v in (0.003, 0.26, 0.51, 1.0, 1.01, 2.4, 99.0)] == [0.005, 0.5, 1.0, 1.0, 2.0, 2.5, 100.0]
    assert headroom(0.0) == 1.0 and headroom(float("nan")) == 1.0
    from explorer.ui.plot_style import FINE_STEPS  # bars: the longest fills most of the plot

    assert [headroom(v, FINE_STEPS) for v in (0.686, 2.69, 1.05)] == [0.8, 3.0, 1.2]
