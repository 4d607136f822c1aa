"""2-D projections of hidden states and embedding tables: PCA (deterministic sign), a PCA basis
shared across layers, optional t-SNE/UMAP, cosine nearest neighbours, and a cached vocabulary map.

PCA is numpy only. t-SNE (scikit-learn) and UMAP (umap-learn) are optional:
`pip install "lm-explorer[projections]"`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..numeric import single_blas_thread
from ..tempname import atomic_write
from .massive import layer_norms, massive_positions  # noqa: F401 - their one home is analysis/massive.py

INSTALL_HINT = 'pip install "lm-explorer[projections]"'
FIT_ROWS = 4096  # rows used to fit a shared basis (a random subsample beyond this)


@dataclass(frozen=True)
class PcaBasis:
    """An affine projection x -> (x - mean) @ components.T."""

    mean: np.ndarray  # [D] float32
    components: np.ndarray  # [k, D] float32, orthonormal rows
    explained: np.ndarray  # [k] fraction of the variance along each component

    def transform(self, x: np.ndarray) -> np.ndarray:
        """[..., D] -> [..., k] float32."""
        x = np.asarray(x)
        offset = self.mean @ self.components.T  # [k]
        flat = x.reshape(-1, x.shape[-1])  # [rows, D]
        out = np.empty((flat.shape[0], self.components.shape[0]), np.float32)  # [rows, k]
        step = 65536  # convert float16 in chunks: never a full float32 copy of a big array
        with single_blas_thread():
            for lo in range(0, flat.shape[0], step):
                out[lo:lo + step] = flat[lo:lo + step].astype(np.float32) @ self.components.T - offset
        return out.reshape(*x.shape[:-1], self.components.shape[0])


def fix_signs(components: np.ndarray) -> np.ndarray:
    """Flip each row so that its largest-|value| entry is positive (a deterministic orientation)."""
    idx = np.argmax(np.abs(components), axis=1)  # [k]
    signs = np.sign(components[np.arange(components.shape[0]), idx])  # [k]
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def pca_fit(x: np.ndarray, k: int = 2, max_rows: int | None = None, seed: int = 0) -> PcaBasis:
    """Fit a k-component PCA on rows of `x` ([N, D]); fit on a random `max_rows` subsample if given."""
    with single_blas_thread():
        return _pca_fit(x, k, max_rows, seed)


def _pca_fit(x: np.ndarray, k: int, max_rows: int | None, seed: int) -> PcaBasis:
    x = np.asarray(x).reshape(-1, np.asarray(x).shape[-1])  # [N, D]
    if max_rows is not None and x.shape[0] > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_rows, replace=False))
        x = x[rows]
    x = x.astype(np.float64)  # [N, D]
    n, d = x.shape
    mean = x.mean(axis=0)  # [D]
    xc = x - mean  # [N, D]
    if n >= d:  # tall: the top eigenvectors of the D x D covariance are cheaper than a thin SVD
        xc32 = xc.astype(np.float32)  # [N, D] single precision halves the cost; ample for display axes
        cov = (xc32.T @ xc32).astype(np.float64)  # [D, D]
        comps, var = _top_eigenvectors(cov, k)  # [k, D], [k]
        total = float(np.trace(cov))
    else:
        _, s, vt = np.linalg.svd(xc, full_matrices=False)  # vt: [min(N, D), D]
        comps, var = vt[:k], s[:k] ** 2
        total = float((s ** 2).sum())
    if comps.shape[0] < k:  # fewer samples than components: pad with zero axes
        comps = np.vstack([comps, np.zeros((k - comps.shape[0], d))])
        var = np.concatenate([var, np.zeros(k - var.shape[0])])
    comps = fix_signs(comps)
    explained = var / total if total > 0 else np.zeros_like(var)
    return PcaBasis(mean.astype(np.float32), comps.astype(np.float32), explained.astype(np.float32))


def _top_eigenvectors(cov: np.ndarray, k: int, tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of a symmetric PSD matrix by subspace iteration ([k, D], [k]); a full
    eigh for small matrices. Much faster than eigh for k << D, converged to `tol` (relative)."""
    d = cov.shape[0]
    if d <= 64:
        evals, evecs = np.linalg.eigh(cov)  # ascending
        return evecs[:, ::-1][:, :k].T, np.clip(evals[::-1][:k], 0, None)
    m = min(d, k + 10)  # oversampled subspace
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(d, m)))[0]  # [D, m]
    prev = None
    for _ in range(300):
        q = np.linalg.qr(cov @ q)[0]  # [D, m]
        small = q.T @ cov @ q  # [m, m] Rayleigh-Ritz
        evals, evecs = np.linalg.eigh(small)
        top = evals[::-1][:k]
        if prev is not None and np.all(np.abs(top - prev) <= tol * max(abs(top[0]), 1e-300)):
            break
        prev = top
    vecs = (q @ evecs[:, ::-1][:, :k]).T  # [k, D]
    return vecs, np.clip(evals[::-1][:k], 0, None)


def pca(x: np.ndarray, k: int = 2) -> np.ndarray:
    """[N, D] -> [N, k]: PCA fitted on `x` itself."""
    return pca_fit(x, k).transform(x)


def shared_basis(states: np.ndarray, max_rows: int = FIT_ROWS, seed: int = 0) -> PcaBasis:
    """One PCA basis for all layers' states ([layers, N, D]) so motion across layers is comparable."""
    layers, n, d = states.shape
    flat = states.reshape(layers * n, d)  # [layers * N, D] (a view)
    return pca_fit(flat, 2, max_rows=max_rows, seed=seed)


def project_layers(states: np.ndarray, max_rows: int = FIT_ROWS,
                   exclude: np.ndarray | None = None) -> tuple[np.ndarray, PcaBasis]:
    """[layers, N, D] -> ([layers, N, 2], basis) through one shared basis (fitted without `exclude`d positions)."""
    fit = states if exclude is None or exclude.all() else states[:, ~np.asarray(exclude, bool)]
    basis = shared_basis(fit, max_rows=max_rows)
    return basis.transform(states), basis


def project_trajectories(states: np.ndarray, normalise: bool = True, massive_factor: float = 10.0,
                         max_rows: int = FIT_ROWS, seed: int = 0) -> tuple[np.ndarray, PcaBasis, np.ndarray]:
    """The panel's projection of [layers, N, D] states: ([layers, N, 2], basis, massive [N]).

    Equals `project_layers(unit_rms(states) if normalise else states, exclude=massive_positions(states))`
    without a full float32 or rescaled copy of the states: one pass for the lengths, a subsampled fit,
    one pass for the projection.
    """
    layers, n, d = states.shape
    norms = layer_norms(states)  # [layers, N]
    massive = massive_positions(states, massive_factor, norms=norms)  # [N]
    scale = norms / np.sqrt(d) if normalise else np.ones_like(norms)  # [layers, N] RMS (or 1)
    scale = np.maximum(scale, 1e-6)
    keep = np.flatnonzero(~massive) if massive.any() else np.arange(n)
    rows = np.stack(np.meshgrid(np.arange(layers), keep, indexing="ij"), -1).reshape(-1, 2)  # [R, 2]
    if rows.shape[0] > max_rows:
        rows = rows[np.sort(np.random.default_rng(seed).choice(rows.shape[0], max_rows, replace=False))]
    sample = states[rows[:, 0], rows[:, 1]].astype(np.float32) / scale[rows[:, 0], rows[:, 1]][:, None]  # [R, D]
    basis = pca_fit(sample, 2)
    coords = np.empty((layers, n, 2), np.float32)  # [layers, N, 2]
    offset = basis.mean @ basis.components.T  # [2]
    with single_blas_thread():
        for i in range(layers):
            coords[i] = (states[i].astype(np.float32) @ basis.components.T) / scale[i][:, None] - offset
    return coords, basis, massive


def unit_rms(states: np.ndarray) -> np.ndarray:
    """[..., N, D] -> float16 states scaled to unit RMS per row (what a layer's RMSNorm reads, before its weight)."""
    out = np.empty(states.shape, np.float16)
    flat_in, flat_out = states.reshape(-1, states.shape[-1]), out.reshape(-1, states.shape[-1])  # [rows, D]
    step = 65536
    for lo in range(0, flat_in.shape[0], step):
        x = flat_in[lo:lo + step].astype(np.float32)  # [chunk, D]
        rms = np.sqrt(np.mean(x * x, axis=1, keepdims=True))  # [chunk, 1]
        flat_out[lo:lo + step] = x / np.maximum(rms, 1e-6)
    return out


# --- optional non-linear methods ---------------------------------------------------------------------

def available_methods() -> dict[str, bool]:
    """Projection methods and whether their package is importable."""
    return {"PCA": True,
            "t-SNE": importlib.util.find_spec("sklearn") is not None,
            "UMAP": importlib.util.find_spec("umap") is not None}


def tsne(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, 2] t-SNE (scikit-learn), PCA-initialised, perplexity adapted to small N."""
    from sklearn.manifold import TSNE

    x = np.asarray(x, np.float32)
    if x.shape[0] < 4:
        return pca(x)
    perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x).astype(np.float32)


def umap(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, 2] UMAP (umap-learn)."""
    import umap as umap_lib

    x = np.asarray(x, np.float32)
    if x.shape[0] < 5:
        return pca(x)
    reducer = umap_lib.UMAP(n_components=2, n_neighbors=min(15, x.shape[0] - 1), random_state=seed)
    return reducer.fit_transform(x).astype(np.float32)


def project(x: np.ndarray, method: str = "PCA", seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, 2] with "PCA", "t-SNE" or "UMAP" (ImportError naming the extra when missing)."""
    if method == "PCA":
        return pca(x)
    if not available_methods().get(method, False):
        raise ImportError(f"{method} needs an optional package: {INSTALL_HINT}")
    return tsne(x, seed) if method == "t-SNE" else umap(x, seed)


# --- nearest neighbours ----------------------------------------------------------------------------

def unit_rows(table: np.ndarray) -> np.ndarray:
    """[V, D] -> [V, D] float32 rows scaled to unit length (zero rows stay zero)."""
    t = np.asarray(table, np.float32)
    norms = np.linalg.norm(t, axis=1, keepdims=True)  # [V, 1]
    return t / np.where(norms > 0, norms, 1.0)


def nearest_neighbours(table: np.ndarray, query: int | np.ndarray, k: int = 10, *,
                       unit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine nearest neighbours of row `query` (excluded) or of a vector: (ids [k], similarity [k]).

    Pass `unit=unit_rows(table)` to reuse the normalised table across calls.
    """
    unit = unit_rows(table) if unit is None else unit
    if isinstance(query, (int, np.integer)):
        q = unit[int(query)]  # [D]
        skip = int(query)
    else:
        q = np.asarray(query, np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        skip = -1
    sims = unit @ q  # [V]
    if skip >= 0:
        sims[skip] = -np.inf
    k = min(k, sims.shape[0] - (skip >= 0))
    top = np.argpartition(-sims, k - 1)[:k] if k < sims.shape[0] else np.arange(sims.shape[0])
    top = top[np.lexsort((top, -sims[top]))]  # by similarity, ties by id
    return top.astype(np.int64), sims[top].astype(np.float32)


# --- vocabulary map ------------------------------------------------------------------------------

@dataclass(frozen=True)
class VocabMap:
    """A sample of an embedding table projected with PCA; `basis` places any other row on the map."""

    ids: np.ndarray  # [M] int64 sampled rows
    coords: np.ndarray  # [M, 2] float32
    basis: PcaBasis
    from_cache: bool = False

    def place(self, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """[len(ids), 2] positions of more rows (the run's tokens, neighbours) on this map."""
        return self.basis.transform(np.asarray(table)[np.asarray(ids, np.int64)])


def table_key(model_name: str, table: np.ndarray) -> str:
    """A cache key: model name plus a hash of the table's shape, dtype and a few of its values."""
    flat = np.asarray(table).reshape(-1)
    probe = flat[np.linspace(0, flat.size - 1, 257).astype(np.int64)].astype(np.float32)  # [257]
    h = hashlib.sha256(f"{table.shape}{table.dtype}".encode() + probe.tobytes()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)[-60:] or "model"
    return f"{safe}-{h}"


def vocab_cache_dir() -> Path:
    """Where vocabulary maps are cached (LM_EXPLORER_CACHE or the platformdirs user cache)."""
    from ..models import cache_root

    return cache_root() / "vocab-maps"


def build_vocab_map(table: np.ndarray, n_sample: int = 4000, include: np.ndarray | None = None,
                    seed: int = 0) -> VocabMap:
    """Fit PCA on `n_sample` random rows plus the `include` rows and project them."""
    v = table.shape[0]
    rng = np.random.default_rng(seed)
    ids = rng.choice(v, min(n_sample, v), replace=False)
    if include is not None:
        ids = np.union1d(ids, np.asarray(include, np.int64))
    ids = np.sort(ids).astype(np.int64)  # [M]
    rows = np.asarray(table)[ids]  # [M, D]
    basis = pca_fit(rows, 2)
    return VocabMap(ids, basis.transform(rows), basis)


def vocab_map(table: np.ndarray, model_name: str, n_sample: int = 4000, seed: int = 0,
              cache_dir: Path | None = None) -> VocabMap:
    """The vocabulary map for this table: loaded from the disk cache, or built once and saved atomically.

    The map is the same for every run of a model (a fixed random sample); a run's own tokens are
    placed on it with `VocabMap.place`, which uses the same basis.
    """
    folder = Path(cache_dir) if cache_dir is not None else vocab_cache_dir()
    path = folder / f"{table_key(model_name, table)}-n{n_sample}-s{seed}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                basis = PcaBasis(z["mean"], z["components"], z["explained"])
                return VocabMap(z["ids"], z["coords"], basis, from_cache=True)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache file: rebuild it
    vm = build_vocab_map(table, n_sample=n_sample, seed=seed)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as fh:
            np.savez(fh, allow_pickle=False, ids=vm.ids, coords=vm.coords, mean=vm.basis.mean,
                     components=vm.basis.components, explained=vm.basis.explained)
    except OSError:
        pass  # a read-only cache folder: the map still works, it is just rebuilt next time
    return vm


def embedding_is_tied(run) -> bool | None:
    """True when the run's embedding output equals the lm_head rows of its tokens (the head IS the input
    table); None when that cannot be confirmed (untied, or position embeddings added at layer 0 as in GPT-2)."""
    if run.unembed is None or run.n_tokens == 0:
        return None
    h0 = np.asarray(run.hidden_states(0), np.float32)  # [N, D]
    rows = np.asarray(run.unembed[run.token_ids], np.float32)  # [N, D]
    scale = max(float(np.abs(rows).max()), 1e-6)
    return True if np.abs(h0 - rows).max() <= 1e-2 * scale else None
