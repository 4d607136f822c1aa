"""Depth lab models (issue 19 section 6): each variant reduces to the plain model where the paper says it
should, mHC's mixing is doubly stochastic, and incremental decoding equals a full forward."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from explorer.lab.config import ARCHS, LabConfig
from explorer.lab.connections import sinkhorn
from explorer.lab.model import LabForCausalLM

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=128, mhc_streams=4, attnres_block_size=2,
            engram_table_size=97, engram_dim=8, engram_layers=(0, 2))


def build(depth: str, seed: int = 0, **extra) -> LabForCausalLM:
    torch.manual_seed(seed)
    return LabForCausalLM(LabConfig(depth=depth, **{**TINY, **extra})).eval()


def with_plain_weights(depth: str, **extra) -> tuple[LabForCausalLM, LabForCausalLM]:
    """A plain model and a variant sharing every weight they have in common (the variant's own
    parameters keep their init)."""
    plain = build("plain", seed=1, **extra)
    variant = build(depth, seed=2, **extra)
    missing, unexpected = variant.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected
    assert missing, "the variant should have parameters of its own"
    return plain, variant


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))


def close(a, b, rel=1e-5):
    return torch.allclose(a, b, rtol=rel, atol=rel * float(b.abs().max()))


def test_attnres_unit_weights_equal_the_plain_residual():
    """The paper's framing: a standard residual is depth-wise attention with unit weights over
    [embedding, every earlier output] (a sum, not a softmax)."""
    plain, attn = with_plain_weights("attnres")
    attn.model.connection.fixed_weights = lambda reader, n: torch.ones(n)
    assert close(logits(attn, IDS), logits(plain, IDS))
    attn.model.connection.fixed_weights = None
    assert not close(logits(attn, IDS), logits(plain, IDS))  # the learned (uniform) softmax is not a sum


def test_attnres_one_hot_routing_reads_exactly_that_source():
    """One-hot routing on the previous sublayer's output: each sublayer reads v_{k} only."""
    model = build("attnres")
    conn = model.model.connection
    conn.fixed_weights = lambda reader, n: torch.nn.functional.one_hot(torch.tensor(n - 1), n).float()
    emb = torch.randn(1, 5, 32)
    ys = [torch.randn(1, 5, 32) for _ in range(3)]
    state = conn.start(emb)
    for k, y in enumerate(ys):
        state = conn.write(state, k, y)
        assert torch.equal(conn.read(state, k + 1), y)


def test_attnres_queries_start_at_zero_so_routing_starts_uniform():
    model = build("attnres")
    assert torch.count_nonzero(model.model.connection.queries) == 0
    rec: dict = {}
    model.set_recording(rec)
    logits(model, IDS[:1])
    for _reader, alpha in rec["attnres"].items():  # [1, T, S]
        assert torch.allclose(alpha, torch.full_like(alpha, 1.0 / alpha.shape[-1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mhc_mixing_matrices_are_doubly_stochastic(seed):
    model = build("mhc", seed=seed)
    with torch.no_grad():  # move away from the near-identity init
        model.model.connection.b_res.normal_(0, 1.0)
        model.model.connection.alpha.fill_(0.1)
    rec: dict = {}
    model.set_recording(rec)
    logits(model, IDS)
    for _pre, _post, res in rec["mhc"].values():  # [B, T, n, n]
        assert (res >= 0).all()
        assert torch.allclose(res.sum(-1), torch.ones(()), atol=1e-4)
        assert torch.allclose(res.sum(-2), torch.ones(()), atol=1e-4)


def test_sinkhorn_of_random_logits_is_doubly_stochastic():
    """At the paper's 20 iterations for logits of unit scale (far sharper logits converge more slowly:
    the panel shows each matrix's doubly-stochastic error)."""
    m = sinkhorn(torch.randn(200, 4, 4, generator=torch.Generator().manual_seed(0)), iters=20)
    assert torch.allclose(m.sum(-1), torch.ones(()), atol=1e-4)
    assert torch.allclose(m.sum(-2), torch.ones(()), atol=1e-4)


def test_mhc_with_one_stream_reduces_to_a_residual():
    plain, mhc = with_plain_weights("mhc", mhc_streams=1)
    conn = mhc.model.connection
    conn.override = {"pre": torch.ones(1), "post": torch.ones(1)}  # H_pre = H_post = 1; H_res is exactly 1
    assert close(logits(mhc, IDS), logits(plain, IDS))
    conn.override = {}
    assert not close(logits(mhc, IDS), logits(plain, IDS))


def test_mhc_sublayer_k_starts_reading_stream_k_mod_n():
    model = build("mhc")
    pre = torch.sigmoid(model.model.connection.b_pre)  # [K, n]
    assert torch.equal(pre.argmax(-1), torch.arange(pre.shape[0]) % 4)


def test_moda_with_depth_keys_masked_equals_plain_attention():
    plain, moda = with_plain_weights("moda")
    for layer in moda.model.layers:
        layer.self_attn.mask_depth = True
    assert close(logits(moda, IDS), logits(plain, IDS))
    for layer in moda.model.layers:
        layer.self_attn.mask_depth = False
    assert not close(logits(moda, IDS), logits(plain, IDS))


def test_engram_with_a_zero_gate_equals_the_base_model():
    plain, engram = with_plain_weights("engram")
    engrams = [layer.engram for layer in engram.model.layers if layer.engram is not None]
    assert len(engrams) == 2
    for e in engrams:
        e.gate_override = 0.0
    assert close(logits(engram, IDS), logits(plain, IDS))
    for e in engrams:
        e.gate_override = None
    assert not close(logits(engram, IDS), logits(plain, IDS))


def test_engram_tables_are_indexed_by_the_ngram():
    eng = build("engram").model.layers[0].engram
    ids = torch.tensor([[256, 256, 5, 6, 7, 1, 6, 7]])  # two left-padding ids, then 6 tokens
    rows = eng.indices(ids)  # [1, 6, tables]: tables 0-1 hash 2-grams, 2-3 hash 3-grams
    assert rows.shape == (1, 6, 4)
    assert torch.equal(rows[0, 2, :2], rows[0, 5, :2])  # the same 2-gram (6, 7)
    assert not torch.equal(rows[0, 2, 2:], rows[0, 5, 2:])  # different 3-grams (5, 6, 7) vs (1, 6, 7)
    assert int(rows.max()) < eng.size


@pytest.mark.parametrize("arch", ARCHS)
def test_incremental_decoding_equals_a_full_forward(arch):
    model = build(arch)
    ids = IDS[:1, :20]
    full = logits(model, ids)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        parts = [model(ids[:, :12], cache=cache, use_cache=True).logits]
        for i in range(12, 20):
            parts.append(model(ids[:, i:i + 1], cache=cache, use_cache=True).logits)
    assert close(torch.cat(parts, 1), full, rel=1e-4)


def test_lab_package_imports_no_qt():
    """explorer/lab is Qt-free like explorer/core: a notebook trains and reads routing without a GUI."""
    import ast
    from pathlib import Path

    lab = Path(__file__).resolve().parents[1] / "explorer" / "lab"
    forbidden = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "qtpy", "superqt", "shiboken6")
    files = sorted(lab.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in forbidden for n in names), (path.name, names)
            if isinstance(node, ast.ImportFrom) and node.level:
                assert "ui" not in (node.module or "").split("."), (path.name, node.module)
