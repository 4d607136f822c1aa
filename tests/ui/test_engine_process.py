"""The engine in its own process (issue 18 item 1): the window streams from it, never holds the model, and
survives the engine's death (banner, restart, reload; the run stays on screen)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from numeric import assert_close

from explorer.core.api import capture
from explorer.ui.main_window import MainWindow
from explorer.ui.settings import open_settings


@pytest.fixture
def process_window(qtbot, tmp_path):
    settings = open_settings(tmp_path / "settings.json")
    settings.setValue("engine", "process")
    settings.setValue("engine_threads", 1)
    w = MainWindow(settings, model="tiny-llama", autoload=False, autorun=False, panels=["tokens", "attention"])
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.model_ready, timeout=120_000):
        w.load_model("tiny-llama")
    yield w
    w.close()


def _run(qtbot, w, text: str, max_new: int = 4):
    w.prompt_bar.max_new.setValue(max_new)
    with qtbot.waitSignal(w.run_done, timeout=60_000) as done:
        w.run_text(text)
    return done.args[0]


def test_window_streams_from_the_engine_process_and_runs_equal_headless(qtbot, process_window):
    w = process_window
    assert w.host.kind == "process" and w.host.session is None  # no model in the window's process
    assert w.host.engine.pid != os.getpid() and w.host.engine.alive
    assert _run(qtbot, w, "The cat sat on the mat because") in ("max_tokens", "eos")
    headless = capture("The cat sat on the mat because", "tiny-llama", max_new_tokens=4)
    run = w.run
    assert run.token_ids.tolist() == headless.token_ids.tolist()
    for name in ("resid", "queries", "keys", "values"):  # equal up to float16 rounding (thread counts differ)
        assert_close(run.array(name).astype(np.float32), headless.array(name).astype(np.float32), 2e-3)
    assert run.unembed is not None and run.unembed.shape == headless.unembed.shape
    # a prompt that extends the last one reuses its prefix in the engine (the previous run travels as a key)
    assert _run(qtbot, w, "The cat sat on the mat because it was") in ("max_tokens", "eos")
    assert w.run.steps[0].cached_prefix > 0


def test_engine_death_shows_a_banner_restarts_and_keeps_the_run(qtbot, process_window):
    w = process_window
    _run(qtbot, w, "Once upon a time")
    run, tokens = w.run, w.run.token_ids.tolist()
    old_pid = w.host.engine.pid
    with qtbot.waitSignal(w.host.engine_lost, timeout=30_000) as lost, \
            qtbot.waitSignal(w.model_ready, timeout=120_000):
        os.kill(old_pid, signal.SIGKILL)  # what the out-of-memory killer does
    assert "SIGKILL" in lost.args[0] and "out of memory" in lost.args[0]
    assert not w.banner.isHidden() and "SIGKILL" in w.banner_label.text()
    assert w.run is run and run.token_ids.tolist() == tokens  # what is on screen stays
    assert w.host.engine.pid != old_pid and w.host.engine.alive
    assert _run(qtbot, w, "Once upon a time there") in ("max_tokens", "eos")  # and the new engine works


def test_settings_choose_the_engine_and_its_threads(tmp_path):
    from explorer.core.engine_process import default_threads
    from explorer.ui.worker import engine_kind

    path = tmp_path / "s.json"
    path.write_text('{"engine": "sideways", "engine_threads": -3, "theme": "dark"}')
    settings = open_settings(path)  # bad values in the file are dropped, the rest kept
    assert settings.value("engine") is None and settings.value("engine_threads") is None
    assert settings.value("theme") == "dark"
    with pytest.raises(ValueError):
        settings.setValue("engine", "sideways")
    settings.setValue("engine", "thread")
    assert open_settings(path).value("engine") == "thread"
    with pytest.raises(ValueError):
        engine_kind("sideways")
    assert default_threads(2) == 1 and default_threads(1) == 1 and default_threads(8) == 7


def test_a_side_job_runs_in_its_own_process_beside_the_engine(qtbot, tmp_path, tiny_session):
    """An index build (minutes of MiniLM work on a real folder) must not wait in or block the engine's queue."""
    from explorer.core.engine import CompleteRun
    from explorer.core.events import GenerationSettings, RunRequest
    from explorer.core.retrieval.jobs import BuildIndex
    from explorer.ui.worker import EngineHost

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("The Eiffel tower is in Paris.\n\nIt was finished in 1889.", encoding="utf-8")
    (docs / "b.txt").write_text("Bananas are yellow when ripe.", encoding="utf-8")
    host = EngineHost(session=tiny_session)
    built, ran, progress = [], [], []
    side = host.submit_side_job(BuildIndex(str(docs), str(tmp_path / "index")), built.append,
                                lambda m: built.append(m), lambda f, _m: progress.append(f))
    assert side.id < 0 and side.side.engine.pid != os.getpid()
    host.submit_job(CompleteRun(RunRequest("Hello", settings=GenerationSettings(max_new_tokens=1))), ran.append)
    qtbot.waitUntil(lambda: bool(ran), timeout=60_000)
    assert not built  # the engine answered while the side job still worked (its process takes seconds to start)
    qtbot.waitUntil(lambda: bool(built), timeout=240_000)
    report = built[0]
    assert not isinstance(report, str), report
    assert report.added == 2 and report.total_chunks >= 2 and progress and side.done
    assert (tmp_path / "index" / "index.json").is_file()
    host.shutdown()
