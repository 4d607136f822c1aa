"""Shared fixtures: headless Qt, a private model cache, tiny models loaded once per session."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# window tests run the engine in-process (fast); tests/ui/test_engine_process.py runs a real engine process
os.environ.setdefault("LM_EXPLORER_ENGINE", "thread")
os.environ.setdefault("LM_EXPLORER_LOG_DIR", __import__("tempfile").mkdtemp(prefix="lm-explorer-logs-"))

import pytest  # noqa: E402

from explorer.core.models import load_model  # noqa: E402
from explorer.core.runner import Session  # noqa: E402

TINY = ("tiny-llama", "tiny-gpt2", "tiny-bert")


@pytest.fixture(scope="session")
def tiny_models():
    return {name: load_model(name) for name in TINY}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models):
    return tiny_models["tiny-llama"]


@pytest.fixture
def tiny_session(tiny_llama):
    return Session(tiny_llama)


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct): converted once into the user cache."""
    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def default_session(default_model):
    return Session(default_model)


@pytest.fixture
def remote_code_folder(tiny_llama, tmp_path):
    """A saved tiny model whose config asks for code shipped in the folder; running it writes `ran`."""
    folder = tmp_path / "remote"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.replace('"model_type"', '"auto_map": {"AutoModel": "x.Y"}, '
                                                       '"model_type"', 1))
    (folder / "x.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('code ran')\n")
    return folder


class _Boom:
    """Unpickling this writes the marker file: proof that a settings read ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def pickled_qsettings(tmp_path):
    """make(key) -> (ini, marker): a QSettings .ini whose `key` holds a pickled object (`@Variant(...)`) that
    creates `marker` when PySide unpickles it (the attack of issue 16 item 1)."""
    from PySide6.QtCore import QSettings

    def make(key: str):
        marker, ini = tmp_path / "MARKER", tmp_path / "settings.ini"
        q = QSettings(str(ini), QSettings.IniFormat)
        q.setValue("model", "tiny-llama")
        q.setValue(key, _Boom(marker))
        q.sync()
        del q
        assert "@Variant(" in ini.read_text(errors="replace") and not marker.exists()
        return ini, marker

    return make
