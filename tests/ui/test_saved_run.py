"""A saved run restores the prompt bar, keeps the alternatives' texts and stores only what it needs, compressed."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from numeric import assert_close

from explorer.core.api import run_request
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.runfile import load_run
from explorer.core.runner import Session
from explorer.ui.main_window import MainWindow
from explorer.ui.panels.token_colors import piece_name
from explorer.ui.settings import open_settings

pytest.importorskip("pytestqt")


def test_default_model_run_is_small_and_names_its_alternatives(default_model, tmp_path):
    import torch

    torch.set_num_threads(1)
    settings = GenerationSettings(max_new_tokens=32, stop_at_eos=False)
    request = RunRequest("Write a long story about a lighthouse keeper.", settings=settings)
    run = run_request(Session(default_model), request)
    assert run.n_tokens >= 40
    path = tmp_path / "run.npz"
    run.save(path, include_head=False)
    size = path.stat().st_size
    members = {i.filename: i for i in zipfile.ZipFile(path).infolist()}
    assert "unembed.npy" not in members
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in members.values())
    # was 63 MB (57 MB of it the float16 vocabulary matrix, nothing deflated), then 6.2 MiB (float16
    # activations deflate only ~6%); activations stored as bounded int8 (core/runfile_codec.py): ~2.4 MiB
    assert size < 3 * 2**20, f"{run.n_tokens} tokens saved in {size / 2**20:.1f} MiB"
    loaded = load_run(path)
    alt = int(run.steps[1].choice.top_ids[1])  # an alternative the model did not pick
    assert piece_name(loaded, alt) == run.vocab[alt] and not piece_name(loaded, alt).startswith("#")
    assert loaded.unembed is None
    assert Session(default_model).attach_head(loaded)  # the same model gives its head back
    pos = run.n_prompt
    assert_close(loaded.next_token_logprobs(pos), run.next_token_logprobs(pos), 2e-2)


def test_window_save_and_open_restores_the_prompt_bar(qtbot, tmp_path, tiny_llama):
    w = MainWindow(open_settings(tmp_path / "s.json"), model="tiny-llama", autoload=False, autorun=False,
                   panels=["tokens", "next_token"])
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.model_ready, timeout=30000):
        w.load_model("tiny-llama")
    w.prompt_bar.max_new.setValue(3)
    w.prompt_bar.seed.setValue(7)
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.run_text("The saved prompt")
    path = tmp_path / "run.npz"
    assert w.save_run(path)
    w.prompt_bar.prompt.setPlainText("something else")
    w.prompt_bar.max_new.setValue(9)
    w.prompt_bar.seed.setValue(1)
    with qtbot.waitSignal(w.run_opened, timeout=30000):
        w.open_run(path)
    assert w.prompt_bar.prompt.toPlainText() == "The saved prompt"
    assert w.prompt_bar.max_new.value() == 3 and w.prompt_bar.seed.value() == 7
    assert w.run.unembed is not None  # the loaded model's head, same model
    np.testing.assert_array_equal(w.docks["next_token"].panel.logprobs, w.run.next_token_logprobs(w.selection.position))
    w.close()


def test_saving_runs_off_the_gui_thread_and_waits_for_a_streaming_run(qtbot, tiny_window, monkeypatch):
    """Encoding and compressing a long run takes seconds: the GUI thread keeps turning meanwhile."""
    import threading
    import time

    from PySide6.QtCore import QTimer

    from explorer.core.run import Run

    w = tiny_window()
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.run_text("A run to save")
    seen, ticks = [], []
    real_save = Run.save

    def slow_save(run, path, **kw):
        seen.append(threading.current_thread())
        time.sleep(0.4)  # as a 1,000-token run's encoding would
        real_save(run, path, **kw)

    monkeypatch.setattr(Run, "save", slow_save)
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    path = w.settings.path.parent / "saved.npz"
    assert w.save_run(path) and path.is_file()
    timer.stop()
    assert seen and seen[0] is not threading.main_thread()
    assert len(ticks) >= 5  # the event loop ran while the save worked
    w.runs.running = True  # a streaming run is not saved half-way
    assert not w.save_run(path.with_name("half.npz")) and "streaming" in w.banner_label.text()
    assert not path.with_name("half.npz").exists()
    w.runs.running = False
