"""The app shell on the tiny Llama: streaming, stop, selection, settings, export, run files, bad input."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QLabel

from explorer.ui import theme
from explorer.ui.main_window import MainWindow
from explorer.ui.panels import REGISTRY, Panel

pytest.importorskip("pytestqt")


class ProbePanel(Panel):
    """Records every call the window makes, and can change the selection like a real panel."""

    title = "Probe"
    help_text = "A test panel: it records what the window sends it."

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.calls: list[tuple] = []
        self.label = QLabel("probe")
        self.body.addWidget(self.label)

    def draw_run(self, run):
        self.calls.append(("run", None if run is None else run.n_tokens))
        self.label.setText(f"{run.n_tokens if run else 0} tokens")

    def draw_step(self, run, event):
        self.calls.append(("step", event.step, run.n_tokens))

    def draw_steps(self, run, events):  # steps that arrived while the window served other panels
        self.calls.extend(("step", event.step, run.n_tokens) for event in events)

    def draw_selection(self, field):
        self.calls.append(("selection", field, self.selection.get(field)))


PROBES = ["probe_a", "probe_b"]


@pytest.fixture
def probes(monkeypatch):
    for name in PROBES:
        monkeypatch.setitem(REGISTRY, name, f"{__name__}:ProbePanel")
    monkeypatch.setitem(REGISTRY, "broken", "explorer.ui.panels.no_such_module:Nope")
    return PROBES


@pytest.fixture
def make_window(tmp_path, tiny_window, probes):
    """A window on the tiny Llama with two probe panels, a broken one and private settings."""

    def make(panels=(*PROBES, "broken"), ini="settings.ini", load=True):
        return tiny_window(panels=panels, settings_path=tmp_path / ini, load=load)

    return make


def run_and_wait(qtbot, w: MainWindow, prompt: str = "Hello world", max_new: int = 4, timeout: int = 30000) -> str:
    w.prompt_bar.prompt.setPlainText(prompt)
    w.prompt_bar.max_new.setValue(max_new)
    with qtbot.waitSignal(w.run_done, timeout=timeout) as blocker:
        w.run_prompt()
    return blocker.args[0]


def probe(w: MainWindow, name: str = "probe_a") -> ProbePanel:
    return w.docks[name].panel


def test_run_streams_steps_to_panels_and_status(qtbot, make_window):
    w = make_window()
    assert "tiny-llama" in w.status_model.text()
    assert run_and_wait(qtbot, w, max_new=5) == "max_tokens"
    run = w.run
    assert run is not None and run.n_generated == 5 and len(run.steps) == 6
    calls = probe(w).calls
    drawn = [c[1] for c in calls if c[0] == "run" and c[1]]  # full draws (a new run is drawn whole, at the next
    first = drawn[0] - run.n_prompt + 1  # turn of the event loop: steps that arrived by then are in that draw)
    assert len(drawn) == 1 and 1 <= first <= 6
    assert [c[1] for c in calls if c[0] == "step"] == list(range(first, 6))  # then every later step, once, in order
    assert f"{run.n_tokens} tokens" in w.status_tokens.text()
    assert "prefill" in w.status_speed.text() and "decode" in w.status_speed.text()
    assert "MiB" in w.status_memory.text()
    assert w.selection.step == 5 and w.selection.limit("layer") == run.info.n_layers
    assert w.timeline.slider.maximum() == 5
    # a broken panel does not stop the window: its dock says why
    assert w.docks["broken"].panel is None and "no_such_module" in w.docks["broken"].error
    assert "Probe" in w.docks["probe_a"].help_label.text() or w.docks["probe_a"].help_label.text()


def test_event_loop_turns_during_a_long_run(qtbot, make_window):
    w = make_window()
    ticks = []
    steps_at_tick = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: (ticks.append(1), steps_at_tick.append(len(w.run.steps) if w.run else 0)))
    timer.start()
    try:
        assert run_and_wait(qtbot, w, prompt="Once upon a time", max_new=200, timeout=60000) in ("max_tokens", "eos")
    finally:
        timer.stop()
    print(f"{len(ticks)} timer ticks during a {w.run.n_generated}-token run (machine shared, timings inflated)")
    assert len(ticks) >= 10
    # ticks happened while the run was growing, not only before or after it
    assert len({s for s in steps_at_tick if 0 < s < len(w.run.steps)}) >= 3


def test_stop_cancels_within_a_step(qtbot, make_window):
    w = make_window()
    w.prompt_bar.max_new.setValue(200)
    w.prompt_bar.prompt.setPlainText("Once upon a time")
    with qtbot.waitSignal(w.run_done, timeout=60000) as blocker:
        w.run_prompt()
        qtbot.waitUntil(lambda: w.run is not None and len(w.run.steps) >= 3, timeout=30000)
        assert w.prompt_bar.stop_button.isEnabled()
        qtbot.keyClick(w, Qt.Key_Escape)
    assert blocker.args == ["cancelled"]
    assert w.run.n_generated < 200
    assert not w.running and w.prompt_bar.run_button.isEnabled() and not w.prompt_bar.stop_button.isEnabled()
    assert run_and_wait(qtbot, w, max_new=2) == "max_tokens"  # the worker is still alive


def test_selection_reaches_both_panels_and_keyboard_drives_it(qtbot, make_window):
    w = make_window()
    run_and_wait(qtbot, w, max_new=3)
    a, b = probe(w, "probe_a"), probe(w, "probe_b")
    a.calls.clear()
    b.calls.clear()
    w.selection.set("layer", 2)
    assert ("selection", "layer", 2) in a.calls and ("selection", "layer", 2) in b.calls
    a.selection.set("position", 1)  # a panel changes it: the other follows
    assert ("selection", "position", 1) in b.calls
    w.activateWindow()
    w.docks["probe_a"].panel.setFocus()
    qtbot.keyClick(w.docks["probe_a"].panel, Qt.Key_Down)
    assert w.selection.layer == 1
    qtbot.keyClick(w.docks["probe_a"].panel, Qt.Key_PageDown)
    assert w.selection.head == 1
    w.selection.set("step", 3)
    qtbot.keyClick(w.docks["probe_a"].panel, Qt.Key_Left)
    assert w.selection.step == 2 and w.timeline.slider.value() == 2
    w.timeline.slider.setValue(0)
    assert w.selection.step == 0 and ("selection", "step", 0) in b.calls


def test_playback_replays_the_run(qtbot, make_window):
    w = make_window()
    run_and_wait(qtbot, w, max_new=4)
    w.timeline.speed.setValue(30)
    w.selection.set("step", 4)
    w.timeline.set_playing(True)  # at the end: starts again from step 0
    assert w.selection.step == 0
    qtbot.waitUntil(lambda: w.selection.step == 4 and not w.timeline.timer.isActive(), timeout=5000)


def test_settings_persist_across_windows(qtbot, make_window):
    w1 = make_window(panels=PROBES)
    run_and_wait(qtbot, w1, prompt="Remember me", max_new=1)
    w1.prompt_bar.temperature.setValue(0.7)
    w1.resize(900, 700)
    size = (w1.width(), w1.height())
    w1.docks["probe_b"].close()
    w1.close()
    w2 = make_window(panels=PROBES, load=False)
    assert w2.prompt_bar.prompt.toPlainText() == "Remember me"
    assert w2.prompt_bar.temperature.value() == pytest.approx(0.7)
    assert w2.prompt_bar.recent.itemData(0) == "Remember me"
    assert (w2.width(), w2.height()) == size
    assert not w2.docks["probe_b"].isVisible() and w2.docks["probe_a"].isVisible()
    assert w2.settings.value("model") == "tiny-llama"
    w2.reset_layout()
    assert w2.docks["probe_b"].isVisible()


def test_export_png_and_svg(qtbot, make_window, tmp_path):
    w = make_window()
    run_and_wait(qtbot, w, max_new=2)
    png, svg = tmp_path / "panel.png", tmp_path / "panel.svg"
    assert w.export_panel("probe_a", png) and w.export_panel("probe_a", svg)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = QImage(str(png))
    assert not image.isNull() and image.width() > 10 and image.height() > 10
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "tokens" in svg.read_text()  # the probe's label text is in the vector file
    assert not w.export_panel("probe_a", tmp_path / "panel.bmp")
    assert "png or .svg" in w.banner_label.text()


def test_save_and_open_a_run_without_a_model(qtbot, make_window, tmp_path):
    w = make_window()
    run_and_wait(qtbot, w, prompt="Saved run", max_new=3)
    path = tmp_path / "run.npz"
    assert w.save_run(path) and path.is_file()
    tokens = [t.id for t in w.run.tokens]
    w2 = make_window(panels=PROBES, ini="other.ini", load=False)
    assert w2.info is None
    with qtbot.waitSignal(w2.run_opened, timeout=30000) as opened:  # read off the GUI thread
        assert w2.open_run(path)
    assert opened.args == [True]
    assert [t.id for t in w2.run.tokens] == tokens
    assert ("run", len(tokens)) in probe(w2).calls
    assert f"{len(tokens)} tokens" in w2.status_tokens.text()
    # a damaged file: clear message, the shown run stays
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[:200])
    with qtbot.waitSignal(w2.run_opened, timeout=30000) as opened:
        w2.open_run(bad)
    assert opened.args == [False]
    assert w2.banner.isVisible() and "bad.npz" in w2.banner_label.text()
    assert [t.id for t in w2.run.tokens] == tokens


def test_bad_input_messages_keep_everything(qtbot, make_window, tmp_path):
    w = make_window()
    run_and_wait(qtbot, w, prompt="Good prompt", max_new=2)
    good = w.run
    # empty prompt: message, nothing run, the shown run stays
    w.prompt_bar.prompt.setPlainText("")
    w.run_prompt()
    assert w.banner.isVisible() and "empty" in w.banner_label.text()
    assert w.run is good and w.prompt_bar.prompt.toPlainText() == ""
    # a model folder that does not load: message, the old model stays
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "config.json").write_text("{broken")
    with qtbot.waitSignal(w.model_failed, timeout=30000):
        w.load_model(str(tmp_path / "not_a_model"))
    assert "not_a_model" in w.banner_label.text() and "stays loaded" in w.banner_label.text()
    assert w.info.name == good.info.name
    assert run_and_wait(qtbot, w, prompt="Still works", max_new=1) == "max_tokens"


def test_too_long_prompt_offers_truncation(qtbot, make_window):
    w = make_window()
    run_and_wait(qtbot, w, prompt="Short", max_new=1)
    shown = w.run
    long_prompt = " ".join(f"word{i}" for i in range(600))
    assert run_and_wait(qtbot, w, prompt=long_prompt, max_new=4) == "error"
    assert w.run is shown  # nothing lost
    assert w.prompt_bar.prompt.toPlainText() == long_prompt  # never a silent cut
    assert w.banner_action.isVisible() and "context" in w.banner_label.text()
    with qtbot.waitSignal(w.run_done, timeout=60000) as blocker:
        w.banner_action.click()
    assert blocker.args[0] == "max_tokens"
    kept = w.prompt_bar.prompt.toPlainText()
    assert kept and len(kept) < len(long_prompt) and long_prompt.endswith(kept.strip())
    assert w.run.n_tokens <= w.info.context_length
    assert "truncated" in w.banner_label.text()


def test_step_one_token_reuses_the_prompt_cache(qtbot, make_window):
    w = make_window()
    run_and_wait(qtbot, w, prompt="Step by step", max_new=2)
    generated = [t.id for t in w.run.tokens[w.run.n_prompt:]]
    with qtbot.waitSignal(w.run_done, timeout=30000):
        w.prompt_bar.step_button.click()
    assert w.run.n_generated == 3
    assert [t.id for t in w.run.tokens[w.run.n_prompt:]][:2] == generated  # greedy: same first tokens
    assert w.run.steps[0].cached_prefix > 0


def test_presenter_mode_switches_colormap_and_theme(qtbot, make_window):
    w = make_window(panels=PROBES, load=False)
    seen = []
    w.colormap_changed.connect(seen.append)
    w.set_presenter(True)
    assert theme.colormap() == "cividis" and seen == ["cividis"] and theme.is_dark()
    w.set_presenter(False)
    assert theme.colormap() == "viridis" and seen == ["cividis", "viridis"]
    w.set_theme("dark")
    assert theme.is_dark() and w.settings.value("theme") == "dark"
    w.set_theme("light")


def test_help_toggle_and_diagnostics(qtbot, make_window):
    w = make_window(panels=PROBES)
    dock = w.docks["probe_a"]
    assert not dock.help_label.isVisible()
    dock.title_bar.help_button.click()
    assert dock.help_label.isVisible() and dock.help_label.text() == ProbePanel.help_text
    text = w.copy_diagnostics()
    for word in ("Python", "torch", "transformers", "Qt", "tiny-llama"):
        assert word in text


def test_closing_during_a_run_exits_cleanly(qtbot, make_window):
    w = make_window()
    w.prompt_bar.max_new.setValue(200)
    w.run_prompt()
    qtbot.waitUntil(lambda: w.run is not None and len(w.run.steps) >= 2, timeout=30000)
    w.close()
    assert not w.host.engine.alive
    assert w.run.n_generated < 200
