"""About box and diagnostics text (versions of Python, torch, transformers, Qt and the model)."""

from __future__ import annotations

import platform
import sys

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import qVersion
from PySide6.QtWidgets import QMessageBox, QWidget

from .. import __version__


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - missing optional module
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def diagnostics(info=None, source: str | None = None, extra: dict[str, str] | None = None) -> str:
    """Plain-text diagnostics for bug reports."""
    rows = [
        ("LM Explorer", __version__),
        ("Python", f"{sys.version.split()[0]} ({platform.platform()})"),
        ("torch", _version("torch")),
        ("transformers", _version("transformers")),
        ("numpy", _version("numpy")),
        ("pyqtgraph", _version("pyqtgraph")),
        ("Qt", f"{qVersion()} (PySide6 {pyside_version})"),
    ]
    if info is not None:
        rows += [
            ("model", f"{info.name} ({info.architecture}, {info.kind})"),
            ("shape", f"{info.n_layers} layers x {info.n_heads} heads (KV heads {info.n_kv_heads}, "
                      f"head dim {info.head_dim}, hidden {info.hidden_size})"),
            ("parameters", f"{info.n_params:,}"),
            ("context", f"{info.context_length:,} tokens, vocab {info.vocab_size:,}"),
        ]
        if source:
            rows.append(("source", source))
    else:
        rows.append(("model", "none loaded"))
    rows += list((extra or {}).items())
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def show_about(parent: QWidget, info=None, source: str | None = None) -> None:
    text = diagnostics(info, source)
    box = QMessageBox(parent)
    box.setWindowTitle("About LM Explorer")
    box.setIcon(QMessageBox.Information)
    box.setText("<b>LM Explorer</b>: watch a small language model work, live.")
    box.setInformativeText(f"<pre>{text}</pre>")
    box.open()
