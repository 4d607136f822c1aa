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
from explorer.core.runfile import ENCODED_RTOL, load_run, runs_equal
from explorer.core.runfile_codec import PARTS, decode_q8
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
    assert runs_equal(run, loaded, rtol=ENCODED_RTOL) and not runs_equal(run, loaded)  # the int8 encoding
    exact_path = tmp_path / "exact.npz"
    run.save(exact_path, exact=True)
    exact = explorer.load_run(exact_path)
    assert runs_equal(run, exact)
    assert loaded.finish_reason == run.finish_reason and loaded.request == run.request
    for layer in range(run.info.n_layers):
        # int8 queries and keys (~1% per row): probabilities within 0.05
        np.testing.assert_array_equal(exact.attention(layer, 1), run.attention(layer, 1))
        np.testing.assert_allclose(loaded.attention(layer, 1), run.attention(layer, 1), rtol=0, atol=0.05)
    for step in range(len(run.steps)):
        np.testing.assert_array_equal(loaded.kv_bytes_per_layer(step), run.kv_bytes_per_layer(step))
        assert loaded.steps[step].choice == run.steps[step].choice
    if run.info.is_causal:
        assert_close(loaded.next_token_logprobs(2), run.next_token_logprobs(2), 2e-3)
    assert zipfile.ZipFile(path).namelist()  # a plain npz, readable without LM Explorer
    with np.load(path, allow_pickle=False) as npz:  # a notebook decodes an encoded array with one call
        parts = [npz[f"queries.{part}"] for part in PARTS]
        np.testing.assert_array_equal(decode_q8(*parts, "float16"), loaded.array("queries"))
        codecs = {k: v["codec"] for k, v in json.loads(npz["header"].tobytes())["encodings"].items()}
    # a pre-norm model's residual stream is rebuilt as the sum of its blocks; BERT's (post-norm) is stored
    assert codecs["resid"] == ("q8" if name == "tiny-bert" else "q8sum")
    with np.load(exact_path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["queries"], run.array("queries"))


def test_runs_equal_sees_differences(tiny_run, tmp_path):
    path = tmp_path / "r.npz"
    tiny_run.save(path, include_head=False)
    loaded = load_run(path)
    assert runs_equal(tiny_run, loaded, rtol=ENCODED_RTOL)
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
    path.write_bytes(_edit_header(saved_bytes, lambda h: h.update(version=runfile.VERSION + 1,
                                                                   requires=runfile.VERSION + 1)))
    with pytest.raises(RunFileError, match="newer"):
        load_run(path)
    # a file from before "requires" existed: its version is what it requires
    path.write_bytes(_edit_header(saved_bytes, lambda h: (h.pop("requires"), h.update(version=runfile.VERSION + 1))))
    with pytest.raises(RunFileError, match="newer"):
        load_run(path)


def test_a_newer_file_with_only_optional_additions_opens(saved_bytes, tiny_run, tmp_path):
    """Issue 20 adds run fields: a later writer keeps `requires`, and this reader ignores what it does not know."""
    def later(h):
        h.update(version=runfile.VERSION + 1, retrieved_chunks=[{"text": "a chunk", "score": 0.5}])
        h["steps"][0]["draft"] = {"ids": [1, 2]}
        h["tokens"][0]["source"] = "retrieved"
    path = tmp_path / "later.npz"
    path.write_bytes(_edit_header(saved_bytes, later))
    assert runs_equal(load_run(path), tiny_run, rtol=ENCODED_RTOL)


def test_format_1_files_still_open(tiny_run, tmp_path):
    """Before the encoding: version 1, no `requires`, every array as captured (what save(exact=True) stores)."""
    path = tmp_path / "v2.npz"
    tiny_run.save(path, exact=True)

    def as_v1(h):
        h.pop("requires")
        h.pop("encodings")
        h["version"] = 1
    old = tmp_path / "v1.npz"
    old.write_bytes(_edit_header(path.read_bytes(), as_v1))
    with zipfile.ZipFile(old) as zf:
        assert "queries.npy" in zf.namelist() and not any(".codes" in n for n in zf.namelist())
    assert runs_equal(load_run(old), tiny_run)


HAND_EDITS = {
    "encoding_unknown_codec": lambda h: h["encodings"]["queries"].update(codec="q4"),
    "encoding_dtype": lambda h: h["encodings"]["queries"].update(dtype="int64"),
    "encoding_undeclared": lambda h: h["encodings"].pop("keys"),
    "encoding_not_an_activation": lambda h: h["encodings"].update(pred_entropy={"codec": "q8", "dtype": "float16"}),
    "encoding_of_an_absent_array": lambda h: h["encodings"].update(values={"codec": "q8", "dtype": "float16"}) or
    h["encodings"].pop("keys"),
    "encodings_not_a_dict": lambda h: h.update(encodings=[]),
    "requires_garbled": lambda h: h.update(requires="2"),
    "version_zero": lambda h: h.update(version=0, requires=0),
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
    "drop_queries": lambda a: a.pop("queries.codes"),
    "short_keys": lambda a: a.update({"keys.codes": a["keys.codes"][:, :, :-1]}),
    "resid_dtype": lambda a: a.update({"resid.codes": a["resid.codes"].astype(np.int16)}),
    "codes_as_floats": lambda a: a.update({"resid.codes": a["resid.codes"].astype(np.float16)}),
    "scale_shape": lambda a: a.update({"values.scale": a["values.scale"][..., :-1]}),
    "scale_negative": lambda a: a.update({"values.scale": -a["values.scale"]}),
    "scale_nan": lambda a: a.update({"values.scale": np.full_like(a["values.scale"], np.nan)}),
    "outlier_index_range": lambda a: a.update({"mlp_out.oidx": np.append(a["mlp_out.oidx"], 10**9),
                                               "mlp_out.oval": np.append(a["mlp_out.oval"], 1.0)}),
    "outlier_index_negative": lambda a: a.update({"mlp_out.oidx": np.append(-1, a["mlp_out.oidx"]),
                                                  "mlp_out.oval": np.append(1.0, a["mlp_out.oval"])}),
    "outlier_index_repeated": lambda a: a.update({"mlp_out.oidx": np.append(a["mlp_out.oidx"], [5, 5]),
                                                  "mlp_out.oval": np.append(a["mlp_out.oval"], [1.0, 1.0])}),
    "outlier_values_long": lambda a: a.update({"mlp_out.oval": np.append(a["mlp_out.oval"], 1.0)}),
    "outliers_beyond_the_array": lambda a: a.update({"keys.oidx": np.arange(a["keys.codes"].size + 1),
                                                     "keys.oval": np.zeros(a["keys.codes"].size + 1, np.float16)}),
    "part_dropped": lambda a: a.pop("attn_out.oval"),
    "raw_and_encoded": lambda a: a.update(queries=np.zeros(a["queries.codes"].shape, np.float16)),
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
    assert runs_equal(loaded, tiny_run, rtol=ENCODED_RTOL)


SUBSET_EDITS = {
    "not_a_dict": lambda v: ["a"],
    "lengths": lambda v: {**v, "texts": v["texts"][:-1]},
    "id_beyond_vocab": lambda v: {**v, "ids": [*v["ids"][:-1], 10**6]},
    "ids_unsorted": lambda v: {**v, "ids": v["ids"][::-1]},
    "text_not_str": lambda v: {**v, "texts": [1] * len(v["texts"])},
    "id_bool": lambda v: {**v, "ids": [True, *v["ids"][1:]]},
}


def test_a_run_saved_without_its_head_keeps_the_texts_it_names(tiny_run, tiny_models, tmp_path):
    from explorer.core.labels import token_text

    path = tmp_path / "nohead.npz"
    tiny_run.save(path, include_head=False)
    with np.load(path) as npz:
        header = json.loads(npz["header"].tobytes())
    assert "vocab" not in header and len(header["vocab_subset"]["ids"]) < tiny_run.info.vocab_size
    loaded = load_run(path)
    assert loaded.vocab.partial and len(loaded.vocab) == tiny_run.info.vocab_size
    for i in {*tiny_run.array("pred_top_ids").ravel().tolist(), *(t.id for t in tiny_run.tokens)}:
        assert token_text(loaded, i) == tiny_run.vocab[i]  # every alternative by name, no model needed
    assert Session(tiny_models["tiny-llama"]).attach_head(loaded)
    assert loaded.vocab == tiny_run.vocab and not getattr(loaded.vocab, "partial", False)  # the model's own texts
    full = tmp_path / "head.npz"
    tiny_run.save(full)  # with the head, the lens can name any id: every text is kept
    assert load_run(full).vocab == tiny_run.vocab


@pytest.mark.parametrize("edit", sorted(SUBSET_EDITS))
def test_garbled_vocabulary_texts_are_refused(edit, tiny_run, tmp_path):
    path = tmp_path / "nohead.npz"
    tiny_run.save(path, include_head=False)
    path.write_bytes(_edit_header(path.read_bytes(), lambda h: h.update(vocab_subset=SUBSET_EDITS[edit](
        h["vocab_subset"]))))
    with pytest.raises(RunFileError, match="vocabulary"):
        load_run(path)
