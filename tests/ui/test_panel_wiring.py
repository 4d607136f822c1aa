"""The main window gives every panel the same services (run a prompt, re-run, open a panel, engine jobs)."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QTabBar

from explorer.core.analysis.jobs import ReadDepthWeights
from explorer.ui.main_window import MainWindow
from explorer.ui.panels import REGISTRY
from explorer.ui.settings import open_settings

pytest.importorskip("pytestqt")


def test_every_panel_gets_the_same_services_and_prompt_requests_run(qtbot, tmp_path, tiny_llama):
    w = MainWindow(open_settings(tmp_path / "s.ini"), model="tiny-llama", autoload=False, autorun=False,
                   panels=["attention", "kv_cache", "depth"])
    qtbot.addWidget(w)
    assert all(d.panel.services is w.panel_services for d in w.docks.values())
    errors = []
    w.panel_services.submit_job(ReadDepthWeights(), on_error=errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=10000)
    assert "No model" in errors[0]  # nothing loaded yet: the engine says so, on the GUI thread
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-llama")
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.docks["attention"].panel.request_prompt.emit("one two three one two three")
    assert w.run is not None and w.run.request.prompt == "one two three one two three"
    assert w.prompt_bar.prompt.toPlainText() == "one two three one two three"
    w.close()


def test_hidden_dock_tab_defers_work_until_shown(qtbot, tmp_path, tiny_llama):
    """A panel in a background dock tab skips per-token drawing and catches up when its tab is raised."""
    w = MainWindow(open_settings(tmp_path / "s.ini"), model="tiny-llama", autoload=False, autorun=False,
                   panels=["kv_cache", "pipeline"])
    qtbot.addWidget(w)
    w.tabifyDockWidget(w.docks["kv_cache"], w.docks["pipeline"])
    w.show()
    qtbot.waitExposed(w)
    tabs = next(bar for bar in w.findChildren(QTabBar) if bar.count() == 2)
    titles = [tabs.tabText(i) for i in range(2)]
    shown_name = "pipeline" if tabs.tabText(tabs.currentIndex()) == w.docks["pipeline"].windowTitle() else "kv_cache"
    hidden_name = "kv_cache" if shown_name == "pipeline" else "pipeline"
    hidden, shown = w.docks[hidden_name].panel, w.docks[shown_name].panel
    assert hidden.visibleRegion().isEmpty() and not shown.visibleRegion().isEmpty(), titles
    calls = {"hidden": [], "shown": []}
    inside = {"hidden": False, "shown": False}  # draw_step may hand its one step to draw_steps: count it once

    def one_step(run, event, key, one):
        calls[key].append(event.step)
        inside[key] = True
        try:
            one(run, event)
        finally:
            inside[key] = False

    def several_steps(run, events, key, several):
        if not inside[key]:
            calls[key].extend(e.step for e in events)
        several(run, events)

    for key, panel in (("hidden", hidden), ("shown", shown)):  # steps come one by one or several in one frame
        one, several = panel.draw_step, panel.draw_steps
        panel.draw_step = lambda run, event, key=key, one=one: one_step(run, event, key, one)
        panel.draw_steps = lambda run, events, key=key, several=several: several_steps(run, events, key, several)
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-llama")
    w.prompt_bar.prompt.setPlainText("Hello world")
    w.prompt_bar.max_new.setValue(4)
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.run_prompt()
    # the shown panel drew the run when it began (steps that arrived before that first draw are in it) and then
    # every later step once, in order; the hidden one drew nothing
    assert not shown._update_skipped and shown.run is w.run and len(w.run.steps) == 5
    first = calls["shown"][0] if calls["shown"] else 5
    assert calls["shown"] == list(range(first, 5)) and first >= 1
    assert calls["hidden"] == [] and hidden._update_skipped
    drawn = []
    hidden.draw_run = lambda run: drawn.append(run)
    tabs.setCurrentIndex(titles.index(w.docks[hidden_name].windowTitle()))
    qtbot.waitUntil(lambda: bool(drawn), timeout=5000)
    assert drawn[-1] is w.run and not hidden._update_skipped
    w.close()


def test_superseded_background_job_is_skipped(qtbot):
    """A job replaced by a newer one with the same key before it starts never runs."""
    import threading

    from explorer.ui.widgets.background import Background

    bg = Background()
    gate, ran, results = threading.Event(), [], []
    bg.submit("blocker", gate.wait, lambda _r: None)  # holds the single pool thread
    bg.submit("k", lambda: ran.append("old"), results.append)
    bg.submit("k", lambda: ran.append("new") or "new", results.append)
    gate.set()
    qtbot.waitUntil(lambda: results == ["new"], timeout=5000)
    Background.wait_idle()
    assert ran == ["new"]


def test_interventions_rerun_reaches_the_window(qtbot, tmp_path, tiny_llama):
    from explorer.core.events import GenerationSettings, RunRequest
    from explorer.core.interventions import Intervention

    w = MainWindow(open_settings(tmp_path / "s.ini"), model="tiny-llama", autoload=False, autorun=False,
                   panels=["interventions"])
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-llama")
    ablate = Intervention(kind="zero_head", layer=1, head=0)
    request = RunRequest("Hello there", settings=GenerationSettings(max_new_tokens=2), interventions=(ablate,))
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.docks["interventions"].panel.rerun.emit(request)
    assert w.run is not None and w.run.request.interventions == (ablate,)
    w.close()


def test_pipeline_links_open_their_panel(qtbot, tmp_path):
    """A link in the Pipeline panel's explanation shows (and raises) the panel it names, even a closed one."""
    w = MainWindow(open_settings(tmp_path / "s.ini"), autoload=False, autorun=False,
                   panels=["pipeline", "attention", "kv_cache"])
    qtbot.addWidget(w)
    w.tabifyDockWidget(w.docks["pipeline"], w.docks["kv_cache"])
    w.show()
    qtbot.waitExposed(w)
    w.docks["pipeline"].raise_()
    w.docks["attention"].close()
    qtbot.waitUntil(lambda: w.docks["kv_cache"].panel.visibleRegion().isEmpty(), timeout=5000)
    assert not w.docks["attention"].isVisible()
    explain = w.docks["pipeline"].panel.explain
    explain.linkActivated.emit("panel:attention")
    qtbot.waitUntil(lambda: w.docks["attention"].isVisible(), timeout=5000)
    explain.linkActivated.emit("panel:kv_cache")  # a background tab comes to the front
    qtbot.waitUntil(lambda: not w.docks["kv_cache"].panel.visibleRegion().isEmpty(), timeout=5000)
    assert w.docks["pipeline"].panel.visibleRegion().isEmpty()
    w.close()


def test_every_model_job_runs_on_the_engine_thread(qtbot, tmp_path, tiny_llama):
    """Runs, an eviction what-if queued behind a run, a head sweep, Compare's run B and the depth weights all
    reach the model through the engine: every forward happens on the engine's one thread."""
    import threading

    w = MainWindow(open_settings(tmp_path / "s.ini"), model="tiny-llama", autoload=False, autorun=False,
                   panels=["kv_cache", "head_sweep", "compare", "depth"])
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-llama")
    session = w.host.session
    threads = set()
    handles = [m.register_forward_pre_hook(lambda *_a: threads.add(threading.get_ident()))
               for m in (session.loaded.model, *session.adapter.layers(session.loaded.model))]
    try:
        w.prompt_bar.prompt.setPlainText("one two three four five six")
        w.prompt_bar.max_new.setValue(6)
        with qtbot.waitSignal(w.run_done, timeout=30000):
            w.run_prompt()
        kv = w.docks["kv_cache"].panel
        kv.eviction.spins["budget"].setValue(4)
        kv.eviction.start_measure()  # queued on the engine ...
        with qtbot.waitSignal(w.run_done, timeout=30000):
            w.run_prompt()  # ... and a run right behind it
        qtbot.waitUntil(lambda: kv.eviction.job.done, timeout=30000)
        assert kv.eviction.measure.isEnabled() and "failed" not in kv.eviction.status.text()
        assert kv.eviction.effects == {}  # measured on the previous run: not drawn over the new one
        sweep = w.docks["head_sweep"].panel
        sweep.start_sweep()
        qtbot.waitUntil(lambda: sweep.result is not None, timeout=30000)
        compare = w.docks["compare"].panel
        compare.prompt_b.setText("one two three four")
        compare.run_prompt_b()
        qtbot.waitUntil(lambda: compare.run_b is not None, timeout=30000)
        depth = w.docks["depth"].panel
        depth.weights()
        qtbot.waitUntil(lambda: depth._weights is not None, timeout=30000)
    finally:
        for h in handles:
            h.remove()
    assert threads == {w.host.engine.thread.ident}
    w.close()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registry_entry_is_a_panel_class_of_its_module(name):
    """One test for the registry (it replaced a copy per panel): each name resolves to a Panel subclass
    defined in the module the entry names, with a title for its dock."""
    from explorer.ui.panels import Panel, panel_class

    cls = panel_class(name)
    module, cls_name = REGISTRY[name].split(":")
    assert issubclass(cls, Panel) and cls is not Panel
    assert cls.__module__ == module and cls.__name__ == cls_name
    assert isinstance(cls.title, str) and cls.title.strip()
