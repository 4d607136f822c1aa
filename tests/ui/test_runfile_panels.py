"""Every panel draws a run opened from a file saved as the window saves it (activations encoded, no head), before
and after the loaded model gives the head back; the arrays behind them are compared in tests/test_runfile_size.py."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QApplication

from explorer.core.api import capture
from explorer.core.runfile import ENCODED_RTOL, load_run, runs_equal
from explorer.core.runner import Session
from explorer.ui.panels import REGISTRY
from explorer.ui.widgets.background import Background

pytest.importorskip("pytestqt")


def _settle() -> None:
    Background.wait_idle()
    QApplication.processEvents()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_panel_draws_an_opened_run(name, make_panel, tiny_models, tmp_path):
    run = capture("one two three one two three", Session(tiny_models["tiny-llama"]), max_new_tokens=3)
    path = tmp_path / "run.npz"
    run.save(path, include_head=False)
    opened = load_run(path)
    assert runs_equal(run, opened, rtol=ENCODED_RTOL) and not runs_equal(run, opened)
    panel, sel = make_panel(name, opened, position="last")  # no model: must show no error
    _settle()
    assert panel.error is None, panel.error
    assert Session(tiny_models["tiny-llama"]).attach_head(opened)  # what the window's AttachHead job does
    panel.set_run(opened)
    sel.set("position", 2)
    _settle()
    assert panel.error is None, panel.error
