"""Hostile and unlucky model files (issue 16 items 2, 3, 5, 8, 9): each attack is built from a tiny model.

Weight gate whatever an index says; no file read from outside the folder; sizes checked before
anything is allocated; missing or extra tensors refused; cache keyed by content with every file
checksummed; two processes converting at once; killed conversions swept; unwritable caches.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.core import catalogue, gguf_model, model_cache, models
from explorer.core.errors import ModelLoadError
from explorer.core.models import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LM_EXPLORER_CACHE", str(root))
    monkeypatch.setattr(model_cache, "_swept", False)
    return root


def _refused(spec, match: str, **kwargs) -> ModelLoadError:
    with pytest.raises(ModelLoadError, match=match) as err:
        load_model(spec, **kwargs)
    message = str(err.value)
    assert message.endswith((".", ")")) and "Traceback" not in message, message
    return err.value


def _save(loaded, folder: Path) -> Path:
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def _logits(model, ids=(5, 6, 7, 50)) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([list(ids)])).logits


# --- item 2: every weight file passes the same gate, whatever the index says ----------------------------


def test_index_pointing_at_a_pickle_is_refused(tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "m")
    state = tiny_llama.model.state_dict()
    (folder / "model.safetensors").rename(folder / "decoy.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: "pytorch_model.bin" for k in state}}))
    _refused(folder, "pytorch_model.bin.*not a .safetensors file")
    _refused(folder, "pytorch_model.bin.*not a .safetensors file", allow_pickle=True)  # a safetensors index stays one


def test_torch_zip_named_safetensors_is_refused(tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "m")
    state = tiny_llama.model.state_dict()
    torch.save(state, folder / "model-00001-of-00001.safetensors")  # a torch zip (pickle inside) in disguise
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "model-00001-of-00001.safetensors" for k in state}}))
    _refused(folder, "not a safetensors file")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/elsewhere.safetensors", "sub/inner.safetensors",
                                   "..\\up.safetensors", "weights.safetensors.bin", ".hidden.safetensors"])
def test_index_shard_names_must_be_plain_files_in_the_folder(shard, tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "deep" / "m")
    (folder / "sub").mkdir()
    for place in (tmp_path / "deep" / "outside.safetensors", folder / "sub" / "inner.safetensors"):
        place.write_bytes((folder / "model.safetensors").read_bytes())
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: shard for k in tiny_llama.model.state_dict()}}))
    _refused(folder, "not a .safetensors file in this folder")


def test_config_cannot_name_another_weight_file(tiny_llama, tmp_path):
    """config.json's transformers_weights would make transformers read a .bin: it is never followed."""
    folder = _save(tiny_llama, tmp_path / "m")
    zeros = {k: torch.zeros_like(v) for k, v in tiny_llama.model.state_dict().items()}
    torch.save(zeros, folder / "adapter_model.bin")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    loaded = load_model(folder)
    torch.testing.assert_close(_logits(loaded.model), _logits(tiny_llama.model))


def test_pickle_index_shards_are_checked_too(tiny_llama, tmp_path):
    folder = tmp_path / "m"
    tiny_llama.model.config.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    state = tiny_llama.model.state_dict()
    torch.save(state, tmp_path / "outside.bin")
    index = {"weight_map": {k: "../outside.bin" for k in state}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert _refused(folder, "pickle checkpoints").needs == "allow_pickle"
    _refused(folder, "not a .bin checkpoint in this folder", allow_pickle=True)


def test_only_vetted_files_reach_transformers(tiny_llama, tmp_path):
    """An adapter config or stray code next to the model is never read: transformers sees a staging folder."""
    folder = _save(tiny_llama, tmp_path / "m")
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": "x"}')
    (folder / "custom.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    loaded = load_model(folder)
    assert loaded.source == str(folder) and not (tmp_path / "ran").exists()
    torch.testing.assert_close(_logits(loaded.model), _logits(tiny_llama.model))


# --- item 3: nothing is read from outside the folder ----------------------------------------------------


@pytest.mark.parametrize("name", ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "config.json",
                                  "model.safetensors", "README.md"])
def test_links_leaving_the_folder_are_refused(name, tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "m")
    secret = tmp_path / "secret" / name
    secret.parent.mkdir()
    if (folder / name).exists():
        secret.write_bytes((folder / name).read_bytes())  # a perfectly valid file, but outside
        (folder / name).unlink()
    else:
        secret.write_text("{{ 'the secret text of another file' }}")
    os.symlink(secret, folder / name)
    _refused(folder, f"{name} is a link that leads outside the model folder")
    from explorer.core.analysis.tokenizer_compare import load_tokenizer

    with pytest.raises(ModelLoadError, match="outside the model folder"):
        load_tokenizer(folder)


def test_linked_template_folder_outside_is_refused(tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "m")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "tool.jinja").write_text("secret")
    os.symlink(tmp_path / "etc", folder / "additional_chat_templates")
    _refused(folder, "additional_chat_templates is a link that leads outside")


def test_links_inside_the_folder_and_hub_snapshots_load(tiny_llama, tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = _save(tiny_llama, repo / "snapshots" / "abc123")
    (repo / "blobs").mkdir()
    for path in sorted(snapshot.iterdir()):  # the hub's layout: every file a link into ../../blobs
        blob = repo / "blobs" / f"blob-{path.name}"
        path.rename(blob)
        os.symlink(os.path.relpath(blob, snapshot), path)
    assert load_model(snapshot).info.n_layers == tiny_llama.info.n_layers
    plain = _save(tiny_llama, tmp_path / "plain")
    (plain / "store").mkdir()
    (plain / "model.safetensors").rename(plain / "store" / "w.safetensors")
    os.symlink("store/w.safetensors", plain / "model.safetensors")
    torch.testing.assert_close(_logits(load_model(plain).model), _logits(tiny_llama.model))


def test_link_loop_is_a_clear_error(tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "m")
    os.symlink("loop-b", folder / "loop-a")
    os.symlink("loop-a", folder / "loop-b")
    _refused(folder, "loop-a cannot be followed")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_in_place_of_a_tokenizer_is_refused(tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    os.mkfifo(folder / "tokenizer.json")  # reading it would block forever
    _refused(folder, "tokenizer.json is not a regular file")


# --- item 5: sizes checked before allocating; missing or extra tensors are errors ----------------------


def _with_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize(("key", "value", "match"), [
    ("num_hidden_layers", 100_000, "100,000 layers"),
    ("vocab_size", 20_000_000, "20,000,000 vocabulary"),
    ("hidden_size", 10**9, "hidden size"),
    ("max_position_embeddings", 2**40, "context length"),
    ("num_hidden_layers", 4.5, "not a whole number"),
    ("num_attention_heads", -4, "not a whole number"),
])
def test_config_beyond_caps_is_refused_before_building(key, value, match, tiny_llama, tmp_path, monkeypatch):
    folder = _with_config(_save(tiny_llama, tmp_path / "m"), **{key: value})
    from transformers import AutoConfig

    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: pytest.fail("config was built"))
    _refused(folder, match)


def test_config_larger_than_its_weights_is_refused_before_allocating(tiny_llama, tmp_path, monkeypatch):
    folder = _with_config(_save(tiny_llama, tmp_path / "m"), num_hidden_layers=60, intermediate_size=4096)
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("model was allocated"))
    _refused(folder, "declares a model of .* parameters, but its weight files hold")


def test_empty_weights_file_is_refused(tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "m")
    save_file({}, folder / "model.safetensors", metadata={"format": "pt"})
    _refused(folder, "hold no tensors")


def _edit_weights(folder: Path, edit) -> Path:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_dropped_tensor_is_refused(tiny_llama, tmp_path):
    folder = _edit_weights(_save(tiny_llama, tmp_path / "m"), lambda w: w.pop("model.layers.2.mlp.up_proj.weight"))
    _refused(folder, "1 tensors missing \\(model.layers.2.mlp.up_proj.weight\\)")


def test_extra_tensor_is_refused(tiny_llama, tmp_path):
    def add(w):
        w["model.layers.9.mlp.up_proj.weight"] = torch.zeros(4, 4)

    _refused(_edit_weights(_save(tiny_llama, tmp_path / "m"), add), "tensors unexpected")


def test_wrong_shaped_tensor_is_refused(tiny_llama, tmp_path):
    def shrink(w):
        w["model.norm.weight"] = w["model.norm.weight"][:32].clone()
        w["model.extra"] = torch.zeros(32)  # keep the stored count close to the declared one

    _refused(_edit_weights(_save(tiny_llama, tmp_path / "m"), shrink), "1 tensors with the wrong shape")


def test_huge_tokenizer_file_is_refused(tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "m")
    with open(folder / "tokenizer.json", "r+b") as fh:
        fh.truncate(300 * 2**20)  # sparse: 300 MiB on paper, nothing on disk
    _refused(folder, "tokenizer.json is 300 MiB")


def test_tokenizer_with_ids_beyond_the_vocabulary_is_refused(tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "m")
    from explorer.core.tiny import build_tokenizer

    bigger = build_tokenizer("llama")
    bigger.add_tokens([f"extra{i}" for i in range(10)])
    bigger.save_pretrained(folder)
    _refused(folder, f"token ids up to {len(bigger) - 1}.*{tiny_llama.info.vocab_size} rows")


# --- GGUF -----------------------------------------------------------------------------------------------


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF q/k row order (llama.cpp's convert script); transformers undoes it when loading."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_tiny_gguf(loaded, path: Path, block_count: int | None = None, drop: tuple[str, ...] = (),
                    scale: float = 1.0) -> Path:
    """The tiny Llama as a float32 GGUF file, optionally lying about its layers or missing tensors."""
    import gguf

    cfg, tok = loaded.model.config, loaded.tokenizer
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers if block_count is None else block_count)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_tokenizer_model("gpt2")
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    w.add_token_list([t for t, _ in vocab])
    special = set(tok.all_special_ids)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for _, i in vocab])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_eos_token_id(tok.eos_token_id)
    w.add_chat_template(tok.chat_template)
    for key, value in loaded.model.state_dict().items():
        v = value.float().numpy() * (scale if value.dim() == 2 else 1.0)
        if key == "lm_head.weight":
            continue
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        else:
            layer, part = key.split(".")[2], ".".join(key.split(".")[3:-1])
            name = f"blk.{layer}.{_GGUF_PARTS[part]}.weight"
            if part in ("self_attn.q_proj", "self_attn.k_proj"):
                v = _permute(v, cfg.num_attention_heads if "q_proj" in part else cfg.num_key_value_heads)
        if name not in drop:
            w.add_tensor(name, np.ascontiguousarray(v, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _cache_entries() -> list[Path]:
    root = model_cache.models_dir()
    return [p for p in root.iterdir() if p.name != ".locks"] if root.exists() else []


def test_tiny_gguf_converts_exactly_and_is_cached(tiny_llama, private_cache, tmp_path):
    path = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    loaded = load_model(path)
    torch.testing.assert_close(_logits(loaded.model), _logits(tiny_llama.model))
    assert loaded.tokenizer("Hello world")["input_ids"] == tiny_llama.tokenizer("Hello world")["input_ids"]
    (entry,) = _cache_entries()
    assert entry.name == f"tiny-{model_cache.sha256_file(path)[:16]}" and model_cache.entry_valid(entry)
    assert Path(loaded.source) == entry and not loaded.notes


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(block_count=60), "declares 60 layers .* holds tensors for 4"),
    (dict(block_count=3), "declares 3 layers .* holds tensors for 4"),
    (dict(block_count=100_000), "100000 for llama.block_count"),
    (dict(drop=("blk.1.ffn_up.weight",)), "Layer 1 .* does not hold the same tensors"),
    (dict(drop=("output_norm.weight",)), "tensors missing \\(model.norm.weight\\)"),
    (dict(drop=("token_embd.weight",)), "no token embedding table"),
])
def test_gguf_whose_metadata_disagrees_with_its_tensors_is_refused(kwargs, match, tiny_llama, private_cache,
                                                                   tmp_path):
    path = write_tiny_gguf(tiny_llama, tmp_path / "bad.gguf", **kwargs)
    _refused(path, match)
    assert not _cache_entries()  # never cached as verified


def _gguf_bytes(n_tensors: int, kvs: bytes, n_kv: int = 1) -> bytes:
    import struct

    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs


@pytest.mark.parametrize("data", [
    _gguf_bytes(0, b"\1\0\0\0\0\0\0\0a" + b"\x09\0\0\0" + b"\x08\0\0\0" + (2**60).to_bytes(8, "little")),
    _gguf_bytes(0, b"\1\0\0\0\0\0\0\0a" + b"\x09\0\0\0" + b"\x04\0\0\0" + (2**40).to_bytes(8, "little")),
    _gguf_bytes(2**40, b""),
    _gguf_bytes(0, (2**50).to_bytes(8, "little") + b"key"),
], ids=["string-array", "int-array", "tensor-count", "key-length"])
def test_gguf_header_bombs_are_refused_quickly(data, private_cache, tmp_path):
    path = tmp_path / "bomb.gguf"
    path.write_bytes(data + b"\0" * 64)
    _refused(path, "not a readable GGUF model")


# --- item 8: the cache key is the content, every cached file is checked ---------------------------------


def test_two_ggufs_with_the_same_name_size_and_time_get_their_own_entries(tiny_llama, private_cache, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_tiny_gguf(tiny_llama, tmp_path / "a" / "model.gguf")
    b = write_tiny_gguf(tiny_llama, tmp_path / "b" / "model.gguf", scale=0.5)
    assert a.stat().st_size == b.stat().st_size
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    first, second = load_model(a), load_model(b)
    assert len(_cache_entries()) == 2 and first.source != second.source
    assert not torch.allclose(_logits(first.model), _logits(second.model))
    torch.testing.assert_close(_logits(load_model(a).model), _logits(tiny_llama.model))


@pytest.mark.parametrize("victim", ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                                    "explorer-manifest.json", "+extra.jinja"])
def test_every_cached_file_is_checked(victim, tiny_llama, private_cache, tmp_path, monkeypatch):
    path = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    load_model(path)
    (entry,) = _cache_entries()
    if victim.startswith("+"):
        (entry / victim[1:]).write_text("{{ 'added after the fact' }}")
    elif victim == "explorer-manifest.json":
        meta = json.loads((entry / victim).read_text())
        meta["files"]["config.json"]["sha256"] = "0" * 64
        (entry / victim).write_text(json.dumps(meta))
    else:
        target = entry / victim
        target.write_bytes(target.read_bytes().replace(b"e", b"E", 1))
    assert not model_cache.entry_valid(entry)
    converted = []
    real = gguf_model.convert
    monkeypatch.setattr(gguf_model, "convert", lambda p, progress: (converted.append(p), real(p, progress))[1])
    again = load_model(path)
    assert converted == [path] and model_cache.entry_valid(entry)
    assert again.tokenizer.chat_template == tiny_llama.tokenizer.chat_template


def test_builtin_folder_is_verified_against_the_catalogue(private_cache, monkeypatch):
    import dataclasses

    entry = catalogue.get("minilm-l6")
    files = dict(entry.files)
    assert {"config.json", "tokenizer.json", "vocab.txt"} <= set(files)
    files["tokenizer.json"] = "0" * 64
    wrong = dataclasses.replace(entry, files=files)
    monkeypatch.setattr(catalogue, "get", lambda name: wrong if name == entry.name else None)
    _refused("minilm-l6", "tokenizer.json does not match its checksum")
    monkeypatch.setattr(catalogue, "get", lambda name: dataclasses.replace(entry, sha256="1" * 64)
                        if name == entry.name else None)
    _refused("minilm-l6", "model.safetensors does not match its checksum")


def test_content_digest_is_recomputed_when_the_file_changes(private_cache, tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    first = model_cache.content_sha256(path)
    stat = path.stat()
    path.write_bytes(b"two")  # same size; the time is put back: the change time still differs
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert model_cache.content_sha256(path) == model_cache.sha256_file(path) != first


# --- item 9: concurrent conversions, killed conversions, unwritable caches ------------------------------

_CHILD = textwrap.dedent("""
    import os, sys, time, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {root!r})
    from explorer.core import gguf_model
    from explorer.core.models import load_model
    save = gguf_model.save_converted
    def slow_save(model, tokenizer, folder):
        open(os.path.join({flags!r}, "writing-%d" % os.getpid()), "w").close()
        time.sleep({pause})
        save(model, tokenizer, folder)
    gguf_model.save_converted = slow_save
    while not os.path.exists(os.path.join({flags!r}, "go")):
        time.sleep(0.05)
    loaded = load_model({gguf!r})
    print("OK", loaded.source, loaded.info.n_layers, flush=True)
""")


def _child(tmp_path: Path, gguf: Path, cache: Path, pause: float) -> subprocess.Popen:
    flags = tmp_path / "flags"
    flags.mkdir(exist_ok=True)
    code = _CHILD.format(root=str(ROOT), flags=str(flags), pause=pause, gguf=str(gguf))
    env = {**os.environ, "LM_EXPLORER_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_processes_converting_the_same_model_both_succeed(tiny_llama, private_cache, tmp_path):
    gguf = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    children = [_child(tmp_path, gguf, private_cache, pause=1.0) for _ in range(2)]
    (tmp_path / "flags" / "go").touch()
    results = [c.communicate(timeout=300) for c in children]
    for child, (out, err) in zip(children, results, strict=True):
        assert child.returncode == 0 and out.startswith("OK"), err[-2000:]
    (entry,) = _cache_entries()
    assert {out.split()[1] for out, _ in results} == {str(entry)} and model_cache.entry_valid(entry)
    assert len(list((tmp_path / "flags").glob("writing-*"))) == 1  # the second waited and reused the entry


def test_killed_conversion_leaves_nothing_behind(tiny_llama, private_cache, tmp_path):
    gguf = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    child = _child(tmp_path, gguf, private_cache, pause=60.0)
    (tmp_path / "flags" / "go").touch()
    deadline = time.monotonic() + 120
    while not list((tmp_path / "flags").glob("writing-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    leftovers = [p for p in _cache_entries() if ".tmp-" in p.name]
    assert len(leftovers) == 1  # what a killed conversion leaves
    loaded = load_model(gguf)  # the next start sweeps it and converts
    assert [p.name for p in _cache_entries()] == [Path(loaded.source).name]


def test_a_live_conversions_temporary_folder_is_kept(private_cache):
    entry = model_cache.entry_dir("busy", "ab" * 32)
    entry.parent.mkdir(parents=True)
    tmp = entry.with_name(entry.name + ".tmp-live")
    tmp.mkdir()
    stale = model_cache.entry_dir("old", "cd" * 32).with_name("old-" + "cd" * 8 + ".tmp-dead")
    stale.mkdir()
    with model_cache.entry_lock(entry):
        removed = model_cache.sweep_stale(force=True)
    assert removed == [stale] and tmp.is_dir() and not stale.exists()


def test_unwritable_cache_loads_in_memory_with_one_note(tiny_llama, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LM_EXPLORER_CACHE", str(blocker / "cache"))
    gguf = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    seen = []
    with caplog.at_level("WARNING", logger="explorer.core.models"):
        loaded = load_model(gguf, on_progress=lambda f, m: seen.append(m))
    torch.testing.assert_close(_logits(loaded.model), _logits(tiny_llama.model))
    assert len(loaded.notes) == 1 and "cannot be written" in loaded.notes[0] and "in memory" in loaded.source
    assert [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()] == loaded.notes
    assert loaded.notes[0] in seen


def test_full_cache_loads_in_memory_and_leaves_no_temporary(tiny_llama, private_cache, tmp_path, monkeypatch):
    gguf = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    save = gguf_model.save_converted

    def full_disk(model, tokenizer, folder):
        save(model, tokenizer, folder)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_model, "save_converted", full_disk)
    loaded = load_model(gguf)
    assert len(loaded.notes) == 1 and "No space left" in loaded.notes[0]
    torch.testing.assert_close(_logits(loaded.model), _logits(tiny_llama.model))
    assert not _cache_entries()


# --- item 6: chat templates run with time, size and Stop limits -----------------------------------------


def _with_template(template: str):
    from explorer.core.tiny import build_tokenizer

    tokenizer = build_tokenizer("llama")
    tokenizer.chat_template = template
    return tokenizer


_USER = [{"role": "user", "content": "hi"}]
_LOOPS = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set a = range(100000)|list %}{% for i in a %}{% for j in a %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% for i in range(100000) %}{% endfor %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
]


@pytest.mark.parametrize("template", _LOOPS)
def test_template_that_loops_too_long_is_stopped(template):
    from explorer.core import chat_template
    from explorer.core.errors import ChatTemplateError

    with pytest.raises(ChatTemplateError, match="ran for more than 0.3 s|failed"):
        chat_template.render(_with_template(template), _USER, time_limit=0.3)


@pytest.mark.parametrize("template", [
    "{{ 'a' * 50000000 }}",
    "{{ ['a'] * 50000000 }}",
    "{{ 'x'|center(50000000) }}",
    "{{ 'x'.ljust(50000000) }}",
    "{{ '%50000000d' % 1 }}",
    "{{ '{:50000000}'.format(1) }}",
    "{{ 'x'|indent(50000000, true) }}",
    "{{ {'a': 1}|tojson(indent=50000000) }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(26) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(26) %}{% set ns.s = ns.s|replace('a', 'aa') %}{% endfor %}",
    "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "{{ 7 ** 1000000 }}",
])
def test_template_that_grows_too_big_is_refused_before_allocating(template):
    from explorer.core import chat_template
    from explorer.core.errors import ChatTemplateError

    with pytest.raises(ChatTemplateError, match="more than 1,000,008 characters|width or count|digits long"):
        chat_template.render(_with_template(template), _USER)


def test_huge_template_is_refused_before_compiling(monkeypatch):
    from explorer.core import chat_template
    from explorer.core.errors import ChatTemplateError

    monkeypatch.setattr(chat_template, "_compile", lambda source: pytest.fail("compiled"))
    with pytest.raises(ChatTemplateError, match="characters long"):
        chat_template.render(_with_template("{{ 'x' }}" * 200_000), _USER)


def test_stop_interrupts_a_template():
    import threading

    from explorer.core import chat_template
    from explorer.core.errors import Cancelled
    from explorer.core.tokens import tokenize

    calls = []
    with pytest.raises(Cancelled):
        chat_template.render(_with_template(_LOOPS[1]), _USER, cancel=lambda: calls.append(1) or len(calls) > 3)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        tokenize(_with_template(_LOOPS[0]), "hi", chat=True, cancel=stop)


def test_long_template_through_a_run_is_a_clear_error(tiny_llama, monkeypatch):
    from explorer.core import chat_template
    from explorer.core.api import capture
    from explorer.core.errors import ChatTemplateError, InputError
    from explorer.core.runner import Session

    monkeypatch.setattr(chat_template, "TIME_LIMIT_S", 0.3)
    loaded = models.LoadedModel(tiny_llama.model, _with_template(_LOOPS[0]), tiny_llama.info, "test")
    with pytest.raises(ChatTemplateError) as err:
        capture("hi", Session(loaded), max_new_tokens=1, chat=True)
    assert isinstance(err.value, InputError) and "plain mode" in str(err.value)


@pytest.mark.parametrize("messages", [_USER, [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Ünïcode 東京 " * 500}]])
def test_limited_rendering_matches_transformers(messages, tiny_llama):
    from explorer.core import chat_template

    tok = tiny_llama.tokenizer
    assert chat_template.render(tok, messages) == tok.apply_chat_template(messages, tokenize=False,
                                                                          add_generation_prompt=True)


@pytest.mark.slow
def test_limited_rendering_matches_transformers_on_the_default_template():
    from explorer.core import chat_template
    from explorer.core.analysis.tokenizer_compare import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    for messages in (_USER, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where?"}]):
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert chat_template.render(tok, messages) == expected
