"""Reading a run file without trusting it: sizes are checked before anything is inflated or allocated.

A run file is a zip (`.npz`) of `.npy` members. Before reading a byte of array data:
- the member list is read from the central directory: only known names, no duplicates, and the
  members together may not inflate more than `MAX_RATIO` times the archive's compressed bytes (one
  member alone may: int8 codes of a repeated prompt's embeddings deflate ~1000x);
- the JSON header member is capped at `HEADER_MAX_BYTES`, parsed with a nesting limit, and every
  number in it must be finite and short (no `NaN`, `Infinity`, `1e999` or a 5,000-digit integer);
- each member's `.npy` header (dtype, shape) is read on its own and must match the shape the run's
  header and model description imply (`expected`), and the member's declared size must equal it;
- the arrays together must fit in this machine's memory.
Everything that is wrong raises RunFileError with a sentence.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Any

import numpy as np

from .errors import RunFileError

HEADER_MAX_BYTES = 64 * 2**20  # a 100k-token run's header is about 20 MB
JSON_MAX_DEPTH = 12  # the header nests 5 deep; an intervention's patch source adds 2
MAX_NUMBER_CHARS = 40  # longer numbers in the header are refused (no int("9" * 10**6))
MAX_MEMBERS = 64
MAX_RATIO = 100  # the members together may inflate at most this much (a real run's file: 1.3-3x)
RATIO_FREE_BYTES = 2**20  # small archives may compress better than that
NPY_HEADER_MAX = 4096
CHUNK = 16 * 2**20


def member_infos(zf: zipfile.ZipFile, allowed: set[str], name: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by array name, checked against the central directory's sizes."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise RunFileError(f"{name} holds {len(infos)} files; a run holds at most {MAX_MEMBERS}.")
    out: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if key not in allowed:
            raise RunFileError(f"{name} holds an unexpected file '{info.filename[:80]}'; it is not an LM Explorer run.")
        if key in out:
            raise RunFileError(f"{name} holds '{info.filename}' twice.")
        out[key] = info
    inflated, stored = sum(i.file_size for i in infos), sum(i.compress_size for i in infos)
    if inflated > RATIO_FREE_BYTES and inflated > MAX_RATIO * max(stored, 1):
        worst = max(infos, key=lambda i: i.file_size / max(i.compress_size, 1))
        raise RunFileError(f"{name} would inflate {inflated / max(stored, 1):,.0f} times ('{worst.filename[:80]}' "
                           f"{worst.file_size / max(worst.compress_size, 1):,.0f} times; a zip bomb?); refused before "
                           "inflating.")
    return out


def read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> Any:
    """The JSON header, size-capped, depth-limited and with only finite, short numbers."""
    if info.file_size > HEADER_MAX_BYTES:
        raise RunFileError(f"{name}: the run's header is {info.file_size / 2**20:,.1f} MiB, above the "
                           f"{HEADER_MAX_BYTES / 2**20:,.1f} MiB a run header may take; refused.")
    blob = read_array(zf, info, name, "header", kinds="u", shape=(None,), max_elements=HEADER_MAX_BYTES)
    if blob.dtype.itemsize != 1:
        raise RunFileError(f"{name} is not an LM Explorer run (no header).")
    return parse_json(blob.tobytes(), name)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(data: bytes) -> int:
    """How deep brackets nest in a JSON text (strings ignored), without recursing."""
    bare = np.frombuffer(_STRING.sub(b'""', data), np.uint8)
    step = np.isin(bare, (ord("["), ord("{"))).astype(np.int64) - np.isin(bare, (ord("]"), ord("}")))
    return int(step.cumsum().max(initial=0))


def _number(kind):
    def parse(text: str):
        if len(text) > MAX_NUMBER_CHARS:
            raise RunFileError(f"a number in the header has {len(text)} digits")
        value = kind(text)
        if isinstance(value, float) and not np.isfinite(value):
            raise RunFileError(f"a number in the header is not finite ({text[:20]})")
        return value
    return parse


def _constant(text: str):
    raise RunFileError(f"the header holds {text}, which is not a number")


def parse_json(data: bytes, name: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunFileError(f"{name}: the run's header is not UTF-8 text.") from exc
    depth = json_depth(data)
    if depth > JSON_MAX_DEPTH:
        raise RunFileError(f"{name}: the run's header nests {depth} levels deep (at most {JSON_MAX_DEPTH}); refused.")
    try:
        return json.loads(text, parse_int=_number(int), parse_float=_number(float), parse_constant=_constant)
    except RunFileError as exc:
        raise RunFileError(f"{name}: {exc}; refused.") from None
    except (ValueError, RecursionError) as exc:
        raise RunFileError(f"{name}: the run's header is not valid JSON ({str(exc)[:120]}).") from exc


def npy_header(fp, name: str, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy stream, refusing object dtypes and odd headers."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = reader(fp, max_header_size=NPY_HEADER_MAX)
    except Exception as exc:  # numpy's header parser fails in many ways (ast, tokenize, struct)
        raise RunFileError(f"{name}: array '{key}' has an unreadable header ({str(exc)[:120]}).") from exc
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise RunFileError(f"{name}: array '{key}' holds Python objects or records; refused (no pickle).")
    if not all(isinstance(s, int) and 0 <= s < 2**40 for s in shape):
        raise RunFileError(f"{name}: array '{key}' declares an impossible shape {shape}.")
    return tuple(shape), bool(fortran), dtype


def check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, key: str, kinds: str,
                 shape: tuple[int | None, ...], max_elements: int) -> tuple[tuple[int, ...], np.dtype]:
    """Read only the .npy header and compare it with the expected shape and the declared member size."""
    with zf.open(info) as fp:
        got, _fortran, dtype = npy_header(fp, name, key)
        offset = fp.tell()
    if dtype.kind not in kinds or dtype.itemsize > 8:
        raise RunFileError(f"{name}: array '{key}' has type {dtype}, not the expected kind.")
    if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape, strict=False)):
        raise RunFileError(f"{name}: array '{key}' has shape {got}, expected {_shape_text(shape)}.")
    count = int(np.prod(got, dtype=object))
    if count > max_elements:
        raise RunFileError(f"{name}: array '{key}' has {count:,} elements, more than a run of this size can hold.")
    if info.file_size != offset + count * dtype.itemsize:
        raise RunFileError(f"{name}: array '{key}' is {info.file_size:,} bytes but its shape needs "
                           f"{offset + count * dtype.itemsize:,}; the file is damaged.")
    return got, dtype


def read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, key: str, kinds: str,
               shape: tuple[int | None, ...], max_elements: int) -> np.ndarray:
    """A member's array, read in chunks into an array of the checked size (never more)."""
    got, dtype = check_member(zf, info, name, key, kinds, shape, max_elements)
    with zf.open(info) as fp:
        _shape, fortran, _dtype = npy_header(fp, name, key)
        out = np.empty(got[::-1] if fortran else got, dtype)
        view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")
        done = 0
        while done < len(view):
            n = fp.readinto(view[done: done + CHUNK])
            if not n:
                raise RunFileError(f"{name}: array '{key}' ends early; the file is damaged.")
            done += n
    return out.T if fortran else out


def memory_limit() -> int:
    """Bytes of physical memory (a loaded run must fit in it); 64 GiB when the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
