"""Pipeline panel: timings per stage and step, click to select a step, figures."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from numeric import assert_close
from PySide6.QtCore import QPoint, Qt

from explorer.core.api import run_request
from explorer.core.events import GenerationSettings, RunRequest
from explorer.ui.panels.pipeline import GROUPS, PipelinePanel, overhead_text, process_rss_bytes, stage_group


@pytest.fixture
def run(tiny_session):
    request = RunRequest(prompt="Once upon a time there was a", settings=GenerationSettings(max_new_tokens=6,
                                                                                            stop_at_eos=False))
    return run_request(tiny_session, request)


def _bar_totals(panel) -> np.ndarray:
    """Sum of every overview bar's width per step row, read back from the pyqtgraph items."""
    totals = np.zeros(len(panel._groups))
    for item in panel._bars.values():
        y, width = item.opts["y"], item.opts["width"]
        np.add.at(totals, np.asarray(y, int), np.broadcast_to(width, np.shape(y)))
    return totals


def test_stage_groups():
    assert stage_group("layer.12") == "layers"
    assert stage_group("lm_head") == "lm_head"
    assert stage_group("something-new") == "other"


def test_draws_every_step_with_its_measured_time(qtbot, run, make_panel):
    panel, _ = make_panel(PipelinePanel, run, size=(800, 700), draw=False)
    panel.set_run(run)
    assert panel.error is None
    expected = np.array([sum(ms for _, ms in s.timings_ms) for s in run.steps])
    np.testing.assert_allclose(_bar_totals(panel), expected, rtol=1e-9)
    # the Gantt strip has one bar per stage of the shown step, placed end to end
    names = [n for n, _ in run.steps[0].timings_ms]
    assert len(panel.gantt.opts["x0"]) == len(names) == 1 + 1 + run.info.n_layers + 3  # tokenize embed .. sample
    x0, width = np.asarray(panel.gantt.opts["x0"]), np.asarray(panel.gantt.opts["width"])
    assert_close(x0[1:], np.cumsum(width)[:-1], 1e-05)
    assert "prefill" in panel.detail.getPlotItem().titleLabel.text


def test_streaming_matches_full_draw(qtbot, tiny_session, run, make_panel):
    panel, sel = make_panel(PipelinePanel, run, size=(800, 700), draw=False)
    grown = tiny_session.new_run(run.request)
    for i, event in enumerate(run.steps):
        grown.apply(event)
        # as the main window does: the selection follows the newest step before panels get on_step
        sel.set_limits(steps=len(grown.steps), positions=grown.n_tokens, layers=4, heads=4)
        sel.set("step", i)
        assert panel.error is None, panel.error
        if i == 0:
            panel.set_run(grown)
        else:
            panel.on_step(grown, event)
        assert panel.error is None, panel.error
        assert f"step {i} (" in panel.detail.getPlotItem().titleLabel.text
    assert len(panel._groups) == len(run.steps)
    expected = np.array([sum(ms for _, ms in s.timings_ms) for s in run.steps])
    np.testing.assert_allclose(_bar_totals(panel), expected, rtol=1e-9)
    assert "tokens/s" in panel._figures["decode"].text()


def test_click_selects_step(qtbot, run, make_panel):
    panel, sel = make_panel(PipelinePanel, run, size=(800, 700), draw=False)
    panel.set_run(run)
    qtbot.wait(50)
    target = 3
    vb = panel.overview.getPlotItem().vb
    scene_pos = vb.mapViewToScene(pg_point(0.01 * vb.viewRange()[0][1], target))
    view_pos = panel.overview.mapFromScene(scene_pos)
    qtbot.mouseClick(panel.overview.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(int(view_pos.x()),
                                                                                      int(view_pos.y())))
    assert sel.step == target
    assert f"step {target} (decode" in panel.detail.getPlotItem().titleLabel.text
    assert panel._cursor.opts["y"][0] == target


def pg_point(x, y):
    from PySide6.QtCore import QPointF

    return QPointF(x, y)


def test_figures(qtbot, run, tmp_path, monkeypatch, make_panel):
    monkeypatch.setenv("LM_EXPLORER_CACHE", str(tmp_path))
    (tmp_path / "bench-latest.json").write_text(json.dumps({
        "meta": {"date": "2030-01-02T00:00:00"},
        "prefill": {"sizes": {"128": {"ratio": 1.07}, "512": {"ratio": 1.03}}},
        "decode": {"ratio": 0.91},
    }))
    panel, _ = make_panel(PipelinePanel, run, size=(800, 700), draw=False)
    panel.set_run(run)
    f = {k: v.text() for k, v in panel._figures.items()}
    assert "1.03x" in f["overhead"] and "0.91x" in f["overhead"] and "2030-01-02" in f["overhead"]
    assert f"{run.capture_bytes() / 2**20:,.1f} MiB" in f["capture"]
    ttft = sum(ms for _, ms in run.steps[0].timings_ms)
    assert f"{ttft:,.0f} ms" in f["ttft"]
    shown = float(re.search(r"([\d,.]+) MiB</b> resident", f["process"]).group(1).replace(",", "")) * 2**20
    assert abs(shown - process_rss_bytes()) < 0.25 * process_rss_bytes()  # this process's figure, shown
    assert "lm-explorer bench" in overhead_text(None)


def test_process_rss_is_this_process_resident_memory():
    """The figure moves with memory this process touches, and never exceeds the kernel's peak resident size."""
    import resource

    before = process_rss_bytes()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page written
    grown = process_rss_bytes()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    assert grown - before >= 0.9 * block.nbytes, (before, grown)
    assert grown <= peak * 1.01, (grown, peak)  # resident, not virtual, memory
    del block


def test_cleared(qtbot, run, make_panel):
    panel, _ = make_panel(PipelinePanel, run, size=(800, 700), draw=False)
    panel.set_run(run)
    panel.set_run(None)
    assert len(panel._groups) == 0
    assert all(len(item.opts["x0"]) == 0 for item in panel._bars.values())
    assert set(GROUPS) >= {"tokenize", "embed", "layers", "lm_head", "capture", "sample"}
