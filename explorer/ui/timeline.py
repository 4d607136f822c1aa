"""The timeline scrubber (a slider over run steps) and step-by-step playback with a speed control."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QSlider, QWidget

from .selection import Selection
from .widgets.status_line import StatusLine


class Timeline(QWidget):
    """Drives `selection.step`; Play replays a finished run one step at a time."""

    def __init__(self, selection: Selection, parent: QWidget | None = None):
        super().__init__(parent)
        self.selection = selection
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 0, 6, 2)
        self.play_button = QPushButton("Play")
        self.play_button.setCheckable(True)
        self.play_button.setToolTip("Replay the run step by step")
        self.speed = QDoubleSpinBox()
        self.speed.setRange(0.25, 30.0)
        self.speed.setValue(2.0)
        self.speed.setSuffix(" steps/s")
        self.speed.setToolTip("Playback speed")
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setPageStep(1)
        self.slider.setToolTip("Timeline: step 0 is the prompt (prefill), then one step per generated token")
        self.label = StatusLine("no run", chars=36, policy=QSizePolicy.Preferred)  # a new step relays out nothing
        self.label.setMinimumWidth(260)
        row.addWidget(QLabel("Step"))
        row.addWidget(self.slider, 1)
        row.addWidget(self.label)
        row.addWidget(self.play_button)
        row.addWidget(self.speed)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)
        self.slider.valueChanged.connect(lambda v: selection.set("step", v))
        self.play_button.toggled.connect(self.set_playing)
        self.speed.valueChanged.connect(self._set_interval)
        selection.changed.connect(self._selection_changed)
        self._set_interval(self.speed.value())
        self._describe = lambda step: ""

    def set_describer(self, fn) -> None:
        """`fn(step) -> str` labels the current step (e.g. the token it produced)."""
        self._describe = fn
        self._update_label()

    def set_steps(self, n_steps: int) -> None:
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, n_steps - 1))
        self.slider.setValue(self.selection.step)
        self.slider.blockSignals(False)
        self._update_label()

    def set_playing(self, playing: bool) -> None:
        if playing and self.slider.maximum() == 0:
            playing = False
        if playing and self.selection.step >= self.slider.maximum():
            self.selection.set("step", 0)  # replay from the start
        if self.play_button.isChecked() != playing:
            self.play_button.setChecked(playing)
        self.play_button.setText("Pause" if playing else "Play")
        if playing:
            self.timer.start()
        else:
            self.timer.stop()

    def _set_interval(self, steps_per_s: float) -> None:
        self.timer.setInterval(max(10, int(1000 / steps_per_s)))

    def _tick(self) -> None:
        if self.selection.step >= self.slider.maximum():
            self.set_playing(False)
            return
        self.selection.move("step", 1)

    def _selection_changed(self, field: str) -> None:
        if field == "step":
            self.slider.blockSignals(True)
            self.slider.setValue(self.selection.step)
            self.slider.blockSignals(False)
            self._update_label()

    def _update_label(self) -> None:
        n = self.slider.maximum() + 1
        step = self.selection.step
        extra = self._describe(step)
        self.label.setText(f"{step} / {n - 1}" + (f"  {extra}" if extra else ""))
