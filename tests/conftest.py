"""Shared fixtures: headless Qt, a private model cache, tiny models loaded once per session."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
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
