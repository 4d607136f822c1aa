"""Run files: one `.npz` (never pickle) holding a JSON header and the captured arrays.

Writing is in core/runfile_write.py (below the Run, which saves through it; its design note says
what is stored and how); reading a file back into a Run is here. Format 1 files (every array as
captured) and format 2 files (activations encoded, core/runfile_codec.py) both open.

Loading validates everything (header version, required keys, dtypes, shapes against the
model info and the token count) and raises RunFileError with a sentence when anything is off.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .adapters import NormParams
from .arrays import ACTIVATIONS, ARRAY_FIELDS, CAPTURED, OPTIONAL, concrete_shape, model_dims
from .errors import InputError, RunFileError
from .events import GenerationSettings, RunRequest, StepEvent, Token, TokenChoice, TokenKind
from .interventions import from_json
from .models import ModelInfo
from .retrieval.records import retrieval_from_json
from .run import Run
from .runfile_check import FORMAT, VERSION, check_header  # noqa: F401 - FORMAT, VERSION: re-exported
from .runfile_codec import PARTS, ROW_L2_BOUND, SUM_CODEC, decode_q8, decode_sum, member
from .runfile_read import check_member, member_infos, memory_limit, read_array, read_header
from .runfile_write import _step_dict, save_run  # noqa: F401 - save_run: written by runfile_write.py
from .speculative import drafts_from_json

# arrays a file holds besides the captured ones: name -> (dtype kinds, symbolic shape) ("S": steps, "V": vocabulary)
_EXTRA: dict[str, tuple[str, tuple[str, ...]]] = {
    "kv_bytes": ("i", ("S", "L")), "scaling": ("f", ("L",)), "norm_weight": ("f", ("D",)),
    "norm_bias": ("f", ("D",)), "unembed": ("f", ("V", "D")),
}
# every member's dtype kind: the captured arrays' from core/arrays.py's table
_DTYPES = {**{name: np.dtype(spec.dtype).kind for name, spec in CAPTURED.items()},
           **{name: kinds for name, (kinds, _shape) in _EXTRA.items()}}
# an encoded activation's parts (core/runfile_codec.py): part -> dtype kinds
_PART_KINDS = {"codes": "i", "scale": "f", "oidx": "iu", "oval": "f", "xrow": "iu", "xval": "f"}
_MEMBERS = {"header", *_DTYPES, *(member(name, part) for name in ACTIVATIONS for part in PARTS)}


def attach_head(run: Run, info: ModelInfo, norm: NormParams | None, unembed: np.ndarray | None) -> bool:
    """Give a run opened without its unembedding the model's own (same name and shapes); True when attached."""
    if run.unembed is not None or unembed is None or norm is None:
        return False
    if info.name != run.info.name or unembed.shape != (run.info.vocab_size, run.info.hidden_size):
        return False
    run.unembed = unembed
    if run.norm is None:
        run.norm = norm
    run._cache.clear()
    return True


def load_run(path: str | os.PathLike) -> Run:
    """Load a run file, checking every size against the header before anything is inflated.

    Slow for big runs (it reads every array): call it off the GUI thread.
    """
    path = Path(path)
    try:
        is_file = path.is_file()  # a name too long for the system raises (ENAMETOOLONG) instead of saying False
    except OSError as exc:
        raise RunFileError(f"Cannot open {str(path)[:120]}...: {exc.strerror or exc}.") from exc
    if not is_file:
        raise RunFileError(f"No run file at {path}.")
    if not zipfile.is_zipfile(path):
        raise RunFileError(f"{path.name} is not a run file (a run is a .npz archive; this is something else).")
    name = path.name
    try:
        with zipfile.ZipFile(path) as zf:
            header, arrays = _read(zf, name)
    except RunFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError,
            ValueError, struct.error, MemoryError) as exc:  # a damaged zip fails in many ways
        raise RunFileError(f"{name} is not a readable run file (damaged): {type(exc).__name__}: "
                           f"{str(exc)[:200]}") from exc
    try:
        return _build(header, arrays, name)
    except RunFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, UnicodeDecodeError, OverflowError,
            RecursionError, MemoryError) as exc:
        raise RunFileError(f"{name} is inconsistent and was not loaded ({type(exc).__name__}: {str(exc)[:200]}).") \
            from exc


def _read(zf: zipfile.ZipFile, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The header, then the arrays, each checked against the shapes the header implies before reading."""
    members = member_infos(zf, _MEMBERS, name)
    if "header" not in members:
        raise RunFileError(f"{name} is not an LM Explorer run (no header).")
    header = read_header(zf, members["header"], name)
    info, n = check_header(header, name)
    encodings = header.get("encodings", {})
    expected = _expected_shapes(info, n, len(header["steps"]))
    plan = _member_plan(expected, encodings)
    for key in members:
        if key != "header" and key not in plan:
            raise RunFileError(f"{name} holds '{key}', which its header does not describe; the file is damaged.")
    planned: dict[str, tuple] = {}
    total = 0
    for key, zinfo in members.items():
        if key == "header":
            continue
        kinds, shape, limit = plan[key]
        got, dtype = check_member(zf, zinfo, name, key, kinds, shape, limit)
        planned[key] = (kinds, shape)
        total += int(np.prod(got, dtype=object)) * dtype.itemsize
    for key, spec in encodings.items():  # the decoded arrays, besides their parts
        lacking = [part for part in PARTS if member(key, part) not in members]
        if lacking:
            raise RunFileError(f"{name}: the encoded array '{key}' lacks its {', '.join(lacking)}.")
        total += int(np.prod(expected[key], dtype=object)) * np.dtype(spec["dtype"]).itemsize
    if total > memory_limit():
        raise RunFileError(f"{name} needs {total / 2**30:,.1f} GiB of memory, more than this machine has "
                           f"({memory_limit() / 2**30:,.1f} GiB); it was not loaded.")
    arrays = {key: read_array(zf, members[key], name, key, kinds, shape, 2**62)
              for key, (kinds, shape) in planned.items()}
    # the q8 arrays first: a running sum (q8sum) adds up decoded blocks
    for key, spec in sorted(encodings.items(), key=lambda item: item[1]["codec"] == SUM_CODEC):
        parts = [arrays.pop(member(key, part)) for part in PARTS]
        try:
            arrays[key] = decode_q8(*parts, spec["dtype"])
            if spec["codec"] == SUM_CODEC:
                if "attn_out" not in arrays or "mlp_out" not in arrays:
                    raise RunFileError("the residual stream is stored as a sum of blocks the file lacks")
                arrays[key] = decode_sum(arrays[key], arrays["attn_out"], arrays["mlp_out"], spec["dtype"])
        except RunFileError as exc:
            raise RunFileError(f"{name}: '{key}': {exc}; the file is damaged.") from None
    return header, arrays


def _member_plan(expected: dict[str, tuple], encodings: dict) -> dict[str, tuple[str, tuple, int]]:
    """member -> (dtype kinds, shape (None: any length), most elements) for every member the header allows."""
    top_k_cap = 1024
    plan = {}
    for key, shape in expected.items():
        if key in encodings:
            if encodings[key]["codec"] == SUM_CODEC:  # only the first row (depth 0) is stored
                shape = (1, *shape[1:])
            count = int(np.prod(shape, dtype=object))  # an activation's shape is fully known
            rows = count // max(1, shape[-1])
            shapes = (shape, shape[:-1], (None,), (None,), (None,), (None, shape[-1]))
            limits = (count, rows, count, count, rows, count)
            for part, part_shape, limit in zip(PARTS, shapes, limits, strict=True):
                plan[member(key, part)] = (_PART_KINDS[part], part_shape, limit)
        else:
            limit = int(np.prod([s if s is not None else top_k_cap for s in shape], dtype=object))
            plan[key] = (_DTYPES[key], shape, limit)
    return plan


def _expected_shapes(info: ModelInfo, n: int, n_steps: int) -> dict[str, tuple]:
    """Every array's shape implied by the header (None: any length, capped by the caller)."""
    dims = {**model_dims(info, n, k=None), "S": n_steps, "V": info.vocab_size}
    return {**{name: spec.shape_for(dims) for name, spec in CAPTURED.items()},
            **{name: concrete_shape(shape, dims) for name, (_k, shape) in _EXTRA.items()}}


def _build(header: dict, arrays: dict[str, np.ndarray], name: str) -> Run:
    info = ModelInfo(**header["info"])  # fields checked by check_header (optional ones may be missing)
    settings = GenerationSettings(**header["request"]["settings"])
    skip = header["request"].get("skip_arrays", [])
    if not isinstance(skip, list) or not set(skip) <= OPTIONAL or any(k in arrays for k in skip):
        raise RunFileError(f"{name}: the list of arrays left out ({str(skip)[:100]}) does not match the file.")
    request = RunRequest(**{**header["request"], "settings": settings, "skip_arrays": tuple(skip),
                            "interventions": _interventions(header["request"].get("interventions", []), name),
                            "retrieval": retrieval_from_json(header["request"].get("retrieval"), name)})
    n = int(header["n_tokens"])
    _check(arrays, info, n, name, skip=tuple(skip))
    run_vocab = _vocab(header.get("vocab"), info, name)
    if run_vocab is None and header.get("vocab_subset") is not None:
        run_vocab = _vocab_subset(header["vocab_subset"], info, name)
    norm = None
    if header.get("norm") and "norm_weight" in arrays:
        bias = arrays.get("norm_bias")
        norm = NormParams(str(header["norm"]["kind"]), arrays["norm_weight"].astype(np.float32),
                          None if bias is None else bias.astype(np.float32), float(header["norm"]["eps"]))
    unembed = arrays.get("unembed")
    if unembed is not None and unembed.shape != (info.vocab_size, info.hidden_size):
        raise RunFileError(f"{name}: the saved unembedding has shape {unembed.shape}, not vocab x hidden.")
    steps = header["steps"]
    first = int(steps[0]["n_new"]) if steps else 0
    # buffers sized to the file (never to the request's max_new_tokens, which the file cannot vouch for)
    run = Run.start(info, request, norm, None if unembed is None else unembed.astype(np.float32),
                    planned=max(0, n - first))
    if "scaling" in arrays:
        run.scaling = arrays["scaling"]
    tokens = [_token(d, info.vocab_size) for d in header["tokens"]]
    if len(tokens) != n:
        raise RunFileError(f"{name}: {len(tokens)} tokens in the header but {n} positions of data.")
    if len(steps) != arrays["kv_bytes"].shape[0]:
        raise RunFileError(f"{name}: the step list and the KV sizes disagree.")
    for i, meta in enumerate(steps):
        lo, hi = int(meta["start"]), int(meta["start"]) + int(meta["n_new"])
        if not 0 <= lo < hi <= n or lo != run.n_tokens:
            raise RunFileError(f"{name}: step {i} covers positions {lo}..{hi}, which do not follow on.")
        run.apply(_step(meta, arrays, tokens[lo:hi], lo, hi, i))
    if run.n_tokens != n:
        raise RunFileError(f"{name}: the steps cover {run.n_tokens} of {n} positions.")
    if run.text != header["text"] or not _spans_tile(run.tokens, run.text):
        raise RunFileError(f"{name}: the token spans do not rebuild the saved text.")
    run.finish_reason = header.get("finish_reason")
    run.vocab = run_vocab
    run.drafts = drafts_from_json(header, info.vocab_size, n, name)
    return run


def _vocab(items, info: ModelInfo, name: str) -> list[str] | None:
    """The saved readable text of every token id (None in files saved before it was kept)."""
    if items is None:
        return None
    if not isinstance(items, list) or len(items) != info.vocab_size or not all(isinstance(t, str) for t in items):
        raise RunFileError(f"{name}: the saved vocabulary is not {info.vocab_size:,} texts.")
    return items


class PartialVocab(list):
    """The readable texts of the ids a file names ('#id' for the others): a run opened from a file saved without
    its head. `Session.attach_head` replaces it with the model's full vocabulary."""

    partial = True


def _vocab_subset(subset, info: ModelInfo, name: str) -> PartialVocab:
    ids, texts = (subset.get("ids"), subset.get("texts")) if isinstance(subset, dict) else (None, None)
    if (not isinstance(ids, list) or not isinstance(texts, list) or len(ids) != len(texts)
            or len(ids) > info.vocab_size or not all(isinstance(t, str) for t in texts)
            or not all(type(i) is int and 0 <= i < info.vocab_size for i in ids)
            or any(b <= a for a, b in zip(ids, ids[1:], strict=False))):
        raise RunFileError(f"{name}: the saved vocabulary texts are garbled.")
    vocab = PartialVocab(f"#{i}" for i in range(info.vocab_size))
    for i, text in zip(ids, texts, strict=True):
        vocab[i] = text
    return vocab


def _interventions(items, name: str) -> tuple:
    if not isinstance(items, list):
        raise RunFileError(f"{name}: the run's interventions are not a list.")
    try:
        return tuple(from_json(d) for d in items)
    except InputError as exc:
        raise RunFileError(f"{name}: a saved intervention is invalid ({exc}).") from exc


def _spans_tile(tokens: list[Token], text: str) -> bool:
    cursor = 0
    for t in tokens:
        if t.start != cursor or t.end < t.start or (t.end > t.start and t.text != text[t.start:t.end]):
            return False
        cursor = t.end
    return cursor == len(text)


def _check(arrays: dict[str, np.ndarray], info: ModelInfo, n: int, name: str, skip: tuple[str, ...] = ()) -> None:
    """Required arrays present (shapes and dtypes were checked before reading) and top-k ids in range."""
    for key in (*ARRAY_FIELDS, "kv_bytes"):
        if key not in arrays and (key == "kv_bytes" or key not in skip):
            raise RunFileError(f"{name} lacks the array '{key}'.")
    if arrays["pred_top_ids"].shape != arrays["pred_top_logprobs"].shape:
        raise RunFileError(f"{name}: the top-k arrays disagree in shape.")
    if (arrays["pred_top_ids"] < 0).any() or (arrays["pred_top_ids"] >= info.vocab_size).any():
        raise RunFileError(f"{name}: top-k token ids outside the vocabulary.")


def _token(d: dict, vocab_size: int) -> Token:
    if not 0 <= int(d["id"]) < vocab_size:
        raise RunFileError(f"token id {d['id']} is outside the vocabulary ({vocab_size})")
    return Token(id=int(d["id"]), text=str(d["text"]), start=int(d["start"]), end=int(d["end"]),
                 kind=TokenKind(d["kind"]), raw_bytes=bytes.fromhex(d["bytes"]), partial=bool(d["partial"]),
                 injected=bool(d["injected"]), is_special=bool(d["special"]))


def _step(meta: dict, arrays: dict[str, np.ndarray], tokens: list[Token], lo: int, hi: int, i: int) -> StepEvent:
    def cut(key: str) -> np.ndarray:
        axis = ARRAY_FIELDS[key]
        index = [slice(None)] * arrays[key].ndim
        index[axis] = slice(lo, hi)
        return arrays[key][tuple(index)]

    choice = meta.get("choice")
    return StepEvent(
        step=int(meta["step"]), start=lo, tokens=tuple(tokens),
        arrays={k: cut(k) if k in arrays else None for k in ARRAY_FIELDS},
        kv_bytes_per_layer=arrays["kv_bytes"][i], timings_ms=tuple((str(a), float(b)) for a, b in meta["timings_ms"]),
        choice=None if choice is None else TokenChoice(**{**choice, "top_ids": tuple(choice["top_ids"]),
                                                          "top_logprobs": tuple(choice["top_logprobs"])}),
        cached_prefix=int(meta.get("cached_prefix", 0)), finish_reason=meta.get("finish_reason"),
    )


def runs_equal(a: Run, b: Run, rtol: float = 0.0) -> bool:
    """Same tokens, text, steps metadata and arrays (for tests and the fuzzer).

    `rtol` > 0: each row (last axis) of an activation array may differ by up to `rtol` times the row's norm (L2),
    as a file saved with encoded activations does (`ENCODED_RTOL`); everything else stays exact."""
    if a.info != b.info or a.text != b.text or a.tokens != b.tokens or a.n_prompt != b.n_prompt:
        return False
    if [_step_dict(s) for s in a.steps] != [_step_dict(s) for s in b.steps]:
        return False
    if any(a.has_array(k) != b.has_array(k) for k in ARRAY_FIELDS):
        return False
    return all(_close(a.array(k), b.array(k), rtol if k in ACTIVATIONS else 0.0)
               for k in ARRAY_FIELDS if a.has_array(k))


# what the encoding keeps (core/runfile_codec.py): every activation row within this fraction of its norm
ENCODED_RTOL = ROW_L2_BOUND


def _close(x: np.ndarray, y: np.ndarray, rtol: float) -> bool:
    if not rtol:
        return np.array_equal(x, y, equal_nan=True)
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if not np.array_equal(np.isfinite(x), np.isfinite(y)) or not np.array_equal(x[~np.isfinite(x)],
                                                                                   y[~np.isfinite(y)], equal_nan=True):
        return False
    return bool((row_errors(x, y) <= rtol).all())


def row_errors(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[...] |x - y| / |x| over the last axis (finite entries; 0 where both rows are 0), one block at a time."""
    out = np.empty(x.shape[:-1], np.float64)
    flat_x, flat_y, flat_out = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), out.reshape(-1)
    for lo in range(0, flat_x.shape[0], 8192):
        a = np.nan_to_num(flat_x[lo: lo + 8192].astype(np.float64), posinf=0.0, neginf=0.0)
        b = np.nan_to_num(flat_y[lo: lo + 8192].astype(np.float64), posinf=0.0, neginf=0.0)
        gap, norm = np.linalg.norm(a - b, axis=-1), np.linalg.norm(a, axis=-1)
        flat_out[lo: lo + 8192] = np.where(norm > 0, gap / np.where(norm > 0, norm, 1.0), np.where(gap > 0, np.inf, 0))
    return out
