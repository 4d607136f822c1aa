"""The main window hands re-computing panels a model provider and runs the prompts panels request."""

from __future__ import annotations

import pytest

from explorer.ui.main_window import MainWindow
from explorer.ui.settings import open_settings

pytest.importorskip("pytestqt")


def test_model_provider_and_prompt_requests(qtbot, tmp_path, tiny_llama):
    w = MainWindow(open_settings(tmp_path / "s.ini"), model="tiny-llama", autoload=False, autorun=False,
                   panels=["attention", "kv_cache", "depth"])
    qtbot.addWidget(w)
    assert w.docks["kv_cache"].panel.model_provider() is None  # nothing loaded yet
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-llama")
    for name in ("kv_cache", "depth"):
        loaded = w.docks[name].panel.model_provider()
        assert loaded is not None and loaded.info.name == "tiny-llama"
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.docks["attention"].panel.request_prompt.emit("one two three one two three")
    assert w.run is not None and w.run.request.prompt == "one two three one two three"
    assert w.prompt_bar.prompt.toPlainText() == "one two three one two three"
    w.close()
