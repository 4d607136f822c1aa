"""Model catalogue and loading: each model's info, every refusal's clear error, and the weights cache."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import pytest
import torch

from explorer.core import catalogue, model_cache, models
from explorer.core.errors import ModelLoadError
from explorer.core.models import cache_root, load_model, write_cache_entry

TINY_INFO = {
    "tiny-llama": dict(architecture="llama", kind="causal", n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16,
                       hidden_size=64, rope_theta=10000.0, has_chat_template=True),
    "tiny-gpt2": dict(architecture="gpt2", kind="causal", n_layers=3, n_heads=4, n_kv_heads=4, head_dim=16,
                      hidden_size=64, rope_theta=None, has_chat_template=False),
    "tiny-bert": dict(architecture="bert", kind="encoder", n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
                      hidden_size=64, rope_theta=None, has_chat_template=False),
}


@pytest.mark.parametrize("name", sorted(TINY_INFO))
def test_tiny_model_info(name, tiny_models):
    loaded = tiny_models[name]
    info = loaded.info
    for key, value in TINY_INFO[name].items():
        assert getattr(info, key) == value, key
    assert info.name == name and info.dtype == "float32"
    assert info.vocab_size == len(loaded.tokenizer) == loaded.model.config.vocab_size
    assert info.n_params == sum(p.numel() for p in loaded.model.parameters())
    assert info.context_length == 512
    assert not loaded.model.training
    assert all(not p.requires_grad for p in loaded.model.parameters())
    assert info.group_size == info.n_heads // info.n_kv_heads
    assert catalogue.get(name).kind == info.kind


def test_tiny_models_are_seeded():
    a, b = load_model("tiny-llama"), load_model("tiny-llama")
    for (na, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na


def test_minilm_info():
    loaded = load_model("minilm-l6")
    info = loaded.info
    assert (info.architecture, info.kind, info.n_layers, info.n_heads, info.n_kv_heads, info.head_dim,
            info.hidden_size, info.vocab_size) == ("bert", "encoder", 6, 12, 12, 32, 384, 30522)
    assert info.rope_theta is None and not info.has_chat_template
    assert 20e6 < info.n_params < 25e6


def test_catalogue_is_data():
    entries = catalogue.entries()
    assert catalogue.default_model_name() == "smollm2-135m-instruct"
    for name in ("smollm2-135m-instruct", "minilm-l6"):
        e = entries[name]
        assert e.package and e.version and e.file and len(e.sha256) == 64 and e.licence and e.description
    assert {n for n, e in entries.items() if e.is_tiny} == set(TINY_INFO)


@pytest.mark.slow
def test_default_model_info(default_model):
    info = default_model.info
    assert (info.architecture, info.kind, info.n_layers, info.n_heads, info.n_kv_heads, info.head_dim) == (
        "llama", "causal", 30, 9, 3, 64)
    assert info.hidden_size == 576 and info.vocab_size == 49152
    assert info.rope_theta == pytest.approx(1e5)
    assert info.has_chat_template and info.group_size == 3
    assert 130e6 < info.n_params < 140e6
    assert default_model.model.config.tie_word_embeddings


@pytest.mark.slow
def test_default_model_says_paris(default_session):
    from explorer.core.api import capture

    run = capture("The capital of France is", default_session, max_new_tokens=1)
    assert run.generated_text == " Paris"


# --- refusals ---------------------------------------------------------------------------------------


def _fails(spec, match, **kwargs) -> ModelLoadError:
    with pytest.raises(ModelLoadError, match=match) as err:
        load_model(spec, **kwargs)
    message = str(err.value)
    assert len(message) > 25 and message.endswith((".", ")")) and "Traceback" not in message, message
    return err.value


def test_missing_paths(tmp_path):
    _fails(tmp_path / "nothing.gguf", "No model file")
    _fails(tmp_path / "no" / "folder", "neither a built-in model")
    _fails("not-a-model-name", "neither a built-in model")
    (tmp_path / "notes.txt").write_text("hi")
    _fails(tmp_path / "notes.txt", "not a model")


def test_folder_without_config(tmp_path):
    _fails(tmp_path, "no config.json")


def test_folder_with_bad_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    _fails(tmp_path, "not valid JSON")


def _folder(tmp_path: Path, config: dict, weights: tuple[str, ...] = ("model.safetensors",)) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    for name in weights:
        (folder / name).write_bytes(b"\0" * 16)
    return folder


def test_unsupported_architecture(tmp_path):
    folder = _folder(tmp_path, {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]})
    err = _fails(folder, "architecture 't5' is not supported")
    assert "llama" in str(err)


def test_remote_code_refused(tmp_path):
    config = {"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilModel"}}
    _fails(_folder(tmp_path, config), "trust_remote_code")


def test_pickle_only_folder_refused(tmp_path):
    _fails(_folder(tmp_path, {"model_type": "llama"}, ("pytorch_model.bin",)), "pickle")


def test_folder_without_weights(tmp_path):
    _fails(_folder(tmp_path, {"model_type": "llama"}, ()), "no weights")


def test_damaged_safetensors_in_folder(tiny_llama, tmp_path):
    folder = tmp_path / "m"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    assert load_model(folder).info.n_layers == 4  # a real folder loads
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _fails(folder, "not a safetensors file|Could not load the weights")


def test_tokenizer_missing(tiny_llama, tmp_path):
    folder = tmp_path / "m"
    tiny_llama.model.save_pretrained(folder)
    _fails(folder, "tokenizer")


def test_offline_hub_id_fails_fast(monkeypatch):
    monkeypatch.delenv("LM_EXPLORER_ALLOW_HUB", raising=False)
    started = time.perf_counter()
    err = _fails("someorg/somemodel", "hub id")
    assert time.perf_counter() - started < 1.0
    assert "offline" in str(err)
    monkeypatch.setenv("LM_EXPLORER_ALLOW_HUB", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    _fails("someorg/somemodel", "hub id")
    assert time.perf_counter() - started < 1.0


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LM_EXPLORER_CACHE", str(root))
    return root


def test_cache_folder_override(private_cache):
    assert cache_root() == private_cache


def test_garbage_gguf(private_cache, tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(os.urandom(4096))
    _fails(path, "not a readable GGUF")
    assert not _cache_entries()


def _cache_entries() -> list[Path]:
    """Everything in the model cache but the lock files."""
    root = model_cache.models_dir()
    return [p for p in root.rglob("*") if ".locks" not in p.relative_to(root).parts] if root.exists() else []


def _default_gguf() -> Path:
    entry = catalogue.get("smollm2-135m-instruct")
    return models._package_dir(entry) / entry.file


def test_truncated_gguf(private_cache, tmp_path):
    path = tmp_path / "SmolLM2-truncated.gguf"
    with open(_default_gguf(), "rb") as fh:
        path.write_bytes(fh.read(300_000))
    _fails(path, "not a readable GGUF")


def test_checksum_mismatch(private_cache, monkeypatch):
    entry = catalogue.get("smollm2-135m-instruct")
    wrong = dataclasses.replace(entry, sha256="0" * 64)
    monkeypatch.setattr(catalogue, "get", lambda name: wrong if name == entry.name else None)
    _fails("smollm2-135m-instruct", "does not match its checksum")
    assert not _cache_entries()


def test_not_installed_builtin(monkeypatch):
    entry = catalogue.get("minilm-l6")
    missing = dataclasses.replace(entry, module="no_such_module_here")
    monkeypatch.setattr(catalogue, "get", lambda name: missing if name == entry.name else None)
    _fails("minilm-l6", "not installed.*lm-explorer fetch")


def _gguf_entry(path: Path) -> Path:
    return model_cache.entry_dir(path.stem, model_cache.sha256_file(path))


def test_damaged_cache_entry_is_detected_and_rebuilt(tiny_llama, private_cache, tmp_path, monkeypatch):
    """A cache entry (as the GGUF conversion writes it) is used while intact and rebuilt once damaged."""
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(512))  # never read while the cache entry is valid
    entry_dir = _gguf_entry(gguf)
    write_cache_entry(tiny_llama.model, tiny_llama.tokenizer, entry_dir, source=str(gguf), source_sha256="x")
    assert model_cache.entry_valid(entry_dir)
    assert sorted(p.name for p in entry_dir.parent.iterdir()) == [".locks", entry_dir.name]  # no temporary left

    loaded = load_model(gguf)
    assert loaded.info.n_layers == 4 and loaded.source == str(entry_dir)
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(ids).logits, tiny_llama.model(ids).logits)

    weights = entry_dir / "model.safetensors"
    with open(weights, "r+b") as fh:  # truncate: the size check catches it
        fh.truncate(weights.stat().st_size // 2)
    assert not model_cache.entry_valid(entry_dir)
    rebuilt = []

    monkeypatch.setattr(models.gguf_model, "convert", lambda path, progress: (rebuilt.append(path),
                                                                        (tiny_llama.model, tiny_llama.tokenizer))[1])
    again = load_model(gguf)
    assert rebuilt == [gguf] and model_cache.entry_valid(entry_dir)
    assert again.info == loaded.info

    data = bytearray(weights.read_bytes())  # same size, one byte flipped: the checksum catches it
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert not model_cache.entry_valid(entry_dir)
    load_model(gguf)
    assert len(rebuilt) == 2 and model_cache.entry_valid(entry_dir)

    (entry_dir / "explorer-manifest.json").write_text("{")
    assert not model_cache.entry_valid(entry_dir)


def test_progress_is_reported():
    seen = []
    load_model("tiny-gpt2", on_progress=lambda f, m: seen.append((f, m)))
    assert seen[0][0] == 0.0 and seen[-1][0] == 1.0 and all(isinstance(m, str) and m for _, m in seen)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)


@pytest.mark.slow
def test_cached_default_model_entry_is_valid(default_model):
    entry_dir = Path(default_model.source)
    assert entry_dir.parent == model_cache.models_dir()
    assert model_cache.entry_valid(entry_dir)


def test_a_conversion_that_fails_midway_leaves_nothing_in_the_cache(private_cache, tiny_llama):
    class BrokenTokenizer:
        def save_pretrained(self, _folder):
            raise OSError("disk full")

    entry = model_cache.models_dir() / "half-written"
    with pytest.raises(OSError, match="disk full"):
        models.write_cache_entry(tiny_llama.model, BrokenTokenizer(), entry, source="test", source_sha256="0" * 64)
    assert entry.parent.is_dir()  # the conversion got as far as the cache folder
    assert not _cache_entries()  # and its temporary folder is gone


def test_gguf_conversion_reports_while_a_stage_is_silent(tmp_path, monkeypatch):
    """A conversion stage that reports nothing (reading the tensor index, building the model) still sends a
    message every interval, at the same fraction, so the first launch never sits at one figure silently."""
    import threading

    import transformers

    from explorer.core import gguf_model

    seen: list[tuple[float, str]] = []
    beat = threading.Event()

    def progress(fraction: float, message: str) -> None:
        seen.append((fraction, message))
        if "still working" in message:
            beat.set()

    def silent_from_pretrained(*_args, **_kwargs):
        assert beat.wait(60), "no message while the model was being built"
        raise RuntimeError("stop here")

    monkeypatch.setattr(gguf_model, "check_gguf", lambda path: None)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", silent_from_pretrained)
    monkeypatch.setattr(gguf_model, "heartbeat", functools.partial(gguf_model.heartbeat, interval=0.05))
    with pytest.raises(ModelLoadError, match="stop here"):
        gguf_model.convert(tmp_path / "m.gguf", progress)
    quiet = [(f, m) for f, m in seen if "still working" in m]
    assert quiet and all(m.startswith("Reading the GGUF file's tensor index") for _, m in quiet)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)
