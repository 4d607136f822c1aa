"""Switching the model leaves no panel holding the previous model's data; the intervention baseline is
recorded whatever is on screen and the Interventions panel comes forward after an ablation."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace

import numpy as np
import pytest
from PySide6.QtWidgets import QApplication

from explorer.core.api import capture
from explorer.core.interventions import Intervention
from explorer.ui.panels import REGISTRY, panel_class
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background

pytest.importorskip("pytestqt")


def _limits(sel: Selection, run) -> None:
    sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers, heads=run.info.n_heads)


def _settle() -> None:
    Background.wait_idle()
    QApplication.processEvents()


def test_every_panel_drops_the_old_models_runs(qtbot, tiny_models):
    def old_runs():
        return (capture("one two three one two three", tiny_models["tiny-llama"], max_new_tokens=3),
                capture("one two four", tiny_models["tiny-llama"], max_new_tokens=2))

    new = capture("a different model", tiny_models["tiny-gpt2"], max_new_tokens=2)
    for name in REGISTRY:
        sel = Selection()
        panel = panel_class(name)(sel)
        qtbot.addWidget(panel)
        panel.resize(900, 600)
        panel.show()
        a, b = old_runs()
        _limits(sel, a)
        panel.set_run(a)
        if hasattr(panel, "set_run_b"):
            panel.set_run_b(b)  # Prompt B / patching source of the old model
        if hasattr(panel, "run_b"):
            panel.run_b = b
        _settle()
        refs = [weakref.ref(a), weakref.ref(b)]
        del a, b
        _limits(sel, new)
        panel.set_run(new)  # the window switched model and ran again
        _settle()
        gc.collect()
        assert all(r() is None for r in refs), f"{name} still holds a run of the previous model"
        panel.set_run(None)
        _settle()


def test_head_sweep_forgets_its_result(qtbot, tiny_llama):
    from explorer.core.analysis.sweep import SweepResult

    run = capture("one two three", tiny_llama, max_new_tokens=1)
    sel = Selection()
    _limits(sel, run)
    panel = panel_class("head_sweep")(sel)
    qtbot.addWidget(panel)
    panel.set_run(run)
    L, H = run.info.n_layers, run.info.n_heads
    result = SweepResult(position=1, target_id=0, mode="zero", baseline=0.0, heads=np.ones((L, H)), attn=np.ones(L),
                         mlp=np.ones(L), forwards=1, seconds=0.1)
    panel.show_result(result)
    assert panel.result is result
    from types import SimpleNamespace

    panel.show_hits([SimpleNamespace(layer=1, head=2, score=0.5)])
    assert panel.map.image.image is not None and panel.hits.rowCount() == 1
    panel.set_run(None)
    assert panel.result is None and panel.hits.rowCount() == 0 and panel.map.image.image is None


def test_baseline_recorded_while_hidden_and_panel_comes_forward(qtbot, tmp_path, tiny_llama):
    from PySide6.QtWidgets import QTabBar

    from explorer.ui.main_window import MainWindow
    from explorer.ui.settings import open_settings

    w = MainWindow(open_settings(tmp_path / "s.json"), model="tiny-llama", autoload=False, autorun=False,
                   panels=["tokens", "interventions"])
    qtbot.addWidget(w)
    w.tabifyDockWidget(w.docks["interventions"], w.docks["tokens"])
    w.docks["tokens"].raise_()
    w.show()
    qtbot.waitExposed(w)
    panel = w.docks["interventions"].panel
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-llama")
    w.prompt_bar.max_new.setValue(2)
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.run_text("one two three")
    assert panel.visibleRegion().isEmpty()  # a background tab
    assert panel.baseline is w.run  # recorded anyway
    ablated = replace(w.run.request, interventions=(Intervention("zero_head", layer=1, head=0),))
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.submit(ablated)
    tabs = next(bar for bar in w.findChildren(QTabBar) if bar.count() == 2)
    assert tabs.tabText(tabs.currentIndex()) == w.docks["interventions"].windowTitle()
    assert panel.baseline is not w.run and panel.baseline.request.interventions == ()
    _settle()
    w.close()


def test_window_clears_every_panel_when_the_model_changes(qtbot, tmp_path, tiny_models):
    from explorer.ui.main_window import MainWindow
    from explorer.ui.settings import open_settings

    w = MainWindow(open_settings(tmp_path / "s.json"), model="tiny-llama", autoload=False, autorun=False)
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-llama")
    w.prompt_bar.max_new.setValue(2)
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.run_text("one two three")
    assert all(d.panel.run is not None for d in w.docks.values() if d.panel is not None)
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-gpt2")
    assert w.run is None
    assert all(d.panel.run is None and d.panel.full_run is None for d in w.docks.values() if d.panel is not None)
    _settle()
    w.close()
