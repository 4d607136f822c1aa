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
