"""ModelControl: the model box and model loading (through the engine), its progress and its failures."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QComboBox, QFileDialog

from ..core import catalogue
from .export import documents_dir
from .settings import push_recent, recent
from .widgets.collector import collect_on_gui_thread

OPEN_MODEL = "__open__"


class ModelControl(QObject):
    """Owns the model box (built-in models, recent folders, Open...) and loading: the engine loads, this object
    shows the progress, records the choice and says why a model was refused."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self.combo = QComboBox()
        self.combo.setMinimumContentsLength(24)
        self.combo.setToolTip("Pick a built-in model, or open a model folder or .gguf file "
                              "(you can also drop one on the window)")
        self.combo.activated.connect(self._model_combo_activated)
        self._connect_engine()

    def _fill_model_combo(self) -> None:
        self.combo.blockSignals(True)
        self.combo.clear()
        for name in catalogue.builtin_names():
            entry = catalogue.get(name)
            self.combo.addItem(name, name)
            self.combo.setItemData(self.combo.count() - 1, entry.description, Qt.ToolTipRole)
        for path in recent(self.w.settings, "recent_models"):
            if catalogue.get(path) is None:
                self.combo.addItem(Path(path).name, path)
                self.combo.setItemData(self.combo.count() - 1, path, Qt.ToolTipRole)
        self.combo.insertSeparator(self.combo.count())
        self.combo.addItem("Open model folder or GGUF...", OPEN_MODEL)
        self.combo.blockSignals(False)
        self._show_model_in_combo()

    def _show_model_in_combo(self) -> None:
        current = self.w.info.name if self.w.info is not None else None
        spec = str(self.w.settings.value("model", "")) or current
        for i in range(self.combo.count()):
            if self.combo.itemData(i) in (spec, current):
                self.combo.setCurrentIndex(i)
                return

    def _connect_engine(self) -> None:
        h = self.w.host
        h.load_progress.connect(self._load_progress)
        h.model_loaded.connect(self._model_loaded)
        h.load_failed.connect(self._load_failed)

    def load_model(self, spec: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> None:
        """Load a model on the engine (a run in progress is stopped first, so the switch is prompt)."""
        self.w.stop()
        self.w._loading_spec = spec
        self.w.progress.setValue(0)
        self.w.progress.show()
        self.w.status_model.setText(f"loading {Path(spec).name or spec}...")
        self.w.host.load(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)

    def _load_progress(self, fraction: float, message: str) -> None:
        self.w.progress.setValue(int(fraction * 1000))
        self.w.progress.setToolTip(message)
        self.w.statusBar().showMessage(message, 3000)

    def _model_loaded(self, info) -> None:
        if self.w.run is not None and self.w.run.info.name != info.name:  # no panel keeps the old model's data
            self.w.show_run(None)
        self.w.info = info
        spec = self.w._loading_spec or info.name
        self.w.progress.hide()
        self.w.store_setting("model", spec)
        if catalogue.get(spec) is None:
            push_recent(self.w.settings, "recent_models", spec)
            self._fill_model_combo()
        self._show_model_in_combo()
        self.w.status_model.setText(f"{info.name} · {info.n_layers} layers · {info.n_heads} heads "
                                    f"({info.n_kv_heads} KV)")
        self.w.prompt_bar.set_context_limit(info.context_length if info.is_causal else None)
        self.w.model_ready.emit(info)
        collect_on_gui_thread().freeze_once()  # start-up is over: full collections scan only what runs create
        if self.w._autorun:
            self.w._autorun = False
            self.w.run_prompt()

    def _load_failed(self, spec: str, message: str, needs: str = "") -> None:
        self.w.progress.hide()
        still = f"The previous model ({self.w.info.name}) stays loaded." if self.w.info else "No model is loaded."
        self.w.status_model.setText(self.w.info.name if self.w.info else "no model")
        self._show_model_in_combo()
        if needs:  # refused for safety: offer the opt-in, behind a dialog that says what it means
            self.w.show_banner(f"Refused to load the model {spec}:\n{message}\n{still}", action="Review options...",
                               callback=lambda: self.w.review_unsafe_model(spec, needs))
        else:
            self.w.show_banner(f"Could not load the model {spec}:\n{message}\n{still}")
        self.w.model_failed.emit(message)

    def _model_combo_activated(self, index: int) -> None:
        data = self.combo.itemData(index)
        if data == OPEN_MODEL:
            self._show_model_in_combo()
            self.open_model_dialog()
        elif data:
            self.load_model(str(data))

    def open_model_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self.w, "Open model: a .gguf file, or any file inside a Hugging Face model folder", documents_dir(),
            "Models (*.gguf config.json *.safetensors);;All files (*)")
        if path:
            p = Path(path)
            self.load_model(str(p if p.suffix.lower() == ".gguf" else p.parent))

