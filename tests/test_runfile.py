"""Run files: a saved run loads equal; anything damaged, foreign or inconsistent gives RunFileError."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numeric import assert_close

import explorer
from explorer.core import runfile
from explorer.core.api import capture
from explorer.core.errors import RunFileError
from explorer.core.runfile import load_run, runs_equal
from explorer.core.runner import Session


@pytest.fixture(scope="module")
def tiny_run(tiny_models):
    return capture("The capital of France is 東京 👩‍👩‍👧", Session(tiny_models["tiny-llama"]), max_new_tokens=4)


@pytest.fixture(scope="module")
def saved_bytes(tiny_run, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("runs") / "run.npz"
    tiny_run.save(path)
    return path.read_bytes()


def _rewrite(data: bytes, edit) -> bytes:
    """Rewrite a saved run's npz with `edit(arrays)` applied (arrays: name -> ndarray)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def _edit_header(data: bytes, change) -> bytes:
    def edit(arrays):
        header = json.loads(arrays["header"].tobytes())
        change(header)
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    return _rewrite(data, edit)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_save_and_load_are_equal(name, tiny_models, tmp_path):
    run = capture("Once upon a time 😀", Session(tiny_models[name]), max_new_tokens=3)
    path = tmp_path / "r.npz"
    run.save(path)
    loaded = explorer.load_run(path)
    assert runs_equal(run, loaded)
    assert loaded.finish_reason == run.finish_reason and loaded.request == run.request
    for layer in range(run.info.n_layers):
        np.testing.assert_array_equal(loaded.attention(layer, 1), run.attention(layer, 1))
    for step in range(len(run.steps)):
        np.testing.assert_array_equal(loaded.kv_bytes_per_layer(step), run.kv_bytes_per_layer(step))
        assert loaded.steps[step].choice == run.steps[step].choice
    if run.info.is_causal:
        assert_close(loaded.next_token_logprobs(2), run.next_token_logprobs(2), 2e-3)
    assert zipfile.ZipFile(path).namelist()  # a plain npz, readable without LM Explorer
    with np.load(path, allow_pickle=False) as npz:
        assert "queries" in npz.files


def test_runs_equal_sees_differences(tiny_run, tmp_path):
    path = tmp_path / "r.npz"
    tiny_run.save(path, include_head=False)
    loaded = load_run(path)
    assert runs_equal(tiny_run, loaded)
    other = capture("The capital of France is 東京 👩‍👩‍👧", Session(tiny_run_model(tiny_run)), max_new_tokens=4,
                    temperature=2.0, seed=1)
    assert not runs_equal(tiny_run, other)


def tiny_run_model(run):
    from explorer.core.models import load_model

    return load_model(run.info.name)


def test_atomic_write_leaves_no_partial_file(tiny_run, tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    tiny_run.save(path)
    before = path.read_bytes()

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(runfile.np, "savez_compressed", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        tiny_run.save(path)
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]  # no temporary left behind
    with pytest.raises(OSError):
        tiny_run.save(tmp_path / "new.npz")
    assert not (tmp_path / "new.npz").exists()


def test_damaged_files(saved_bytes, tmp_path):
    cases = {
        "missing": None,
        "empty": b"",
        "truncated": saved_bytes[: len(saved_bytes) // 2],
        "truncated_tail": saved_bytes[:-30],
        "text": b"hello, I am not a run\n",
        "random": bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
        "pickle": b"\x80\x04\x95\x00\x00",
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.npz"
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(RunFileError):
            load_run(path)


def test_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(RunFileError, match="not an LM Explorer run"):
        load_run(path)
    np.savez(path, header=np.frombuffer(b'{"format": "something-else"}', np.uint8))
    with pytest.raises(RunFileError, match="not an LM Explorer run"):
        load_run(path)
    np.savez(path, header=np.frombuffer(b"\xff\xfe not json", np.uint8))
    with pytest.raises(RunFileError):
        load_run(path)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(RunFileError):
        load_run(tmp_path / "plain.npy")


def test_object_arrays_are_refused(saved_bytes, tmp_path):
    def edit(arrays):
        arrays["token_rank"] = np.array([object()] * len(arrays["token_rank"]), dtype=object)

    path = tmp_path / "pickled.npz"
    path.write_bytes(_rewrite(saved_bytes, edit))
    with pytest.raises(RunFileError):
        load_run(path)


def test_future_version(saved_bytes, tmp_path):
    path = tmp_path / "future.npz"
    path.write_bytes(_edit_header(saved_bytes, lambda h: h.update(version=runfile.VERSION + 1)))
    with pytest.raises(RunFileError, match="newer"):
        load_run(path)


HAND_EDITS = {
    "n_tokens": lambda h: h.update(n_tokens=h["n_tokens"] + 1),
    "text": lambda h: h.update(text=h["text"] + "!"),
    "token_span": lambda h: h["tokens"][2].update(end=h["tokens"][2]["end"] + 1),
    "token_kind": lambda h: h["tokens"][0].update(kind="wizard"),
    "token_dropped": lambda h: h["tokens"].pop(),
    "step_start": lambda h: h["steps"][1].update(start=h["steps"][1]["start"] + 1),
    "step_dropped": lambda h: h["steps"].pop(),
    "layers": lambda h: h["info"].update(n_layers=h["info"]["n_layers"] + 1),
    "heads": lambda h: h["info"].update(n_heads=3),
    "info_missing": lambda h: h["info"].pop("head_dim"),
    "info_type": lambda h: h["info"].update(n_layers="four"),
    "settings": lambda h: h["request"]["settings"].update(wobble=1),
    "bytes_hex": lambda h: h["tokens"][1].update(bytes="zz"),
    "choice": lambda h: h["steps"][0].update(choice={"token_id": 1}),
    "not_a_dict": lambda h: h.clear(),
}


@pytest.mark.parametrize("edit", sorted(HAND_EDITS))
def test_hand_edited_inconsistent_header(edit, saved_bytes, tmp_path):
    path = tmp_path / f"{edit}.npz"
    path.write_bytes(_edit_header(saved_bytes, HAND_EDITS[edit]))
    with pytest.raises(RunFileError):
        load_run(path)


ARRAY_EDITS = {
    "drop_queries": lambda a: a.pop("queries"),
    "short_keys": lambda a: a.update(keys=a["keys"][:, :, :-1]),
    "resid_dtype": lambda a: a.update(resid=a["resid"].astype(np.int16)),
    "top_ids_range": lambda a: a.update(pred_top_ids=a["pred_top_ids"] + 10_000),
    "kv_steps": lambda a: a.update(kv_bytes=a["kv_bytes"][:-1]),
    "unembed_shape": lambda a: a.update(unembed=a["unembed"][:-1]),
    "scaling_shape": lambda a: a.update(scaling=np.ones(1, np.float32)),
    "header_2d": lambda a: a.update(header=a["header"][None]),
}


@pytest.mark.parametrize("edit", sorted(ARRAY_EDITS))
def test_inconsistent_arrays(edit, saved_bytes, tmp_path):
    path = tmp_path / f"{edit}.npz"
    path.write_bytes(_rewrite(saved_bytes, ARRAY_EDITS[edit]))
    with pytest.raises(RunFileError):
        load_run(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bytes_load_equal_or_raise_runfileerror(data, saved_bytes, tiny_run, tmp_path):
    blob = bytearray(saved_bytes)
    n_edits = data.draw(st.integers(1, 4))
    for _ in range(n_edits):
        where = data.draw(st.one_of(
            st.integers(0, len(blob) - 1),  # anywhere
            st.integers(0, 200),  # the first local header and the start of the JSON header
            st.integers(max(0, len(blob) - 1500), len(blob) - 1),  # the central directory
        ))
        blob[where] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzz.npz"
    path.write_bytes(bytes(blob))
    try:
        loaded = load_run(path)
    except RunFileError:
        return
    assert runs_equal(loaded, tiny_run)
