"""Fitted lenses on disk: `lens.safetensors` + `metrics.json` folders, checked before use, the per-user cache of
fitted lenses, and reading a whole run through a lens (the math is in core/lens.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .lens import (
    FITTED_KINDS,
    FORMAT,
    LENS_FILE,
    MAX_LENS_BYTES,
    MAX_METRICS_BYTES,
    METRICS_FILE,
    Lens,
    LensError,
    lens_columns,
)
from .tempname import atomic_write


# --- files ---------------------------------------------------------------------------------------------------
def save_lens(lens: Lens, folder: str | os.PathLike, metrics: dict | None = None) -> Path:
    """Write `lens.safetensors` and `metrics.json` into `folder` (created); files are replaced atomically."""
    from safetensors.numpy import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"kind": lens.kind, "model": lens.model, "normalize_input": str(int(lens.normalize_input)),
            "format": FORMAT}
    with atomic_write(folder / LENS_FILE) as fh:  # the project's one atomic save
        fh.write(save({"matrix": np.ascontiguousarray(lens.matrix, np.float32),
                       "bias": np.ascontiguousarray(lens.bias, np.float32)}, metadata=meta))
    data = metrics if metrics is not None else lens.metrics
    if data:
        with atomic_write(folder / METRICS_FILE, "w") as fh:
            fh.write(json.dumps(data, indent=1))
    return folder


def load_lens(path: str | os.PathLike, *, n_layers: int | None = None, hidden: int | None = None,
              model: str | None = None) -> Lens:
    """Load a lens folder (or its lens.safetensors), checking sizes, types and, when given, the model."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    file = path / LENS_FILE if path.is_dir() else path
    if not file.is_file():
        raise LensError(f"No lens at {path}: expected a folder with {LENS_FILE} (fit one with `lm-explorer lens fit`).")
    size = file.stat().st_size
    if size > MAX_LENS_BYTES:
        raise LensError(f"{file.name} is {size / 2**30:.1f} GiB, more than any lens this app reads.")
    try:
        with safe_open(str(file), framework="numpy") as fh:
            meta = fh.metadata() or {}
            names = set(fh.keys())
            if names != {"matrix", "bias"}:
                raise LensError(f"{file.name} is not a lens file (tensors {sorted(names)}).")
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in names}
            dtypes = {k: fh.get_slice(k).get_dtype() for k in names}
            _check_layout(file, meta, shapes, dtypes, n_layers, hidden, model)
            matrix, bias = fh.get_tensor("matrix"), fh.get_tensor("bias")
    except SafetensorError as exc:
        raise LensError(f"{file.name} is not a readable safetensors file: {exc}") from None
    if not (np.isfinite(matrix).all() and np.isfinite(bias).all()):
        raise LensError(f"{file.name} holds non-finite numbers: refit the lens.")
    return Lens(meta["kind"], meta.get("model", ""), matrix, bias, meta.get("normalize_input") == "1",
                _read_metrics(file.parent / METRICS_FILE))


def _check_layout(file: Path, meta: dict, shapes: dict, dtypes: dict, n_layers, hidden, model) -> None:
    kind = meta.get("kind")
    if kind not in FITTED_KINDS:
        raise LensError(f"{file.name}: unknown lens kind {kind!r} (known: {', '.join(FITTED_KINDS)}).")
    if meta.get("format") != FORMAT:
        raise LensError(f"{file.name}: lens format {meta.get('format')!r}; this version reads format {FORMAT}.")
    m, b = shapes["matrix"], shapes["bias"]
    if len(m) != 3 or m[1] != m[2] or b != (m[0], m[1]) or set(dtypes.values()) != {"F32"}:
        raise LensError(f"{file.name}: tensors of shape {m} / {b} ({sorted(set(dtypes.values()))}) are not a lens "
                        "(expected float32 [layers, d, d] and [layers, d]).")
    if n_layers is not None and m[0] != n_layers or hidden is not None and m[1] != hidden:
        raise LensError(f"This lens was fitted for {m[0]} layers of width {m[1]} "
                        f"({meta.get('model') or 'another model'}); the model has {n_layers} of width {hidden}.")
    if model is not None and meta.get("model") and meta["model"] != model:
        raise LensError(f"This lens was fitted on '{meta['model']}', not on '{model}'.")


def _read_metrics(path: Path) -> dict:
    if not path.is_file() or path.stat().st_size > MAX_METRICS_BYTES:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- the per-user cache of fitted lenses ----------------------------------------------------------------------
def lens_dir(model: str, kind: str) -> Path:
    """Where the built-in lens of `model` lives: <user cache>/lenses/<model>/<kind>."""
    from .models import cache_root

    if kind not in FITTED_KINDS:
        raise LensError(f"Unknown lens kind {kind!r} (fitted kinds: {', '.join(FITTED_KINDS)}).")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") or "model"
    return cache_root() / "lenses" / safe / kind


def cached_lens(model: str, kind: str, n_layers: int | None = None, hidden: int | None = None) -> Lens | None:
    """The cached lens of a model, or None when none was fitted (or the cached one is unusable)."""
    folder = lens_dir(model, kind)
    if not (folder / LENS_FILE).is_file():
        return None
    try:
        return load_lens(folder, n_layers=n_layers, hidden=hidden, model=model)
    except LensError:
        return None


def resolve_lens(spec, info) -> Lens | None:
    """"logit" -> None; "tuned" / "jacobian" -> the lens cached for this model; a folder / file -> that lens."""
    if spec is None or isinstance(spec, Lens):
        return spec
    if spec == "logit":
        return None
    if spec in FITTED_KINDS:
        lens = cached_lens(info.name, spec, info.n_layers, info.hidden_size)
        if lens is None:
            raise LensError(f"No {spec} lens is cached for {info.name}: fit one with `lm-explorer lens fit --kind "
                            f"{spec} --model {info.name} --out {lens_dir(info.name, spec)}`.")
        return lens
    return load_lens(spec, n_layers=info.n_layers, hidden=info.hidden_size, model=info.name)


# --- readout of a whole run -------------------------------------------------------------------------------------
def read_lens(run, lens: Lens | str | os.PathLike | None, k: int = 5):
    """The lens over every depth and position of a Run: a LensColumns ([L+1, N, k] top ids and probabilities,
    KL from the final distribution per cell); `top_tokens(run, cols)` names them."""
    lens = resolve_lens(lens, run.info)
    return lens_columns(run, 0, run.n_tokens, k=k, readout=lens)


def top_tokens(run, cols) -> list[list[list[str]]]:
    """[depth][position][rank] readable text of a LensColumns' top tokens."""
    vocab = run.vocab
    name = (lambda i: vocab[i]) if vocab is not None else str
    return [[[name(int(i)) for i in cell] for cell in row] for row in cols.top_ids]
