"""Depth lab training: loss goes down, a seed makes it deterministic, cancel saves, resume continues,
checkpoints round-trip exactly and load through explorer.load_model / explorer.capture."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

import explorer
from explorer.cli import main as cli_main
from explorer.lab import checkpoint
from explorer.lab.config import ARCHS
from explorer.lab.data import Corpus, is_heldout, load_corpus
from explorer.lab.train import TrainConfig, model_config, train

TEXT = (b"def add(a, b):\n    return a + b\n\n" * 40 + b"class Point:\n    x = 0\n    y = 0\n\n" * 40)
CORPUS = Corpus(np.frombuffer(TEXT, np.uint8), np.frombuffer(TEXT[::-1][:600][::-1], np.uint8), 1, 1)


def tiny(arch="plain", **kw) -> TrainConfig:
    return TrainConfig(arch=arch, size="tiny", minutes=0, max_steps=kw.pop("max_steps", 30), batch=4, seq=32,
                       eval_every=10, eval_batches=2, eval_batch=2, lr=1e-2, warmup=5, **kw)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _restore_logging():
    """cli_main sets up the app's log handlers on the root logger: remove them again (other tests count them)."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_steps_lower_the_heldout_loss(arch, tmp_path):
    result = train(tiny(arch), tmp_path, corpus=CORPUS)
    held = result.metrics["heldout_bpb"]
    assert held[0][0] == 0 and held[-1][0] == 30 * 4 * 32
    assert held[-1][1] < held[0][1] - 0.5, held
    assert result.metrics["routing"], "routing snapshots are recorded while training"


def test_training_is_deterministic_with_a_seed(tmp_path):
    a = train(tiny("attnres", seed=3, max_steps=12), tmp_path / "a", corpus=CORPUS).metrics
    b = train(tiny("attnres", seed=3, max_steps=12), tmp_path / "b", corpus=CORPUS).metrics
    c = train(tiny("attnres", seed=4, max_steps=12), tmp_path / "c", corpus=CORPUS).metrics
    assert a["heldout_bpb"] == b["heldout_bpb"] and a["train_bpb"] == b["train_bpb"]
    assert a["heldout_bpb"] != c["heldout_bpb"]


def test_resume_continues_where_the_checkpoint_stopped(tmp_path):
    whole = train(tiny("mhc", max_steps=20), tmp_path / "whole", corpus=CORPUS).metrics
    train(tiny("mhc", max_steps=10), tmp_path / "parts", corpus=CORPUS)
    resumed = train(tiny("mhc", max_steps=20), tmp_path / "parts", resume=True, corpus=CORPUS).metrics
    assert resumed["steps"] == 20
    assert resumed["heldout_bpb"][-1][0] == whole["heldout_bpb"][-1][0]
    assert resumed["heldout_bpb"][-1][1] == pytest.approx(whole["heldout_bpb"][-1][1], rel=1e-4)


def test_cancel_saves_a_checkpoint(tmp_path):
    cancel = threading.Event()
    seen = []

    def on_progress(p):
        seen.append(p.step)
        if p.step >= 10:
            cancel.set()

    result = train(tiny("plain", max_steps=1000), tmp_path, corpus=CORPUS, on_progress=on_progress, cancel=cancel)
    assert result.cancelled and result.metrics["steps"] == 10
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "train_state.json").is_file()


@pytest.mark.parametrize("arch", ARCHS)
def test_a_checkpoint_saved_and_loaded_gives_identical_logits(arch, tmp_path):
    from explorer.lab.model import LabForCausalLM

    torch.manual_seed(0)
    model = LabForCausalLM(model_config(arch, "tiny")).eval()
    with torch.no_grad():  # move every parameter off its init so nothing can be re-initialised silently
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    checkpoint.save_model(model, tmp_path)
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(1))
    loaded = explorer.load_model(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids, use_cache=False).logits, model(ids, use_cache=False).logits)
    assert loaded.info.architecture == "explorer_lab" and loaded.info.n_params == sum(
        p.numel() for p in model.parameters())


def test_cli_train_writes_the_stated_files(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli_main(["lab", "train", "--arch", "engram", "--size", "tiny", "--minutes", "0", "--max-steps", "10",
                   "--seq", "32", "--batch", "4", "--eval-every", "5", "--corpus-bytes", "200000", "--seed", "1",
                   "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"arch", "params", "tokens_per_s", "heldout_bpb", "train_bpb"} <= set(metrics)
    assert metrics["arch"] == "engram" and metrics["tokens_per_s"] > 0
    assert all(len(pair) == 2 for pair in metrics["heldout_bpb"] + metrics["train_bpb"])
    assert json.loads((out / "config.json").read_text())["depth"] == "engram"
    assert (out / "model.safetensors").is_file()


def test_capture_on_a_lab_checkpoint_exposes_its_routing(tmp_path):
    train(tiny("attnres", max_steps=5), tmp_path, corpus=CORPUS)
    run = explorer.capture("def add(a, b):", model=str(tmp_path), max_new_tokens=3)  # a folder, like any model
    assert run.n_tokens == len(b"def add(a, b):") + 3
    weights = run.routing["attnres"]  # [readers, tokens, sources]
    assert weights.shape[:2] == (5, run.n_tokens)
    assert np.allclose(np.nansum(weights, axis=-1), 1.0, rtol=1e-5)
    assert run.array("queries").shape[0] == 2  # the capture engine saw both layers' attention


def test_engram_matches_plain_parameters():
    from explorer.lab.model import LabForCausalLM

    plain, engram = (sum(p.numel() for p in LabForCausalLM(model_config(a)).parameters()) for a in ("plain", "engram"))
    assert abs(engram - plain) / plain < 0.01


def test_corpus_is_split_by_file(tmp_path):
    for i in range(40):
        (tmp_path / f"mod{i}.py").write_text(f"x = {i}\n" * 50)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "skipped.py").write_text("SKIPPED = 1\n" * 50)
    corpus = load_corpus(tmp_path, heldout_fraction=0.2)
    held_names = [f"mod{i}.py" for i in range(40) if is_heldout(f"mod{i}.py", 0.2)]
    assert corpus.n_heldout_files == len(held_names) > 0
    assert corpus.n_train_files == 40 - len(held_names)
    for name in held_names:  # every held-out file's text is absent from the training bytes
        assert (tmp_path / name).read_bytes() not in corpus.train.tobytes()
    assert b"SKIPPED" not in corpus.train.tobytes() + corpus.heldout.tobytes()


def test_training_with_a_models_tokenizer_reports_bits_per_byte(tmp_path):
    """The SmolLM2 option, exercised with the tiny byte-level BPE of the test catalogue: the vocabulary
    follows the tokenizer, losses are per byte (not per token), and the saved tokenizer loads with the model."""
    cfg = tiny("engram", max_steps=20, tokenizer="tiny-llama", max_corpus_bytes=150_000)
    result = train(cfg, tmp_path)
    tok = explorer.load_model("tiny-llama").tokenizer
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vocab_size"] == len(tok) != 256
    corpus = load_corpus(max_bytes=150_000, tokenizer=tok)
    assert corpus.heldout_bytes_per_token > 1.2  # a BPE merges bytes
    first = result.metrics["heldout_bpb"][0][1]  # random init: about ln(V) nats per token
    expected = np.log2(len(tok)) / corpus.heldout_bytes_per_token
    assert first == pytest.approx(expected, rel=0.15)
    assert result.metrics["heldout_bpb"][-1][1] < first
    run = explorer.capture("def add(a, b):", model=explorer.load_model(str(tmp_path)), max_new_tokens=2)
    assert run.token_ids.tolist()[:-2] == tok("def add(a, b):", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("field,value", [("hidden_size", 10**9), ("num_hidden_layers", 0), ("mhc_streams", "4"),
                                         ("engram_table_size", -1), ("depth", "resnet")])
def test_an_untrusted_lab_config_is_refused_before_allocating(tmp_path, field, value):
    from explorer.core.errors import ModelLoadError
    from explorer.lab.model import LabForCausalLM

    torch.manual_seed(0)
    checkpoint.save_model(LabForCausalLM(model_config("plain", "tiny")), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="must be an integer|unknown depth connection|refused before any memory"):
        explorer.load_model(str(tmp_path))


@pytest.mark.parametrize("kw", [{"batch": 0}, {"seq": 4}, {"minutes": -1.0}, {"arch": "resnet"}])
def test_unusable_training_settings_are_refused(kw):
    from explorer.core.errors import InputError

    with pytest.raises(InputError):
        TrainConfig(**{"max_steps": 5, **kw})


def test_cli_reports_a_bad_setting_without_a_traceback(tmp_path, capsys):
    assert cli_main(["lab", "train", "--batch", "0", "--max-steps", "1", "--out", str(tmp_path)]) == 2
    assert "batch=0" in capsys.readouterr().err


def test_mhc_stays_doubly_stochastic_after_training(tmp_path):
    """Training sharpens H_res towards a permutation, where the paper's 20 Sinkhorn iterations leave ~1e-2 of
    error in the row sums; the projection must still meet 1e-4 on a trained model."""
    from explorer.lab.routing import record

    train(tiny("mhc", max_steps=40), tmp_path, corpus=CORPUS)
    model = checkpoint.load_lab_model(tmp_path).eval()
    routing = record(model, torch.tensor(list(TEXT[:40])))
    assert routing["mhc_ds_error"].max() <= 1e-4
    assert routing["mhc_h_res"].min() >= 0
