"""Shared UI fixtures: a panel on a Selection sized to a run, shown off screen; a real window on the tiny Llama
with private settings; and an app theme that is put back after each test (theme state is process-wide)."""

from __future__ import annotations

import pytest

from explorer.ui import theme
from explorer.ui.selection import Selection


def limits(sel: Selection, run) -> None:
    """Size the selection to the run (steps, positions, layers, heads)."""
    sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers, heads=run.info.n_heads)


@pytest.fixture
def make_panel(qtbot):
    """make_panel(cls, run=None, size=(1000, 700), show=True, draw=True, position=None) -> (panel, selection).

    `cls` is a Panel class or a registry name; with a run the selection is sized to it and (with `draw`)
    the run is drawn, which must show no error; `position="last"` then selects the last token."""
    from explorer.ui.panels import panel_class

    def make(cls, run=None, size=(1000, 700), show=True, draw=True, position=None):
        if isinstance(cls, str):
            cls = panel_class(cls)
        sel = Selection()
        if run is not None:
            limits(sel, run)
        panel = cls(sel)
        qtbot.addWidget(panel)
        panel.resize(*size)
        if show:
            panel.show()
        if run is not None and draw:
            panel.set_run(run)
            assert panel.error is None, panel.error
            if position is not None:
                sel.set("position", run.n_tokens - 1 if position == "last" else position)
        return panel, sel

    return make


@pytest.fixture(autouse=True)
def _restore_theme(qapp):
    """Tests that switch the theme (dark, presenter) leave the next test on the light one."""
    before = theme.state()
    yield
    if theme.state() != before:
        theme.apply(name=before.name, presenter=before.presenter, colormap_name=before.colormap, zoom=before.zoom,
                    screen_height=before.screen_height)


@pytest.fixture
def tiny_window(qtbot, tmp_path, tiny_llama):
    """make(settings_path=None, load=True, panels=("tokens",)) -> a MainWindow on the tiny Llama (private
    settings file; loaded unless load=False); every window made is closed after the test."""
    from explorer.ui.main_window import MainWindow
    from explorer.ui.settings import open_settings

    made = []

    def make(settings_path=None, load=True, panels=("tokens",)) -> MainWindow:
        w = MainWindow(open_settings(settings_path or tmp_path / f"s{len(made)}.json"), model="tiny-llama",
                       autoload=False, autorun=False, panels=list(panels))
        qtbot.addWidget(w)
        w.show()
        made.append(w)
        if load:
            with qtbot.waitSignal(w.model_ready, timeout=30000):
                w.load_model("tiny-llama")
        return w

    yield make
    for w in made:
        w.close()


@pytest.fixture(autouse=True)
def _no_batch_from_another_test():
    """The latest batch is shared by the panels of a process (ui/batch_hub.py): each test starts without one."""
    from explorer.ui import batch_hub

    if batch_hub._HUB is not None:
        batch_hub._HUB.latest = None
    yield
