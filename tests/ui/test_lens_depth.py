"""The depth panel's lens switch: a fitted lens replaces the logit lens live, with its KL curves."""

from __future__ import annotations

import numpy as np
import torch

from explorer.core.analysis.depth import lens_columns
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.lens import Lens
from explorer.core.lens_store import save_lens
from explorer.core.runner import Session
from explorer.ui.panels.depth import DepthPanel
from explorer.ui.panels.depth_lens import LensFitter
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background

REQUEST = RunRequest("The capital of France is Paris. Once upon a time",
                     settings=GenerationSettings(max_new_tokens=3, stop_at_eos=False))


def _lens(info, seed=3) -> Lens:
    rng = np.random.default_rng(seed)
    L, D = info.n_layers, info.hidden_size
    m = (np.eye(D) + 0.5 * rng.standard_normal((L, D, D)) / np.sqrt(D)).astype(np.float32)
    metrics = {"kind": "tuned", "fit_seconds": 1.0,
               "layers": [{"layer": i, "kl_logit_lens": 2.0 + i, "kl_fitted": 1.0 + i} for i in range(L)]}
    return Lens("tuned", info.name, m, np.zeros((L, D), np.float32), True, metrics)


def _wait_full(qtbot, panel):
    for _ in range(100):
        Background.wait_idle()
        qtbot.wait(10)
        if panel.table is not None and panel.table.n and panel.table.done.all():
            return
    raise AssertionError("the lens table did not fill")


def _panel_with_stream(qtbot, session):
    sel = Selection()
    panel = DepthPanel(sel)
    panel.lens_choice.auto_fit = False
    qtbot.addWidget(panel)
    panel.resize(1000, 800)
    panel.show()
    run = session.new_run(REQUEST)
    for event in session.stream(REQUEST):
        run.apply(event)
        sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers,
                       heads=run.info.n_heads)
        panel.on_step(run, event)
    return panel, run


def test_switching_to_a_fitted_lens_redraws_the_grid_with_it(qtbot, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EXPLORER_CACHE", str(tmp_path))
    session = Session(tiny_llama, store_dtype=torch.float32)
    panel, run = _panel_with_stream(qtbot, session)
    _wait_full(qtbot, panel)
    logit = panel.table.top_ids.copy()
    assert panel.lens_choice.readout() is None
    lens = _lens(run.info)
    panel.lens_choice.set_lens("tuned", lens)
    panel.lens_choice.choose("tuned")
    _wait_full(qtbot, panel)
    expected = lens_columns(run, 0, run.n_tokens, readout=lens)
    np.testing.assert_array_equal(panel.table.top_ids, expected.top_ids)
    assert not np.array_equal(panel.table.top_ids[:-1], logit[:-1])  # it really changed
    np.testing.assert_array_equal(panel.table.top_ids[-1], logit[-1])  # the last depth is the model's own
    y = panel.lens_choice.run_curve.yData  # the live curve is this run's mean KL per depth (before the log axis)
    np.testing.assert_allclose(y, np.maximum(np.nanmean(expected.kl, axis=1), 1e-3), rtol=1e-4, atol=1e-6)
    y = panel.lens_choice.held_fitted.yData
    np.testing.assert_allclose(y, [1.0 + i for i in range(run.info.n_layers)])
    assert "Tuned lens" in panel.status.text()
    panel.lens_choice.choose("logit")
    _wait_full(qtbot, panel)
    np.testing.assert_array_equal(panel.table.top_ids, logit)


def test_a_cached_lens_is_found_and_a_missing_one_says_how_to_fit(qtbot, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("LM_EXPLORER_CACHE", str(tmp_path))
    session = Session(tiny_llama, store_dtype=torch.float32)
    panel, run = _panel_with_stream(qtbot, session)
    panel.lens_choice.choose("jacobian")
    assert panel.lens_choice.readout() is None and "lm-explorer lens fit" in panel.lens_choice.status.text()
    from explorer.core.lens_store import lens_dir

    save_lens(_lens(run.info), lens_dir(run.info.name, "tuned"))
    panel.lens_choice.set_model(None)
    panel.lens_choice.set_model(run.info)
    panel.lens_choice.choose("tuned")
    assert panel.lens_choice.readout() is not None and panel.lens_choice.readout().kind == "tuned"


def test_a_missing_builtin_lens_is_fitted_in_the_background(qtbot, tiny_llama, tmp_path, monkeypatch):
    """The tiny models are catalogue entries: choosing a missing lens fits it off the GUI thread, then uses it."""
    monkeypatch.setenv("LM_EXPLORER_CACHE", str(tmp_path))
    session = Session(tiny_llama, store_dtype=torch.float32)
    panel, run = _panel_with_stream(qtbot, session)
    panel.lens_choice.auto_fit = True
    panel.lens_choice.fit_minutes = 0.02
    with qtbot.waitSignal(LensFitter.get_relay().finished, timeout=120000) as blocker:
        panel.lens_choice.choose("jacobian")
        assert LensFitter.busy()  # the window is not blocked while it runs
    assert blocker.args == ["jacobian", ""]
    assert panel.lens_choice.readout() is not None and panel.lens_choice.readout().kind == "jacobian"
    assert (tmp_path / "lenses" / "tiny-llama" / "jacobian" / "metrics.json").is_file()


def test_head_statistics_dialog_over_many_prompts(qtbot, tmp_path, tiny_llama):
    from explorer.ui.head_stats_dialog import COLUMNS, open_head_stats
    from explorer.ui.main_window import MainWindow
    from explorer.ui.settings import open_settings

    w = MainWindow(open_settings(tmp_path / "s.ini"), model="tiny-llama", autoload=False, autorun=False,
                   panels=["tokens"])
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-llama")
    dialog = open_head_stats(w, ["The capital of France is Paris.", "apple river apple river"], "test")
    with qtbot.waitSignal(dialog.finished_stats, timeout=60000) as blocker:
        pass
    stats = blocker.args[0]
    info = tiny_llama.info
    assert dialog.table.rowCount() == info.n_layers * info.n_heads
    col = COLUMNS.index("sink mean")
    shown = sorted(float(dialog.table.item(r, col).data(0)) for r in range(dialog.table.rowCount()))
    np.testing.assert_allclose(shown, np.sort(stats.mean[..., 1].ravel()), atol=1e-3)
    dialog.reject()
    w.close()


def test_prompt_ab_uses_the_depth_panels_lens(qtbot, tiny_llama):
    from explorer.core.analysis.align import lens_diff
    from explorer.core.api import run_request
    from explorer.ui.panels.compare import ComparePanel
    from explorer.ui.panels.depth_lens import LensSelector, active_readout

    session = Session(tiny_llama, store_dtype=torch.float32)
    a = run_request(session, RunRequest("The capital of France is Paris. The capital of Italy is"))
    b = run_request(session, RunRequest("The capital of beautiful France is Paris. The capital of Italy is"))
    selector = LensSelector(auto_fit=False)
    qtbot.addWidget(selector)
    selector.set_model(a.info)
    lens = _lens(a.info)
    selector.set_lens("tuned", lens)
    selector.choose("tuned")
    assert active_readout(a.info)[0] is lens
    sel = Selection()
    sel.set_limits(steps=1, positions=a.n_tokens, layers=a.info.n_layers, heads=a.info.n_heads)
    panel = ComparePanel(sel)
    qtbot.addWidget(panel)
    panel.show()
    panel.set_run(a)
    panel.set_run_b(b)
    sel.set("position", a.n_tokens - 1)
    Background.wait_idle()
    qtbot.waitUntil(lambda: "tuned lens parts" in panel.summary.text(), timeout=10000)
    pos_b = panel.partner(a.n_tokens - 1)
    _x, y = panel.lens_curve.getData()
    np.testing.assert_allclose(y, lens_diff(a, a.n_tokens - 1, b, pos_b, lens)["kl"], rtol=1e-4, atol=1e-6)
    assert not np.allclose(y, lens_diff(a, a.n_tokens - 1, b, pos_b)["kl"])  # not the logit lens
    selector.choose("logit")
    assert active_readout(a.info) == (None, "logit lens")
