"""Shared panel fixtures: a panel on a Selection sized to a run, shown off screen, and an app theme that
is put back after each test (theme state is process-wide)."""

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
        theme.apply(name=before.name, presenter=before.presenter, colormap_name=before.colormap)
