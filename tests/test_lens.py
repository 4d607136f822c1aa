"""Fitted lenses on the tiny Llama, in seconds: the readout, the files, the estimators, the fit, the CLI."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from explorer.core.analysis.align import lens_logprobs
from explorer.core.analysis.depth import compute_lens, lens_columns, lens_inputs
from explorer.core.api import capture
from explorer.core.errors import Cancelled
from explorer.core.lens import Lens, LensError
from explorer.core.lens_fit import (
    FitConfig,
    _frozen,
    _States,
    fit_lens,
    jacobian_from_sums,
    jacobian_probe,
    split_files,
    stdlib_files,
)
from explorer.core.lens_store import load_lens, read_lens, save_lens, top_tokens

PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture(scope="module")
def files():
    return stdlib_files()[:60]


@pytest.fixture
def tiny_run(tiny_session):
    return capture(PROMPT, tiny_session, max_new_tokens=3)


def _random_lens(info, seed=0, kind="tuned") -> Lens:
    rng = np.random.default_rng(seed)
    L, D = info.n_layers, info.hidden_size
    matrix = (np.eye(D) + 0.3 * rng.standard_normal((L, D, D)) / np.sqrt(D)).astype(np.float32)
    return Lens(kind, info.name, matrix, (0.1 * rng.standard_normal((L, D))).astype(np.float32), kind == "tuned")


def test_kl_per_cell_matches_full_softmax(tiny_run):
    lens = _random_lens(tiny_run.info)
    for readout in (None, lens):
        cols = lens_columns(tiny_run, 0, tiny_run.n_tokens, readout=readout)
        for pos in (0, 5, tiny_run.n_tokens - 1):
            logp = lens_logprobs(tiny_run, pos, readout)  # [L+1, vocab]
            final = logp[-1]
            brute = (np.exp(final) * (final - logp)).sum(-1)  # [L+1]
            np.testing.assert_allclose(cols.kl[:, pos], brute, rtol=1e-3, atol=1e-4 * max(1.0, brute.max()))
            assert cols.top_ids[:, pos, 0].tolist() == logp.argmax(-1).tolist()
        assert cols.kl[-1].max() < 1e-3  # the last depth is the model's own prediction


def test_blocks_of_positions_give_the_same_columns(tiny_run):
    resid, targets = lens_inputs(tiny_run, 0, tiny_run.n_tokens)
    whole = compute_lens(resid, targets, tiny_run.norm, tiny_run.unembed)
    import explorer.core.lens as depth

    old = depth._KL_BLOCK
    depth._KL_BLOCK = 4
    try:
        blocked = compute_lens(resid, targets, tiny_run.norm, tiny_run.unembed)
    finally:
        depth._KL_BLOCK = old
    assert blocked.top_ids.shape == whole.top_ids.shape
    np.testing.assert_array_equal(blocked.top_ids, whole.top_ids)
    np.testing.assert_allclose(blocked.kl, whole.kl, rtol=1e-4, atol=1e-5)


def test_identity_tuned_lens_is_the_logit_lens(tiny_run):
    info = tiny_run.info
    eye = Lens("tuned", info.name, np.tile(np.eye(info.hidden_size, dtype=np.float32), (info.n_layers, 1, 1)),
               np.zeros((info.n_layers, info.hidden_size), np.float32), normalize_input=True)
    a = lens_columns(tiny_run, 0, tiny_run.n_tokens)
    b = lens_columns(tiny_run, 0, tiny_run.n_tokens, readout=eye)
    np.testing.assert_array_equal(a.top_ids[..., 0], b.top_ids[..., 0])
    np.testing.assert_allclose(a.kl, b.kl, rtol=1e-3, atol=1e-4 * float(a.kl.max()))
    assert b.label == "tuned lens" and a.label == "logit lens"


def test_translate_checks_shapes_and_keeps_the_last_row(tiny_run):
    lens = _random_lens(tiny_run.info)
    resid, _ = lens_inputs(tiny_run, 0, 4)
    out = lens.translate(resid)
    np.testing.assert_array_equal(out[-1], resid[-1])
    assert not np.allclose(out[0], resid[0])
    with pytest.raises(LensError, match="expects"):
        lens.translate(resid[1:])


def test_save_load_round_trip_and_refusals(tmp_path, tiny_run):
    info = tiny_run.info
    lens = _random_lens(info, kind="jacobian")
    save_lens(lens, tmp_path / "ok", {"kind": "jacobian", "layers": [{"layer": 0, "kl_logit_lens": 2.0,
                                                                      "kl_fitted": 1.0}]})
    back = load_lens(tmp_path / "ok", n_layers=info.n_layers, hidden=info.hidden_size, model=info.name)
    np.testing.assert_array_equal(back.matrix, lens.matrix)
    assert back.kind == "jacobian" and not back.normalize_input and back.kl_curves()[1].tolist() == [1.0]
    with pytest.raises(LensError, match="fitted on"):
        load_lens(tmp_path / "ok", model="another-model")
    with pytest.raises(LensError, match="layers"):
        load_lens(tmp_path / "ok", n_layers=info.n_layers + 1)
    with pytest.raises(LensError, match="No lens"):
        load_lens(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "lens.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(LensError):
        load_lens(tmp_path / "junk")
    bad = Lens("tuned", info.name, lens.matrix.copy(), lens.bias.copy(), True)
    bad.matrix[0, 0, 0] = np.nan
    save_lens(bad, tmp_path / "nan")
    with pytest.raises(LensError, match="non-finite"):
        load_lens(tmp_path / "nan")
    from safetensors.numpy import save_file

    (tmp_path / "f16").mkdir()
    save_file({"matrix": lens.matrix.astype(np.float16), "bias": lens.bias.astype(np.float16)},
              str(tmp_path / "f16" / "lens.safetensors"), metadata={"kind": "tuned", "format": "1"})
    with pytest.raises(LensError, match="float32"):
        load_lens(tmp_path / "f16")


def test_jacobian_estimator_matches_the_exact_per_position_jacobian(tiny_llama):
    """Hutchinson probes with the identity control variate against basis-vector backward passes."""
    torch.manual_seed(0)
    info = tiny_llama.info
    L, D = info.n_layers, info.hidden_size
    ids = torch.randint(10, info.vocab_size, (3, 8))
    skip = 2
    with _frozen(tiny_llama.model), _States(tiny_llama, grad=True) as states, torch.enable_grad():
        rows = states.run(ids)
        exact = torch.zeros(L, D, D, dtype=torch.float64)
        count = 0
        for b in range(ids.shape[0]):
            for p in range(skip, ids.shape[1]):
                for i in range(D):
                    cot = torch.zeros_like(rows[-1])
                    cot[b, p, i] = 1.0
                    grads = torch.autograd.grad(rows[-1], rows[:-1], cot, retain_graph=True)
                    for layer in range(L):
                        exact[layer, i] += grads[layer][b, p].double()  # row i of J_pp
                count += 1
        exact /= count
        acc = torch.zeros(L, D, D, dtype=torch.float64)
        gen = torch.Generator().manual_seed(1)
        n = sum(jacobian_probe(states, ids, acc, gen, skip) for _ in range(1200))
    assert not any(p.requires_grad for p in tiny_llama.model.parameters())  # the shared model is left as it was
    estimate = jacobian_from_sums(acc, n)
    eye = torch.eye(D, dtype=torch.float64)
    for layer in range(L):
        target = exact[layer] - eye
        err = torch.linalg.norm(estimate[layer] - eye - target) / torch.linalg.norm(target)
        flipped = torch.linalg.norm(estimate[layer].T - eye - target) / torch.linalg.norm(target)
        assert err < 0.45, (layer, float(err))  # noise shrinks as 1/sqrt(rounds): ~0.3 here
        assert err < flipped  # the orientation (out x in) is right


def test_split_is_by_file_and_disjoint():
    files = stdlib_files()
    train, held = split_files(files)
    assert held and train and not set(train) & set(held)
    assert 0.03 < len(held) / len(files) < 0.2
    assert all("site-packages" not in f.parts and "test" not in f.parts for f in files)


@pytest.mark.parametrize("kind", ["tuned", "jacobian"])
def test_fit_reports_progress_and_measures_held_out_kl(tiny_llama, files, kind):
    seen = []
    cfg = FitConfig(kind=kind, minutes=0.2, seq_len=32, batch=2, eval_windows=2, max_steps=40)
    lens, metrics = fit_lens(tiny_llama, cfg, on_progress=lambda f, m: seen.append(f), files=files)
    assert seen[-1] == 1.0 and all(b >= a - 1e-9 for a, b in zip(seen, seen[1:], strict=False))
    assert metrics["kind"] == kind and len(metrics["layers"]) == tiny_llama.info.n_layers
    assert lens.matrix.shape == (tiny_llama.info.n_layers, tiny_llama.info.hidden_size, tiny_llama.info.hidden_size)
    logit = np.array([r["kl_logit_lens"] for r in metrics["layers"]])
    fitted = np.array([r["kl_fitted"] for r in metrics["layers"]])
    assert np.isfinite(fitted).all() and (logit > 0).all()
    if kind == "tuned":  # a fitted affine map from the embeddings beats reading them as the last layer
        assert fitted[0] < logit[0] and fitted.mean() < logit.mean()


def test_fit_can_be_cancelled(tiny_llama, files):
    cancel = threading.Event()

    def progress(_f, _m):
        cancel.set()

    with pytest.raises(Cancelled):
        fit_lens(tiny_llama, FitConfig(kind="jacobian", minutes=1.0, seq_len=16), on_progress=progress,
                 cancel=cancel, files=files)


def test_fit_refuses_bad_settings_and_encoders(tiny_models, files):
    with pytest.raises(LensError, match="kind"):
        fit_lens(tiny_models["tiny-llama"], FitConfig(kind="logit"), files=files)
    with pytest.raises(LensError, match="out of range"):
        fit_lens(tiny_models["tiny-llama"], FitConfig(minutes=-1), files=files)
    with pytest.raises(LensError, match="language-model head"):
        fit_lens(tiny_models["tiny-bert"], FitConfig(minutes=0.01), files=files)


@pytest.fixture
def own_logging(tmp_path, monkeypatch):
    """The CLI sets up logging in-process: its handlers (on this test's captured stderr) go when the test ends."""
    import logging

    monkeypatch.setenv("LM_EXPLORER_LOG_DIR", str(tmp_path / "logs"))
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for h in root.handlers[:]:
        if h not in before:
            root.removeHandler(h)
            h.close()


def test_cli_fit_then_capture_with_the_lens(tmp_path, tiny_session, monkeypatch, capsys, own_logging):
    from explorer.cli import main

    out = tmp_path / "lens"
    code = main(["lens", "fit", "--kind", "tuned", "--model", "tiny-llama", "--minutes", "0.03", "--out", str(out),
                 "--seq-len", "32", "--batch", "2", "--eval-windows", "2", "--threads", "1"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "tuned"
    assert [r["layer"] for r in metrics["layers"]] == list(range(tiny_session.info.n_layers))
    assert all(set(r) >= {"layer", "kl_logit_lens", "kl_fitted"} for r in metrics["layers"])
    run = capture(PROMPT, tiny_session, lens=out, lens_top_k=3)
    cols = run.lens
    assert cols.top_ids.shape == (run.info.n_layers + 1, run.n_tokens, 3) and cols.label == "tuned lens"
    logits = np.stack([run.next_token_logprobs(p) for p in range(run.n_tokens)])  # the last depth: the model
    assert cols.top_ids[-1, :, 0].tolist() == logits.argmax(-1).tolist()
    names = top_tokens(run, cols)
    assert names[-1][0][0] == run.vocab[int(cols.top_ids[-1, 0, 0])]
    direct = read_lens(run, out, k=3)  # the same lens read again from its folder
    np.testing.assert_array_equal(direct.top_ids, cols.top_ids)
    assert main(["lens", "show", "--lens", str(out), "--prompt", PROMPT, "--model", "tiny-llama"]) == 0
    assert "tuned lens at position" in capsys.readouterr().out
    with pytest.raises(LensError, match="No tuned lens is cached"):
        monkeypatch.setenv("LM_EXPLORER_CACHE", str(tmp_path / "cache"))
        capture(PROMPT, tiny_session, lens="tuned")


def test_fit_works_on_a_layernorm_model_and_leaves_the_weights_alone(tiny_models, files):
    loaded = tiny_models["tiny-gpt2"]
    flags = [p.requires_grad for p in loaded.model.parameters()]
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    for kind in ("tuned", "jacobian"):
        lens, metrics = fit_lens(loaded, FitConfig(kind=kind, minutes=0.1, seq_len=32, batch=2, eval_windows=2,
                                                   max_steps=5), files=files)
        assert np.isfinite(lens.matrix).all() and len(metrics["layers"]) == loaded.info.n_layers
    assert [p.requires_grad for p in loaded.model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
