"""Hardening round 2 (issue 16), run side: crafted run files, atomic saves, prompts, spans, patching, fp16."""

from __future__ import annotations

import ast
import contextlib
import errno
import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer.core import runfile, runfile_read
from explorer.core.api import capture
from explorer.core.errors import ExplorerError, RunFileError
from explorer.core.runfile import ENCODED_RTOL, load_run, runs_equal
from explorer.core.runner import Session

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def small_run(tiny_models):
    return capture("Hello 東京 👩‍👩‍👧", Session(tiny_models["tiny-llama"]), max_new_tokens=3)


@pytest.fixture(scope="module")
def members(small_run, tmp_path_factory) -> dict[str, bytes]:
    """The saved run's zip members: name -> raw .npy bytes."""
    path = tmp_path_factory.mktemp("runs") / "run.npz"
    small_run.save(path)
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _zip(members: dict[str, bytes], compress: dict[str, int] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data, compress_type=(compress or {}).get(name, zipfile.ZIP_STORED))
    return out.getvalue()


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _header(members) -> dict:
    return json.loads(np.load(io.BytesIO(members["header.npy"])).tobytes())


def _with_header(members, header_bytes: bytes) -> dict[str, bytes]:
    return {**members, "header.npy": _npy(np.frombuffer(header_bytes, np.uint8))}


def _load_bytes(data: bytes, tmp_path, name="crafted.npz"):
    path = tmp_path / name
    path.write_bytes(data)
    return load_run(path)


def _peak_mib(fn) -> float:
    """Peak traced allocation while `fn` runs (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


# --- item 4: run files are checked before anything is inflated or allocated ------------------------------------
def test_the_pristine_file_loads(members, small_run, tmp_path):
    assert runs_equal(small_run, _load_bytes(_zip(members), tmp_path), rtol=ENCODED_RTOL)


# every kind of member: a raw array, each part of an encoded activation (core/runfile_codec.py), the header
BOMB_MEMBERS = {"values.codes.npy": np.int8, "values.scale.npy": np.float32, "values.oidx.npy": np.int64,
                "values.oval.npy": np.float16, "resid.xrow.npy": np.int64, "resid.xval.npy": np.float16,
                "final_resid.npy": np.float32, "values.npy": np.float16}


@pytest.mark.parametrize("member", sorted(BOMB_MEMBERS))
def test_a_member_that_inflates_1000x_is_refused_before_inflating(member, members, tmp_path):
    bomb = {**members, member: _npy(np.zeros((64, 2**20), BOMB_MEMBERS[member]))}  # 64+ MiB of zeros, deflated
    data = _zip(bomb, {member: zipfile.ZIP_DEFLATED})
    assert len(data) < 2**20
    holder = {}

    def attempt():
        try:
            _load_bytes(data, tmp_path)
        except RunFileError as exc:
            holder["error"] = exc
    # refused from the central directory's sizes: nothing close to the member's 64-512 MiB was allocated
    assert _peak_mib(attempt) < 16
    assert "inflate" in str(holder["error"])


def test_one_member_may_compress_far_better_than_the_file(members, small_run, tmp_path, monkeypatch):
    """Int8 codes of a repeated prompt's embeddings deflate ~1000x in a real run (3,500 tokens of SmolLM2 were
    refused as a bomb when the limit was per member): the limit holds for the archive as a whole."""
    header = _header(members)
    zeros = {**members, "resid.codes.npy": _npy(np.zeros_like(np.load(io.BytesIO(members["resid.codes.npy"])))),
             "resid.oidx.npy": _npy(np.zeros(0, np.int64)), "resid.oval.npy": _npy(np.zeros(0, np.float16))}
    assert header["encodings"]["resid"]["codec"] == "q8sum"
    data = _zip(zeros, {k: zipfile.ZIP_DEFLATED for k in zeros})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        codes = zf.getinfo("resid.codes.npy")
        member_ratio = codes.file_size / codes.compress_size
        file_ratio = sum(i.file_size for i in zf.infolist()) / sum(i.compress_size for i in zf.infolist())
    assert member_ratio > 2 * file_ratio
    monkeypatch.setattr(runfile_read, "RATIO_FREE_BYTES", 0)  # the small test file stands for a big one
    monkeypatch.setattr(runfile_read, "MAX_RATIO", (member_ratio + file_ratio) / 2)
    assert _load_bytes(data, tmp_path).n_tokens == small_run.n_tokens


@pytest.mark.parametrize("member", ["values.codes.npy", "values.scale.npy", "values.oidx.npy", "resid.xval.npy",
                                    "final_resid.npy"])
def test_a_npy_header_that_lies_about_its_shape_is_refused_without_allocating(member, members, tmp_path):
    raw = bytearray(members[member])
    end = raw.index(b"\n")
    text = raw[:end + 1].decode("latin1")
    shape = text[text.index("(") : text.index(")") + 1]
    dims = ast.literal_eval(shape)
    huge = str((10**11,) if len(dims) == 1 else (100000,) * len(dims))  # as many dims, far too many elements
    patched = text.replace(shape, huge)
    # keep the .npy header length (padding spaces) so the member stays a well-formed .npy
    body = patched.rstrip("\n").rstrip(" ")
    assert len(body) < len(text) - 1
    patched = body.ljust(len(text) - 1) + "\n"
    lied = {**members, member: patched.encode("latin1") + bytes(raw[end + 1:])}
    holder = {}

    def attempt():
        try:
            _load_bytes(_zip(lied), tmp_path)
        except RunFileError as exc:
            holder["error"] = exc
    assert _peak_mib(attempt) < 16
    assert "shape" in str(holder["error"]) or "more than a run of this size" in str(holder["error"])


def test_a_header_above_the_cap_is_refused_unread(members, tmp_path, monkeypatch):
    monkeypatch.setattr(runfile_read, "HEADER_MAX_BYTES", 1000)
    calls = []
    monkeypatch.setattr(runfile_read, "parse_json", lambda *a: calls.append(a))
    with pytest.raises(RunFileError, match="header is .* MiB"):
        _load_bytes(_zip(members), tmp_path)
    assert not calls


def test_a_real_oversized_header_is_refused(members, tmp_path):
    big = b'{"format": "lm-explorer-run", "pad": "' + b"x" * (runfile_read.HEADER_MAX_BYTES + 10) + b'"}'
    with pytest.raises(RunFileError, match="header"):
        _load_bytes(_zip(_with_header(members, big), {"header.npy": zipfile.ZIP_DEFLATED}), tmp_path)


def _edited(members, change) -> dict[str, bytes]:
    header = _header(members)
    change(header)
    return _with_header(members, json.dumps(header, allow_nan=True).encode())


NUMBER_ATTACKS = {
    "layers_huge": lambda h: h["info"].update(n_layers=10**12),
    "vocab_huge": lambda h: h["info"].update(vocab_size=2 * 10**7),
    "tokens_huge": lambda h: h.update(n_tokens=2**40),
    "max_new_planned_huge": lambda h: h["request"]["settings"].update(max_new_tokens=2**40),
    "kv_heads_zero": lambda h: h["info"].update(n_kv_heads=0),
    "heads_not_multiple": lambda h: h["info"].update(n_heads=h["info"]["n_kv_heads"] * 2 + 1),
    "nan_eps": lambda h: h["norm"].update(eps=float("nan")),
    "inf_temperature": lambda h: h["request"]["settings"].update(temperature=float("inf")),
    "bool_as_int": lambda h: h["info"].update(n_layers=True),
    "float_layers": lambda h: h["info"].update(n_layers=2.0),
    "negative_start": lambda h: h["tokens"][0].update(start=-5),
    "token_id_beyond_vocab": lambda h: h["tokens"][0].update(id=h["info"]["vocab_size"]),
    "choice_id_beyond_vocab": lambda h: h["steps"][0]["choice"].update(token_id=10**9),
    "steps_not_list": lambda h: h.update(steps={"a": 1}),
    "timing_garbled": lambda h: h["steps"][0].update(timings_ms=[[1, 2, 3]]),
    "info_extra_field": lambda h: h["info"].update(wizard=1),
    "nested_interventions": lambda h: h["request"].update(interventions=[[[[[[[[[[[[[[1]]]]]]]]]]]]]]),
}


@pytest.mark.parametrize("attack", sorted(NUMBER_ATTACKS))
def test_header_numbers_are_validated(attack, members, tmp_path):
    with pytest.raises(RunFileError):
        _load_bytes(_zip(_edited(members, NUMBER_ATTACKS[attack])), tmp_path)


RAW_ATTACKS = {
    "literal_nan": lambda t: t.replace('"eps": ', '"eps": NaN, "x": ', 1),
    "literal_infinity": lambda t: t.replace('"eps": ', '"eps": Infinity, "x": ', 1),
    "overflow_float": lambda t: t.replace('"eps": ', '"eps": 1e999, "x": ', 1),
    "huge_int": lambda t: t.replace('"n_tokens": ', '"n_tokens": ' + "9" * 5000 + ', "x": ', 1),
    "deep_nesting": lambda t: t.replace('"text": ', '"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "text": ', 1),
    "deep_nesting_unclosed": lambda t: t.replace('"text": ', '"deep": ' + "{\"a\": " * 50_000, 1),
    "not_utf8": lambda t: t.replace('"text": "', '"text": "\udcff', 1),
}


@pytest.mark.parametrize("attack", sorted(RAW_ATTACKS))
def test_raw_header_attacks_give_runfileerror(attack, members, tmp_path):
    text = RAW_ATTACKS[attack](json.dumps(_header(members)))
    with pytest.raises(RunFileError):
        _load_bytes(_zip(_with_header(members, text.encode("utf-8", errors="surrogateescape"))), tmp_path)


def test_a_loaded_run_is_sized_to_the_file_not_to_max_new_tokens(members, small_run, tmp_path):
    edited = _edited(members, lambda h: h["request"]["settings"].update(max_new_tokens=h["info"]["context_length"]))
    loaded = _load_bytes(_zip(edited), tmp_path)
    assert loaded.request.settings.max_new_tokens == loaded.info.context_length
    # no spare capacity for the 2,048 planned positions: at most the first step's size again
    assert loaded.capture_bytes() <= 2 * sum(np.asarray(loaded.array(k)).nbytes
                                             for k in runfile.ARRAY_FIELDS if loaded.has_array(k))


def test_member_list_attacks(members, tmp_path):
    attacks = {
        "unknown_member": {**members, "evil.pkl": b"\x80\x04."},
        "no_header": {k: v for k, v in members.items() if k != "header.npy"},
        "many_members": {**members, **{f"m{i}.npy": b"" for i in range(100)}},
        "object_dtype": {**members, "token_rank.npy": _npy(np.array([None] * 3, dtype=object))},
        "header_as_floats": {**members, "header.npy": _npy(np.zeros(10, np.float32))},
    }
    for name, m in attacks.items():
        with pytest.raises(RunFileError):
            _load_bytes(_zip(m), tmp_path, f"{name}.npz")


def _json_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield from _paths(v, (*prefix, i))


@FUZZ
@given(data=st.data())
def test_fuzzed_headers_load_or_raise_runfileerror(data, members, tmp_path):
    header = _header(members)
    paths = list(_paths(header))[1:]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = header
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(_json_values())
        except (KeyError, IndexError, TypeError):
            continue
    try:
        loaded = _load_bytes(_zip(_with_header(members, json.dumps(header).encode())), tmp_path)
    except RunFileError:
        return
    assert loaded.n_tokens >= 1  # an edit that keeps the run consistent may load


@FUZZ
@given(data=st.data())
def test_fuzzed_member_lists_load_or_raise_runfileerror(data, members, tmp_path):
    names = sorted(members)
    out = dict(members)
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["drop", "swap", "reshape", "retype", "truncate", "deflate"]))
        name = data.draw(st.sampled_from(names))
        if name not in out:
            continue
        if action == "drop":
            out.pop(name)
        elif action == "swap":
            other = data.draw(st.sampled_from(names))
            if other in out:
                out[name], out[other] = out[other], out[name]
        elif action in ("reshape", "retype"):
            try:
                a = np.load(io.BytesIO(out[name]))
            except (ValueError, OSError, EOFError):  # an earlier truncation
                continue
            if action == "reshape":
                shape = data.draw(st.lists(st.integers(0, 5), max_size=4))
                a = np.resize(a, shape)
            else:
                a = a.astype(data.draw(st.sampled_from(["f2", "f4", "i4", "u1", "i8", "f8", "c8", "?"])))
            out[name] = _npy(a)
        elif action == "truncate":
            out[name] = out[name][: data.draw(st.integers(0, len(out[name])))]
    compress = {n: zipfile.ZIP_DEFLATED for n in out if data.draw(st.booleans())}
    with contextlib.suppress(RunFileError):
        _load_bytes(_zip(out, compress), tmp_path)


def test_every_load_error_is_an_explorer_error(members, tmp_path):
    """The class: nothing but RunFileError escapes, whatever the bytes (sampled corruptions of each member)."""
    rng = np.random.default_rng(0)
    for name, data in members.items():
        for _ in range(5):
            blob = bytearray(data)
            for where in rng.integers(0, min(len(blob), 256), 3):
                blob[where] = int(rng.integers(0, 256))
            try:
                _load_bytes(_zip({**members, name: bytes(blob)}), tmp_path)
            except ExplorerError as exc:
                assert isinstance(exc, RunFileError)


# --- item 4: atomic saves with long names ---------------------------------------------------------------------
def test_a_long_target_name_saves_without_overflowing_the_temporary_name(small_run, tmp_path):
    path = tmp_path / ("r" * 245 + ".npz")  # 249 bytes: fits NAME_MAX (255), but name + ".XXXXXXXX.tmp" does not
    small_run.save(path)
    assert runs_equal(small_run, load_run(path), rtol=ENCODED_RTOL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_multibyte_long_name_is_cut_on_a_character(small_run, tmp_path):
    path = tmp_path / ("東" * 80 + ".npz")  # 244 bytes
    small_run.save(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_name_too_long_for_the_folder_fails_before_writing(small_run, tmp_path):
    path = tmp_path / ("r" * 300 + ".npz")
    with pytest.raises(OSError) as info:
        small_run.save(path)
    assert info.value.errno == errno.ENAMETOOLONG and "shorter name" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_save_leaves_nothing(small_run, tmp_path, monkeypatch):
    def interrupted(fh, **arrays):
        fh.write(b"PK half")
        raise KeyboardInterrupt

    monkeypatch.setattr(runfile.np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        small_run.save(tmp_path / ("x" * 240 + ".npz"))
    assert list(tmp_path.iterdir()) == []


# --- item 14: SentencePiece byte fallback with a dummy prefix (Llama-2 / Mistral style) -----------------------
SP_WORDS = ["▁Hello", "▁world", "▁the", "▁東京", "ing", "ll", "▁a", "▁é", "é", "▁", "▁▁"]


def sentencepiece_tokenizer(scheme: str):
    """A small BPE with byte fallback and a dummy prefix, built in memory (no download).

    scheme: "first" / "always" (Metaspace pre-tokenizer) or "legacy" (Llama-2's Prepend("▁") normaliser).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    alphabet = sorted({ch for w in SP_WORDS for ch in w} | set("abcdefghijklmnopqrstuvwxyzHW"))
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    merges = []
    for word in SP_WORDS:
        for i in range(1, len(word)):
            left, right = word[:i], word[i]
            if (left, right) not in merges:
                merges.append((left, right))
            vocab.setdefault(left + right, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if scheme == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁",
                                                                                     prepend_scheme=scheme)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


SP_SCHEMES = ("first", "always", "legacy")


@pytest.fixture(scope="module")
def sp_tokenizers():
    return {scheme: sentencepiece_tokenizer(scheme) for scheme in SP_SCHEMES}


def _char_ends(text: str) -> dict[int, int]:
    """Byte offset where each character ends -> that character's index."""
    out, offset = {}, 0
    for i, ch in enumerate(text):
        offset += len(ch.encode("utf-8"))
        out[offset] = i
    return out


def _sp_piece(tokenizer, token_id: int) -> bytes:
    """The bytes a SentencePiece token stands for, from the vocabulary itself (the ground truth)."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if len(piece) == 6 and piece.startswith("<0x"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode()


def assert_sentencepiece_spans(tokens, text: str, tokenizer) -> None:
    for t in tokens:  # each token carries its own vocabulary bytes, less at most a dummy prefix space
        if not t.is_special:
            piece = _sp_piece(tokenizer, t.id)
            assert t.raw_bytes in (piece, piece[1:] if piece.startswith(b" ") else piece), t
    cursor = 0
    for t in tokens:  # the spans tile the text
        assert t.start == cursor and t.end >= t.start, t
        cursor = t.end
    assert cursor == len(text)
    content = [t for t in tokens if not (t.is_special and t.end == t.start)]
    assert b"".join(t.raw_bytes for t in content) == text.encode("utf-8")  # the dummy "▁" adds no byte
    ends, offset = _char_ends(text), 0
    for t in content:
        lo, hi = offset, offset + len(t.raw_bytes)
        completed = [ends[b] for b in range(lo + 1, hi + 1) if b in ends]
        # every character goes to the token holding its last byte
        if completed:
            assert t.end == completed[-1] + 1
        else:
            assert t.end == t.start
        starts_mid = lo > 0 and lo not in ends
        ends_mid = hi > 0 and hi not in ends and hi != lo
        assert t.partial == (starts_mid or ends_mid), t  # partial: exactly the pieces that cut a character
        offset = hi


@pytest.mark.parametrize("scheme", SP_SCHEMES)
def test_sentencepiece_examples(scheme, sp_tokenizers):
    from explorer.core.tokens import tokenize

    tok = sp_tokenizers[scheme]
    for text in ["Hello world", "é東京x", " Hello", "\u00a0", "\n\n", "\t", "👩‍👩‍👧 the", "a  b"]:
        tokens = tokenize(tok, text).tokens
        assert_sentencepiece_spans(tokens, text, tok)
    tokens = tokenize(tok, "Hello").tokens
    assert tokens[0].is_special and tokens[0].end == 0  # BOS
    first_word = [t for t in tokens if t.end > t.start][0]
    assert first_word.text.startswith("H") and first_word.start == 0  # the dummy "▁" took no character
    tokens = tokenize(tok, "ß").tokens  # not in the vocabulary: two byte tokens
    bytes_ = [t for t in tokens if t.raw_bytes and not t.is_special]
    assert [t.partial for t in bytes_] == [True, True] and bytes_[0].end == bytes_[0].start
    assert bytes_[1].end == 1  # the character belongs to the byte token that completes it


@FUZZ
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"),
                    min_size=1, max_size=24),
       scheme=st.sampled_from(SP_SCHEMES))
def test_sentencepiece_spans_over_unicode(text, scheme, sp_tokenizers):
    from explorer.core.tokens import tokenize

    assert_sentencepiece_spans(tokenize(sp_tokenizers[scheme], text).tokens, text, sp_tokenizers[scheme])


@pytest.mark.parametrize("scheme", SP_SCHEMES)
def test_offset_fallback_gives_a_character_to_its_last_token(scheme, sp_tokenizers):
    """A literal "▁" in the text makes the bytes ambiguous: spans come from offsets, and there too the
    character goes to the last of the tokens that share it (not the first byte token)."""
    from explorer.core.tokens import tokenize

    tok = sp_tokenizers[scheme]
    tokens = tokenize(tok, "ß▁").tokens
    owners = [t for t in tokens if t.start <= 0 < t.end]
    assert len(owners) == 1 and tok.convert_ids_to_tokens(owners[0].id) == "<0x9F>"  # ß is C3 9F
    assert tokens[tokens.index(owners[0]) - 1].end == tokens[tokens.index(owners[0]) - 1].start  # <0xC3>: empty


# --- item 13: whitespace that is real tokens is a valid prompt --------------------------------------------------
@pytest.mark.parametrize("prompt", ["\u00a0", "\n\n", "\t", " ", "\u3000"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_whitespace_prompts_run(prompt, name, tiny_models):
    run = capture(prompt, Session(tiny_models[name]), max_new_tokens=1)
    assert run.n_prompt >= 1
    prompt_text = run.text[: run.tokens[run.n_prompt - 1].end]
    assert prompt in prompt_text


def test_an_empty_prompt_is_still_refused(tiny_models):
    from explorer.core.errors import InputError

    with pytest.raises(InputError, match="empty"):
        capture("", Session(tiny_models["tiny-llama"]), max_new_tokens=1)


# --- item 17: fp16 capture never turns a value into inf ---------------------------------------------------------
@pytest.fixture(scope="module")
def loud_llama(tiny_models):
    """tiny-llama with its embedding scaled so the residual stream exceeds float16's 65504."""
    import copy

    import torch

    from explorer.core.models import LoadedModel

    base = tiny_models["tiny-llama"]
    model = copy.deepcopy(base.model)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(4e6)
    return LoadedModel(model=model, tokenizer=base.tokenizer, info=base.info, source="scaled for the test")


LONG_PROMPT = "one two three four five six seven eight nine ten eleven twelve thirteen"


def test_values_beyond_float16_are_stored_in_float32(loud_llama, tmp_path):
    import torch

    run = capture(LONG_PROMPT, Session(loud_llama), max_new_tokens=3)  # a long prefill, then small decode steps
    exact = capture(LONG_PROMPT, Session(loud_llama, store_dtype=torch.float32), max_new_tokens=3)
    resid = run.array("resid")
    assert np.abs(exact.array("resid")).max() > 65504  # the model really goes beyond float16
    assert np.isfinite(resid).all() and resid.dtype == np.float32
    np.testing.assert_allclose(resid, exact.array("resid"), rtol=1e-6, atol=0)
    assert "resid" in run.widened and "queries" not in run.widened
    assert run.array("queries").dtype == np.float16  # arrays in range stay compact
    for name in ("queries", "keys", "values", "attn_out", "mlp_out"):
        assert np.isfinite(run.array(name)).all(), name
    path = tmp_path / "loud.npz"
    run.save(path)
    loaded = load_run(path)
    assert loaded.widened == run.widened and np.isfinite(loaded.array("resid")).all()
    assert np.isfinite(loaded.unembed).all()  # the tied (scaled) unembedding was not saved as inf


def test_an_ordinary_run_is_not_widened(small_run):
    assert small_run.widened == ()
    assert small_run.array("resid").dtype == np.float16


def test_a_run_widens_an_array_when_a_later_step_overflows(tiny_models):
    """Run.apply: a decode step stored in float32 widens the whole buffer (earlier steps kept exactly)."""

    run = capture("Hello there", Session(tiny_models["tiny-llama"]), max_new_tokens=2)
    rebuilt = type(run).start(run.info, run.request, run.norm, run.unembed)
    for i, event in enumerate(run.steps):
        if i == 1:
            wide = event.resid.astype(np.float32)
            wide[0, 0, 0] = 1e6
            event = event.with_arrays(resid=wide)
        rebuilt.apply(event)
    resid = rebuilt.array("resid")
    assert resid.dtype == np.float32 and resid[0, run.steps[1].start, 0] == 1e6
    np.testing.assert_array_equal(resid[:, : run.steps[1].start], run.array("resid")[:, : run.steps[1].start])
    assert rebuilt.widened == ("resid",)


# --- item 15: patching from a run B of another length follows the token alignment ------------------------------
@pytest.fixture(scope="module")
def session32(tiny_models):
    import torch

    return Session(tiny_models["tiny-llama"], store_dtype=torch.float32)


def _position_of(run, word: str) -> int:
    """The token that ends the word (the tiny tokenizer splits words into several pieces)."""
    end = run.text.index(word) + len(word)
    return next(i for i, t in enumerate(run.tokens) if t.end == end)


def test_patching_from_a_longer_run_b_uses_the_aligned_positions(session32):
    from explorer.core.analysis.patching import patch_from_run_b
    from explorer.core.api import run_request
    from explorer.core.events import RunRequest

    a = run_request(session32, RunRequest("The capital of France is Paris"))
    b = run_request(session32, RunRequest("The capital of the lovely old country France is Rome"))
    last = a.info.n_layers - 1
    iv = patch_from_run_b(a, b, last)  # the residual after the last layer, every position
    assert iv.positions == tuple(range(a.n_tokens))  # every A token has a partner in B
    assert "all positions" not in iv.describe() and "aligned" in iv.describe()
    patched = run_request(session32, RunRequest("The capital of France is Paris", interventions=(iv,)))
    # the final state at A's "France" is B's at B's "France" (3 positions later), not B's at the same index
    pa, pb = _position_of(a, "France"), _position_of(b, "France")
    assert pb != pa
    got, want = patched.array("final_resid")[pa], b.array("final_resid")[pb]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    same_index = b.array("final_resid")[pa]
    assert np.abs(got - same_index).max() > 1e-3 * np.abs(same_index).max()


def test_patching_from_a_shorter_run_b_leaves_unmatched_positions_and_says_so(session32):
    from explorer.core.analysis.patching import patch_from_run_b
    from explorer.core.api import run_request
    from explorer.core.errors import InputError
    from explorer.core.events import RunRequest

    a = run_request(session32, RunRequest("The capital of the lovely old country France is Paris"))
    b = run_request(session32, RunRequest("The capital of France is Rome"))
    iv = patch_from_run_b(a, b, 1, head=2)
    unmatched = a.n_tokens - len(iv.positions)
    assert unmatched == a.n_tokens - b.n_tokens > 0
    assert f"{unmatched} position(s) with no counterpart" in iv.describe()
    pa, pb = _position_of(a, "France"), _position_of(b, "France")
    from explorer.core.interventions import head_outputs

    want = head_outputs(b, 1, 2)[pb]
    np.testing.assert_allclose(iv.source[pa], want, rtol=1e-6, atol=1e-7 * np.abs(want).max())
    lonely = next(p for p in range(a.n_tokens) if p not in iv.positions)
    with pytest.raises(InputError, match="lines up"):
        patch_from_run_b(a, b, 1, head=2, positions=(lonely,))


def test_patching_from_another_models_run_is_refused(session32, tiny_models):
    from explorer.core.analysis.patching import patch_from_run_b
    from explorer.core.errors import InputError

    a = capture("Hello there", session32)
    b = capture("Hello there", Session(tiny_models["tiny-gpt2"]))
    with pytest.raises(InputError, match="another model"):
        patch_from_run_b(a, b, 0, head=0)


# --- item 18: the logic behind the wording ---------------------------------------------------------------------
ROPE_CONFIGS = {
    "plain_v5": ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e5}}, None),
    "plain_old": ({"rope_scaling": None, "rope_theta": 1e4}, None),
    "llama3": ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}}, "llama3"),
    "yarn_old": ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "yarn"),
    "linear": ({"rope_scaling": {"rope_type": "linear", "factor": 2}}, "linear"),
    "per_layer_type": ({"rope_parameters": {"full_attention": {"rope_type": "default"},
                                            "sliding_attention": {"rope_type": "dynamic", "factor": 2.0}}}, "dynamic"),
    "partial": ({"partial_rotary_factor": 0.5}, "50%"),
    "neox": ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.25}}, "25%"),
}


@pytest.mark.parametrize("case", sorted(ROPE_CONFIGS))
def test_rope_variant_detection(case):
    from explorer.core.analysis.rope import rope_variant

    config, expected = ROPE_CONFIGS[case]
    got = rope_variant(config)
    assert (got is None) if expected is None else (got is not None and expected in got)


def test_rope_variant_on_transformers_configs(tiny_models):
    from transformers import LlamaConfig

    from explorer.core.analysis.rope import rope_variant

    assert rope_variant(tiny_models["tiny-llama"].model.config) is None
    scaled = LlamaConfig(max_position_embeddings=32768, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})
    assert "llama3" in rope_variant(scaled) and "factor 8" in rope_variant(scaled)


def test_sliding_window_caps_the_cache_in_the_what_if():
    from explorer.core.analysis import kv

    mistral = kv.catalogue_entry("mistral-7b")
    assert mistral.sliding_window == 4096
    per_token = mistral.bytes_per_token("fp16")
    assert mistral.bytes(1000, "fp16") == pytest.approx(1000 * per_token, rel=1e-12)
    assert mistral.bytes(32768, "fp16") == pytest.approx(4096 * per_token, rel=1e-12)  # not 32,768 tokens' worth
    grid = kv.context_grid(mistral.context, 16)
    assert np.max(mistral.bytes(grid, "fp16")) == pytest.approx(4096 * per_token, rel=1e-12)
    f = kv.formula(mistral, 32768, 2.0)
    assert f.cached == 4096 and "sliding window" in f.text() and "4,096" in f.window_text()
    assert f.mha == pytest.approx(f.total * mistral.query_heads / mistral.kv_heads, rel=1e-12)
    llama = kv.catalogue_entry("llama-3-8b")
    assert llama.sliding_window is None and kv.formula(llama, 8192, 2.0).window_text() == ""


def test_streaming_llm_is_labelled_a_masking_approximation():
    from explorer.core.analysis import eviction as ev

    assert "masking approximation" in ev.APPROXIMATIONS["streaming"]
    assert "original positions" in ev.APPROXIMATIONS["streaming"]
    assert set(ev.APPROXIMATIONS) == set(ev.POLICIES)


def test_a_run_saved_without_a_newer_optional_info_field_still_loads(members, tmp_path, monkeypatch):
    """ModelInfo fields with defaults may be missing in older files (forward-compatible header check)."""
    edited = _edited(members, lambda h: h["info"].pop("dtype"))
    loaded = _load_bytes(_zip(edited), tmp_path)
    assert loaded.info.dtype == "float32"


# --- issue 17 item 6: tolerances relative to the values' magnitude ----------------------------------------------
def test_relative_tolerance_helpers():
    from numeric import approx, assert_close

    near_30 = np.array([30.0, -29.5, 0.25])
    assert_close(near_30 + np.array([1.4e-4, 0, 0]), near_30, 1e-4)  # the Intel case: fine relative to 30
    with pytest.raises(AssertionError):
        assert_close(near_30 + np.array([1e-2, 0, 0]), near_30, 1e-4)  # a real error still fails
    with pytest.raises(AssertionError):
        assert_close(np.array([0.5 + 1e-3]), np.array([0.5]), 1e-5)  # probabilities keep the tolerance given
    assert approx(30.0, 1e-4) == 30.002
    assert approx(30.0, 1e-4) != 30.01


def test_loading_a_path_too_long_for_the_system_is_a_runfileerror(tmp_path):
    with pytest.raises(RunFileError, match="Cannot open"):
        load_run(tmp_path / ("r" * 300 + ".npz"))
    with pytest.raises(RunFileError):
        load_run(tmp_path)  # a folder


@pytest.mark.parametrize("damage", ["truncated", "bad_member"])
def test_a_damaged_vocab_map_cache_is_rebuilt(damage, tmp_path):
    """The class of item 4 in another cache file: a damaged .npz is rebuilt, never an exception."""
    from explorer.core.analysis import projection as P

    table = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    P.vocab_map(table, "m", n_sample=50, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else data.replace(b"ids.npy", b"idz.npy"))
    vm = P.vocab_map(table, "m", n_sample=50, cache_dir=tmp_path)
    assert not vm.from_cache and vm.coords.shape == (50, 2)


@pytest.mark.parametrize("scheme", SP_SCHEMES)
@pytest.mark.parametrize("text", ["Hello</s>world", "<s>Hello world</s> the", "ß</s>ß", "</s> Hello"])
def test_sentencepiece_spans_around_special_tokens(scheme, text, sp_tokenizers):
    """A special token typed in the text starts a new segment (legacy/"always" add a dummy "▁" after it)."""
    from explorer.core.tokens import tokenize

    tok = sp_tokenizers[scheme]
    tokens = tokenize(tok, text).tokens
    cursor = 0
    for t in tokens:
        assert t.start == cursor
        cursor = t.end
    assert cursor == len(text)
    assert "".join(t.text for t in tokens if t.end > t.start) == text
    literal = [t for t in tokens if t.is_special and t.end > t.start]
    assert all(t.text in ("<s>", "</s>") for t in literal) and len(literal) == text.count("</s>") + text.count("<s>")


def test_a_first_step_given_room_is_kept_not_copied_and_the_run_is_the_same(tiny_models):
    """Run.with_room (the engine client's reader thread) copies a first step into buffers with room for the
    planned steps; `apply` (the GUI thread) then keeps those buffers, and the run grows exactly as from the
    plain events."""
    from explorer.core.run import ARRAY_FIELDS

    run = capture("Hello there, how are you", Session(tiny_models["tiny-llama"]), max_new_tokens=3)
    plain = type(run).start(run.info, run.request, run.norm, run.unembed)
    roomy = type(run).start(run.info, run.request, run.norm, run.unembed)
    first = roomy.with_room(run.steps[0])
    for name, axis in ARRAY_FIELDS.items():
        chunk = first.arrays[name]
        if chunk is not None:
            assert not chunk.flags.writeable
            assert chunk.base.shape[axis] == chunk.shape[axis] + run.request.settings.max_new_tokens
    roomy.apply(first)
    for name in ARRAY_FIELDS:
        if first.arrays[name] is not None:  # no copy on apply: the run's buffer is the one made with room
            assert np.shares_memory(roomy.array(name), first.arrays[name]), name
    plain.apply(run.steps[0])
    for event in run.steps[1:]:
        plain.apply(event)
        roomy.apply(event)
    for name in ARRAY_FIELDS:
        if run.steps[0].arrays[name] is not None:
            np.testing.assert_array_equal(roomy.array(name), plain.array(name))
    # the buffers grew in place: the first step's arrays still show the first step
    for name in ARRAY_FIELDS:
        if first.arrays[name] is not None:
            np.testing.assert_array_equal(first.arrays[name], run.steps[0].arrays[name])
    # a step for a run that already has positions, or a run with nothing planned, is left as it is
    assert roomy.with_room(run.steps[0]) is run.steps[0]
