"""Issue 16 (items 1, 7, 10, 11, 12) in the window: a settings file cannot run code or stop a start, run files
open off the GUI thread and never merge with a streaming run, close cancels a slow load, errors are banners."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import pytest

from explorer.core import engine as engine_mod
from explorer.core import runner as runner_mod
from explorer.core.events import TokenKind
from explorer.ui import worker as worker_mod
from explorer.ui.main_window import MainWindow
from explorer.ui.settings import open_settings

pytest.importorskip("pytestqt")


@pytest.fixture
def window(tiny_window):
    return tiny_window


def run_and_wait(qtbot, w, prompt="Hello world", max_new=3) -> str:
    w.prompt_bar.prompt.setPlainText(prompt)
    w.prompt_bar.max_new.setValue(max_new)
    with qtbot.waitSignal(w.run_done, timeout=30000) as blocker:
        w.run_prompt()
    return blocker.args[0]


# --- 1. settings ------------------------------------------------------------------------------------------
def test_pickled_qsettings_value_does_not_run_when_the_window_starts(qtbot, window, pickled_qsettings, caplog):
    ini, marker = pickled_qsettings("prompt_state")
    with caplog.at_level(logging.WARNING):
        w = window(ini, load=False)
        w.close()
    assert not marker.exists()
    assert any("not a plain JSON settings file" in r.getMessage() for r in caplog.records)


def test_hostile_settings_never_stop_a_start(qtbot, window, tmp_path, caplog):
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps({
        "capture_budget_gib": float("inf"), "theme": ["dark"], "recent_prompts": "x",
        "prompt_state": {"prompt": "kept", "max_new": 2**31, "temperature": float("nan"), "top_k": -5,
                         "top_p": 1e309, "seed": 2**40, "chat": "maybe"},
        "layout": {"window": [0, 0, 2**31, -1]}, "model": 5,
    }), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        w = window(path, load=False)
    bar = w.prompt_bar
    assert bar.prompt.toPlainText() == "kept"
    assert bar.max_new.value() == 16 and bar.temperature.value() == 0.0 and bar.seed.value() == 0
    assert bar.top_k.value() == 0 and bar.top_p.value() == 1.0 and not bar.chat.isChecked()
    assert w.capture_budget() == 4 * 2**30
    notes = " ".join(r.getMessage() for r in caplog.records)
    for key in ("capture_budget_gib", "theme", "max_new", "temperature", "top_p", "seed", "layout", "model"):
        assert key in notes
    w.close()  # and what it writes back is clean
    stored = json.loads(path.read_text())
    assert stored["prompt_state"]["max_new"] == 16 and {d["name"] for d in stored["layout"]["docks"]} == {"tokens"}


def test_prompt_state_from_a_table_of_hostile_values_is_clamped_not_raised(qtbot, window):
    w = window(load=False)
    for field, value in (("max_new", 2**31), ("max_new", 2**64), ("temperature", float("inf")),
                         ("temperature", float("nan")), ("top_k", 2**33), ("seed", -1), ("top_p", "x")):
        w.prompt_bar.from_state({field: value})  # never an OverflowError from a spin box
    assert w.prompt_bar.max_new.value() == 16 and w.prompt_bar.seed.value() == 0


# --- 7. prompt files ------------------------------------------------------------------------------------
def test_prompt_file_that_is_a_fifo_or_device_is_refused_up_front(qtbot, window, tmp_path):
    w = window(load=False)
    fifo = tmp_path / "prompt.fifo"
    os.mkfifo(fifo)

    def unblock():  # only for unfixed code, which blocks opening it for reading: a writer ends that read
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only once a reader waits
                return
            except OSError:
                time.sleep(0.05)

    threading.Thread(target=unblock, daemon=True).start()
    assert not w.open_prompt_file(fifo)
    assert "named pipe" in w.banner_label.text()
    assert not w.open_prompt_file("/dev/zero") and "device" in w.banner_label.text()
    assert not w.open_prompt_file(tmp_path) and "folder" in w.banner_label.text()
    assert w.prompt_bar.prompt.toPlainText() != ""  # the editor kept its text


# --- 10. opening a run while another streams ------------------------------------------------------------
@pytest.fixture
def slow_steps(monkeypatch):
    """Each decode step sleeps 20 ms so a 60-token stream is still running when a file is opened."""
    real = runner_mod.Session._step

    def slow(self, *args, **kwargs):
        time.sleep(0.02)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(runner_mod.Session, "_step", slow)


def test_open_run_while_streaming_never_merges(qtbot, window, tmp_path, slow_steps):
    w = window()
    w.prompt_bar.temperature.setValue(0.0)
    assert run_and_wait(qtbot, w, "Saved prompt", max_new=3) == "max_tokens"
    path = tmp_path / "saved.npz"
    assert w.save_run(path)
    saved_ids = [t.id for t in w.run.tokens]
    saved_steps = len(w.run.steps)
    w.prompt_bar.prompt.setPlainText("Saved prompt")  # the same prompt: token counts line up with the file
    w.prompt_bar.max_new.setValue(60)
    w.run_prompt()
    qtbot.waitUntil(lambda: w.run is not None and w.run.n_generated >= 2 and w.running, timeout=30000)
    live = w.run
    w.open_run(path)  # (read on a thread now; the wait below holds for a synchronous open too)
    qtbot.waitUntil(lambda: w.run is not live, timeout=30000)
    qtbot.waitUntil(lambda: not w.host.engine.is_busy(), timeout=5000)
    qtbot.wait(300)  # any step still queued from the stream arrives now
    assert [t.id for t in w.run.tokens] == saved_ids and len(w.run.steps) == saved_steps
    assert not w.running and w.prompt_bar.run_button.isEnabled()
    again = tmp_path / "again.npz"
    assert w.save_run(again)
    with qtbot.waitSignal(w.run_opened, timeout=30000) as reopened:
        w.open_run(again)
    assert reopened.args == [True] and [t.id for t in w.run.tokens] == saved_ids


def test_a_new_run_never_reuses_a_prefix_from_a_file_run(qtbot, window, tmp_path):
    w = window()
    assert run_and_wait(qtbot, w, "The same start", max_new=1) == "max_tokens"
    path = tmp_path / "start.npz"
    assert w.save_run(path)
    live = w.run
    w.open_run(path)
    qtbot.waitUntil(lambda: w.run is not live, timeout=30000)
    assert w.run.info == w.info  # same model: reuse would be possible by the ids alone
    assert run_and_wait(qtbot, w, "The same start and more", max_new=1) == "max_tokens"
    assert w.run.steps[0].cached_prefix == 0
    assert not any(t.kind == TokenKind.CACHED_PREFIX for t in w.run.tokens)
    # a run this window streamed is still reused (the optimisation stays)
    assert run_and_wait(qtbot, w, "The same start and more and more", max_new=1) == "max_tokens"
    assert w.run.steps[0].cached_prefix > 0


# --- 11. closing during a slow model load ----------------------------------------------------------------
def test_close_during_a_slow_load_cancels_it(qtbot, tmp_path, monkeypatch):
    ticks = []
    started = threading.Event()

    def slow_load(spec, on_progress=None, **kwargs):
        for i in range(400):  # 20 s if never cancelled
            on_progress(i / 400, f"step {i}")
            ticks.append(i)
            started.set()
            time.sleep(0.05)
        raise AssertionError("the load was not cancelled")

    monkeypatch.setattr(engine_mod, "load_model", slow_load)
    w = MainWindow(open_settings(tmp_path / "s.json"), autoload=False, autorun=False, panels=["tokens"])
    qtbot.addWidget(w)
    w.show()
    w.load_model("slow-model")
    assert started.wait(10)
    w.close()
    assert not w.host.engine.alive, "the engine thread still runs the load after close"
    assert len(ticks) < 100
    assert not worker_mod.orphaned()


# --- 12. crafted run files: a banner, never an exception escaping the menu handler ----------------------
@pytest.mark.parametrize("exc", [RecursionError("maximum recursion depth exceeded"), OverflowError("too big"),
                                 MemoryError(), ValueError("odd"), KeyError("header")])
def test_open_crafted_run_shows_a_banner(qtbot, window, tmp_path, monkeypatch, exc):
    threads = []

    def crafted(path):
        threads.append(threading.current_thread())
        raise exc

    monkeypatch.setattr("explorer.core.runfile.load_run", crafted)
    w = window(load=False)
    with qtbot.waitSignal(w.run_opened, timeout=10000) as opened:
        w.open_run(tmp_path / "crafted.npz")
    assert opened.args == [False]
    assert w.banner.isVisible() and "crafted.npz" in w.banner_label.text()
    assert threads and threads[0] is not threading.main_thread()  # read off the GUI thread


def test_open_a_deeply_nested_header_file_shows_a_banner(qtbot, window, tmp_path):
    import io
    import zipfile

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.frombuffer(("[" * 200_000 + "]" * 200_000).encode(), np.uint8))
    path = tmp_path / "nested.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("header.npy", buf.getvalue())
    w = window(load=False)
    with qtbot.waitSignal(w.run_opened, timeout=30000) as opened:
        w.open_run(path)
    assert opened.args == [False] and "nested.npz" in w.banner_label.text()


def test_save_run_to_a_too_long_name_is_a_banner(qtbot, window, tmp_path):
    w = window()
    assert run_and_wait(qtbot, w, "Hi", max_new=1) == "max_tokens"
    assert not w.save_run(tmp_path / ("n" * 400 + ".npz"))
    assert "too long" in w.banner_label.text().lower()


def test_truncate_when_the_system_prompt_leaves_no_room(qtbot, window):
    w = window()
    ctx = w.info.context_length
    request = w.prompt_bar.request()
    from dataclasses import replace

    from explorer.core.events import GenerationSettings

    request = replace(request, prompt="Hi", chat=True, system=" ".join(["rule"] * ctx),
                      settings=GenerationSettings(max_new_tokens=4))
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.host.truncate(request)
    text = w.banner_label.text()
    assert "system prompt" in text and "lower max new tokens" not in text.lower()


def test_close_does_not_wait_for_a_load_stuck_in_a_library_call(qtbot, tmp_path, monkeypatch):
    """A load that never reports progress cannot be cancelled: close leaves it (no join, no abort)."""
    started, release = threading.Event(), threading.Event()

    def stuck_load(spec, on_progress=None, **kwargs):
        started.set()
        release.wait(30)  # one long call inside a library
        raise RuntimeError("released")

    monkeypatch.setattr(engine_mod, "load_model", stuck_load)
    w = MainWindow(open_settings(tmp_path / "s.json"), autoload=False, autorun=False, panels=["tokens"])
    qtbot.addWidget(w)
    w.show()
    w.load_model("stuck-model")
    assert started.wait(10)
    try:
        w.close()
        assert not w.isVisible()
        assert w.host.engine.alive and worker_mod.orphaned()  # close returned without the load finishing
    finally:
        release.set()
        w.host.engine.thread.join(10)
        assert not w.host.engine.alive
    assert not worker_mod.orphaned()


def test_step_one_token_on_a_run_with_a_huge_count_is_a_banner(qtbot, window, monkeypatch):
    """A run from a crafted file may claim more generated tokens than the spin box can hold (OverflowError)."""
    w = window()
    assert run_and_wait(qtbot, w, "Hi", max_new=1) == "max_tokens"
    monkeypatch.setattr(type(w.run), "n_generated", property(lambda self: 2**31))
    w.step_one_token()
    assert "Cannot generate another token" in w.banner_label.text() and not w.running


APP_SCRIPT = r"""
import sys, threading
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
import explorer.core.engine as engine
from explorer.ui import app

def stuck_load(spec, on_progress=None, **kwargs):  # a load stuck in one library call, never reporting progress
    threading.Event().wait(600)

engine.load_model = stuck_load
qapp = QApplication(["lm-explorer"])

def close_soon():
    for w in qapp.topLevelWidgets():
        if w.objectName() == "" and hasattr(w, "host"):
            w.close()
    qapp.quit()

QTimer.singleShot(1500, close_soon)
sys.exit(app.main(["--settings", sys.argv[1], "--model", "stuck-model"]))
"""


def test_app_exits_cleanly_while_a_load_is_stuck(tmp_path):
    """The whole app: closing during a load that cannot be cancelled exits with code 0, not SIGABRT."""
    import subprocess
    import sys

    script = tmp_path / "run_app.py"
    script.write_text(APP_SCRIPT, encoding="utf-8")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": os.getcwd()}
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "s.json")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "Destroyed while thread" not in result.stderr


def test_layout_is_plain_records_and_any_valid_record_set_restores(qtbot, window, tmp_path):
    """Qt's binary dock state crashes QMainWindow.restoreState when a few bytes change (segfault while fuzzing),
    so the layout is stored as plain records; every record set the validator accepts is applied without error."""
    import random

    from explorer.ui import layout_state
    from explorer.ui.settings import validate

    panels = ("tokens", "next_token", "pipeline")
    w = window(load=False, panels=panels)
    saved = layout_state.capture(w)
    assert validate("layout", saved) == saved and "state" not in json.dumps(saved)
    rng = random.Random(16)
    for _ in range(150):
        docks = []
        for name in rng.sample(panels, rng.randint(1, 3)) + (["not-a-panel"] if rng.random() < 0.2 else []):
            record = dict(name=name, area=rng.choice(["left", "right", "top", "bottom"]), order=rng.randint(0, 5),
                          group=rng.randint(0, 2), visible=rng.random() < 0.8, floating=rng.random() < 0.15,
                          current=rng.random() < 0.5, size=[rng.randint(0, 3000), rng.randint(0, 3000)])
            if rng.random() < 0.5:
                record["rect"] = [rng.randint(-5000, 5000) for _ in range(2)] + [rng.randint(0, 3000)] * 2
            docks.append(record)
        layout = validate("layout", {"docks": docks, "window": [rng.randint(-9999, 9999), rng.randint(-9999, 9999),
                                                                 rng.randint(1, 5000), rng.randint(1, 5000)]})
        layout_state.apply_docks(w, layout)
        layout_state.apply_window(w, layout)
    w.apply_default_layout()
    assert all(w.docks[n].isVisible() for n in panels)


def test_layout_round_trip_keeps_areas_tabs_and_visibility(qtbot, window, tmp_path):
    from explorer.ui import layout_state
    from explorer.ui.panels import REGISTRY

    path = tmp_path / "layout.json"
    w1 = window(path, load=False, panels=tuple(REGISTRY))
    names = list(w1.docks)
    w1.docks[names[-1]].close()
    qtbot.wait(10)
    before = {r["name"]: r for r in layout_state.capture(w1)["docks"]}
    w1.close()
    w2 = window(path, load=False, panels=tuple(REGISTRY))
    after = {r["name"]: r for r in layout_state.capture(w2)["docks"]}
    assert {n: (r["area"], r["visible"]) for n, r in after.items()} == \
        {n: (r["area"], r["visible"]) for n, r in before.items()}

    def tabs(records):  # which shown docks share a tab group (a closed dock keeps its default place)
        groups = {}
        for n, r in records.items():
            if r["visible"]:
                groups.setdefault((r["area"], r["group"]), set()).add(n)
        return sorted(sorted(g) for g in groups.values())

    assert tabs(after) == tabs(before)
    current = {n for n, r in before.items() if r["current"] and r["visible"]}
    assert current == {n for n, r in after.items() if r["current"] and r["visible"]}


def test_too_long_banner_names_the_system_prompt(qtbot, window):
    w = window()
    ctx = w.info.context_length
    w.prompt_bar.chat.setChecked(True)
    w.prompt_bar.system.setPlainText(" ".join(["rule"] * ctx))
    assert run_and_wait(qtbot, w, "Hi", max_new=4) == "error"
    assert "system prompt" in w.banner_label.text()


QT_OWN_SETTINGS = r"""
import os, sys
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication, QFileDialog

class Boom:
    def __reduce__(self):
        return (open, (sys.argv[2], "w"))

if sys.argv[1] == "plant":  # Qt's own settings file for its file dialog, with a pickled object in it
    q = QSettings(QSettings.UserScope, "QtProject")
    q.setValue("FileDialog/boom", Boom())
    q.sync()
    sys.exit(0)
app = QApplication([])
if sys.argv[1] == "window":
    from explorer.ui.main_window import MainWindow
    from explorer.ui.settings import open_settings
    w = MainWindow(open_settings(sys.argv[3]), autoload=False, autorun=False, panels=["tokens"])
QTimer.singleShot(500, lambda: [d.reject() for d in app.topLevelWidgets() if isinstance(d, QFileDialog)])
try:
    QFileDialog.getOpenFileName(None, "Load prompt from a text file", os.path.dirname(sys.argv[2]))
except Exception as exc:
    print(type(exc).__name__, exc)
if sys.argv[1] == "window":
    w.close()
"""


def test_qt_own_file_dialog_settings_never_unpickle(tmp_path):
    """Qt's file dialog reads ~/.config/QtProject.conf and PySide unpickles a stored Python object there;
    the window disarms that before any dialog opens."""
    import subprocess
    import sys

    script = tmp_path / "qt_own.py"
    script.write_text(QT_OWN_SETTINGS, encoding="utf-8")
    def run(mode: str, marker):
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path / f"config-{mode}"),
               "PYTHONPATH": os.getcwd()}
        subprocess.run([sys.executable, str(script), "plant", str(marker)], env=env, check=True, timeout=60,
                       capture_output=True)
        return subprocess.run([sys.executable, str(script), mode, str(marker), str(tmp_path / "s.json")], env=env,
                              capture_output=True, text=True, timeout=120)

    plain = run("plain", tmp_path / "MARKER_PLAIN")  # the attack is real on this PySide
    assert (tmp_path / "MARKER_PLAIN").exists(), plain.stderr[-1000:]
    guarded = run("window", tmp_path / "MARKER_WINDOW")
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    assert not (tmp_path / "MARKER_WINDOW").exists()
    assert "refused to unpickle" in guarded.stderr
