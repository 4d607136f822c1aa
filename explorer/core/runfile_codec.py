"""The run file's compact encoding of activation arrays ("q8"): per-row scaled int8 plus exact outliers.

An activation array `x` ([..., R], float16 or float32; a "row" is its last axis: one head's query at
one position, one position's residual vector...) is stored as six members:

- `<name>.codes` int8 [..., R]: round(x / scale) for the row's inliers (0 where an outlier sits);
- `<name>.scale` float32 [...]: the row's step, max |inlier| / 127 (0 for an all-zero row);
- `<name>.oidx` int64 [M]: flat indices, strictly increasing, of the outliers: entries with
  |x| > OUTLIER_RMS x the row's root-mean-square, and anything not finite;
- `<name>.oval` [M] (the array's own dtype): their values, exactly as captured;
- `<name>.xrow` int64 [X]: flat indices, strictly increasing, of rows stored whole and exactly, and
  `<name>.xval` [X, R] (the array's own dtype) those rows (codes and scale 0 there); see `encode_sum`.

Error bounds (tested in tests/test_runfile_codec.py and, on the default model, tests/test_runfile_size.py):
an inlier decodes to within half a step of the saved value, |x' - x| <= max|inlier of its row| / 254
(0.39% of the row's largest ordinary entry), plus float16's own rounding of the result (<= |x| * 2**-11)
when the array is float16; every row decodes within ROW_L2_BOUND (2.5%) of its norm. Outliers (the
"massive activations" of a few channels and positions, which would otherwise coarsen their whole row's
step to 1/127 of a value thousands of times the rest) are kept bit-exact.

Decoding allocates the decoded array plus one float32 row block at a time (never the whole array
in float32). A notebook decodes a member set with `decode_q8(*(npz[f"queries.{p}"] for p in PARTS), "float16")`
(and a residual stream stored as a sum with `decode_sum`).
"""

from __future__ import annotations

import numpy as np

from .errors import RunFileError

CODEC = "q8"
PARTS = ("codes", "scale", "oidx", "oval", "xrow", "xval")  # member suffixes, in this order
LEVELS = 127  # int8 codes run -127 .. 127 (-128 unused, so the code is symmetric)
OUTLIER_RMS = 6.0  # |x| above this many row RMS is an outlier, stored exactly (a Gaussian row has none)
BLOCK_ROWS = 8192  # rows encoded/decoded at once (bounds the float32 scratch to BLOCK_ROWS x R x 4 bytes)
MAX_STEP_ERROR = 1.0 / (2 * LEVELS)  # the inlier error bound, as a fraction of the row's max |inlier|
# every decoded row's L2 error as a fraction of its norm: inliers are below OUTLIER_RMS x RMS, so the rounding
# of R of them is at most sqrt(R) x OUTLIER_RMS x RMS / 254 = 2.36% of the norm, plus float16's 2**-11 (q8);
# a residual stream stored as a running sum is checked against it row by row when saved (q8sum)
ROW_L2_BOUND = 2.5e-2


def member(name: str, part: str) -> str:
    return f"{name}.{part}"


def encode_q8(x: np.ndarray, exact_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The parts of `x` ([..., R] float), keyed by PARTS; `exact_rows`: flat row indices stored whole."""
    rows = x.reshape(-1, x.shape[-1])  # [rows, R]
    xrow = np.unique(np.asarray(exact_rows if exact_rows is not None else [], np.int64))
    codes = np.empty(rows.shape, np.int8)
    scale = np.empty(rows.shape[0], np.float32)
    oidx: list[np.ndarray] = []
    for lo in range(0, rows.shape[0], BLOCK_ROWS):
        block = rows[lo: lo + BLOCK_ROWS].astype(np.float32)  # [b, R]
        finite = np.isfinite(block)
        clean = np.where(finite, block, 0.0)
        rms = np.sqrt(np.mean(np.square(clean, dtype=np.float64), axis=-1, keepdims=True))  # [b, 1]
        outlier = ~finite | (np.abs(clean) > OUTLIER_RMS * rms)
        inlier = np.where(outlier, 0.0, clean)
        step = (np.abs(inlier).max(axis=-1) / LEVELS).astype(np.float32)  # [b]
        safe = np.where(step > 0, step, 1.0)[:, None]
        codes[lo: lo + len(block)] = np.clip(np.rint(inlier / safe), -LEVELS, LEVELS)
        scale[lo: lo + len(block)] = step
        oidx.append(np.flatnonzero(outlier) + lo * rows.shape[1])
    flat_idx = np.concatenate(oidx) if oidx else np.zeros(0, np.int64)
    if xrow.size:  # whole rows kept exactly: no codes, no outliers there
        codes[xrow], scale[xrow] = 0, 0.0
        flat_idx = flat_idx[~np.isin(flat_idx // rows.shape[1], xrow)]
    return {"codes": codes.reshape(x.shape), "scale": scale.reshape(x.shape[:-1]),
            "oidx": flat_idx.astype(np.int64), "oval": rows.reshape(-1)[flat_idx],
            "xrow": xrow, "xval": rows[xrow]}


def decode_q8(codes: np.ndarray, scale: np.ndarray, oidx: np.ndarray, oval: np.ndarray, xrow: np.ndarray,
              xval: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """The array the parts encode, in `dtype` (float16 or float32). Parts are checked for shape and range
    (RunFileError) before the output is allocated."""
    dtype = np.dtype(dtype)
    check_parts(codes, scale, oidx, oval, xrow, xval, dtype)
    out = np.empty(codes.shape, dtype)
    if not codes.size:
        return out
    width = codes.shape[-1]
    c2, s1, o2 = codes.reshape(-1, width), scale.reshape(-1), out.reshape(-1, width)
    for lo in range(0, c2.shape[0], BLOCK_ROWS):
        hi = lo + BLOCK_ROWS
        o2[lo:hi] = c2[lo:hi].astype(np.float32) * s1[lo:hi, None]  # [b, R]
    out.reshape(-1)[oidx] = oval.astype(dtype)
    o2[xrow] = xval.astype(dtype)
    return out


def check_parts(codes: np.ndarray, scale: np.ndarray, oidx: np.ndarray, oval: np.ndarray, xrow: np.ndarray,
                xval: np.ndarray, dtype: np.dtype) -> None:
    """Shapes agree, scales are finite and non-negative, outlier and row indices strictly increase inside the
    array."""
    if dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise RunFileError(f"an encoded array's type is {dtype}, not float16 or float32")
    if codes.dtype != np.int8 or codes.ndim < 1 or scale.shape != codes.shape[:-1]:
        raise RunFileError("an encoded array's codes and scales disagree in shape")
    if oidx.ndim != 1 or oval.shape != oidx.shape or oidx.dtype.kind not in "iu":
        raise RunFileError("an encoded array's outlier indices and values disagree")
    if scale.size and not (np.isfinite(scale).all() and (scale >= 0).all()):
        raise RunFileError("an encoded array has a negative or non-finite scale")
    if oidx.size and (oidx[0] < 0 or oidx[-1] >= codes.size or (np.diff(oidx) <= 0).any()):
        raise RunFileError("an encoded array's outlier indices are out of range or not increasing")
    if xrow.ndim != 1 or xrow.dtype.kind not in "iu" or xval.shape != (len(xrow), codes.shape[-1]):
        raise RunFileError("an encoded array's exact rows and their indices disagree")
    if xrow.size and (xrow[0] < 0 or xrow[-1] >= scale.size or (np.diff(xrow) <= 0).any()):
        raise RunFileError("an encoded array's exact row indices are out of range or not increasing")


# --- the residual stream as a running sum ("q8sum") ------------------------------------------------------------
# In a pre-norm model (Llama, GPT-2, SmolLM2) resid[d + 1] = resid[d] + attn_out[d] + mlp_out[d]. Then resid is
# not stored: only its depth-0 row (the embeddings), and the reader rebuilds the rest as the running sum of the
# decoded blocks, so the depth panel's additivity holds on the opened run (independently rounded resid, attn_out
# and mlp_out put it off by up to 7%, past the panel's 2% check). The last block carries what the sum lost on
# the way (error feedback), so the rebuilt last state meets the saved one. At a position where the blocks are
# large and cancel (an attention sink: their rounding adds up to more than SUM_L2_TOL of the state, or the sum
# misses the final state by more than SUM_GAP_TOL), every row of that position is stored exactly instead.
SUM_CODEC = "q8sum"
ADDITIVE_TOL = 1e-2  # a run is stored as a sum only when |resid[d+1] - (resid[d] + attn + mlp)| <= this x |resid[d+1]|
SUM_L2_TOL = 0.9 * ROW_L2_BOUND  # a rebuilt state's or block's L2 error (fraction of its norm) making it exact
SUM_GAP_TOL = 1.2e-2  # |final state - sum of the decoded blocks| / |final state| above which a position is exact
# (the depth panel calls a run additive below 2e-2: analysis/depth.py is_additive)


def additivity(resid: np.ndarray, attn: np.ndarray, mlp: np.ndarray) -> float:
    """The largest |resid[d+1] - resid[d] - attn_out[d] - mlp_out[d]| / |resid[d+1]| (L2 over each row)."""
    worst = 0.0
    for d in range(attn.shape[0]):
        gap = resid[d + 1].astype(np.float32) - resid[d] - attn[d].astype(np.float32) - mlp[d]  # [N, D]
        norm = np.linalg.norm(resid[d + 1].astype(np.float32), axis=-1)  # [N]
        worst = max(worst, float((np.linalg.norm(gap, axis=-1) / np.maximum(norm, 1e-30)).max()))
    return worst


def encode_sum(resid: np.ndarray, attn: np.ndarray, mlp: np.ndarray,
               final: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]] | None:
    """{"resid": parts of resid[:1], "attn_out": parts, "mlp_out": parts}, or None when the run is not additive
    (or not finite) and resid must be stored itself. `final` ([N, D] float32, default resid[L]): the exact last
    state the depth panel compares the sum of the blocks with."""
    final = resid[-1] if final is None else final
    if not all(np.isfinite(a).all() for a in (resid, attn, mlp)) or additivity(resid, attn, mlp) > ADDITIVE_TOL:
        return None
    exact = np.zeros(0, np.int64)
    for _ in range(3):  # again with the positions found too coarse stored exactly (each pass adds some)
        parts = _encode_chain(resid, attn, mlp, exact)
        if parts is None:
            return None
        decoded = {k: _decoded(parts[k], a.dtype) for k, a in (("resid", resid), ("attn_out", attn), ("mlp_out", mlp))}
        rebuilt = decode_sum(decoded["resid"], decoded["attn_out"], decoded["mlp_out"], resid.dtype)
        error = np.maximum.reduce([_l2_error(resid, rebuilt).max(axis=0), _l2_error(attn, decoded["attn_out"]).max(0),
                                   _l2_error(mlp, decoded["mlp_out"]).max(axis=0)])  # [N] worst over depths
        gap = _l2_error(final[None], rebuilt[-1:])[0]  # [N] the opened run's additivity at the last depth
        coarse = np.flatnonzero((error > SUM_L2_TOL) | (gap > SUM_GAP_TOL))
        if not coarse.size:
            return parts
        exact = np.union1d(exact, coarse)
    return None


def _encode_chain(resid: np.ndarray, attn: np.ndarray, mlp: np.ndarray, exact: np.ndarray) -> dict | None:
    """The blocks encoded in order with error feedback: each block's code carries what the running sum of the
    decoded blocks has lost against the running sum of the saved ones; positions `exact` stored whole."""
    first = encode_q8(resid[:1], exact)  # [1, N, D]
    acc = _decoded(first, resid.dtype)[0].astype(np.float32)  # [N, D] the sum the reader rebuilds
    true = resid[0].astype(np.float32)  # [N, D] the sum of the saved blocks
    blocks: dict[str, list[dict]] = {"attn_out": [], "mlp_out": []}
    for d in range(attn.shape[0]):
        for key, array in (("attn_out", attn), ("mlp_out", mlp)):
            true = true + array[d].astype(np.float32)
            last = d == attn.shape[0] - 1 and key == "mlp_out"
            target = true - acc if last else array[d].astype(np.float32)  # [N, D] the last block takes the carry
            target[exact] = array[d][exact]
            parts = encode_q8(target[None], exact)
            if parts["oval"].size and np.abs(parts["oval"]).max() > np.finfo(array.dtype).max:
                return None  # the carried sum leaves the array's float range: store resid itself
            parts["oval"], parts["xval"] = parts["oval"].astype(array.dtype), parts["xval"].astype(array.dtype)
            blocks[key].append(parts)
            acc = acc + _decoded(parts, array.dtype)[0].astype(np.float32)
    return {"resid": first, **{key: _stack(parts) for key, parts in blocks.items()}}


def decode_sum(first: np.ndarray, attn: np.ndarray, mlp: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """resid [L+1, N, D] rebuilt from its depth-0 row [1, N, D] and the decoded blocks (a float32 running sum)."""
    dtype = np.dtype(dtype)
    if first.ndim != 3 or first.shape[0] != 1 or attn.shape != mlp.shape or attn.shape[1:] != first.shape[1:]:
        raise RunFileError("the residual stream's first row and its blocks disagree in shape")
    out = np.empty((attn.shape[0] + 1, *first.shape[1:]), dtype)
    out[0] = first[0]
    acc = first[0].astype(np.float32)  # [N, D]
    for d in range(attn.shape[0]):
        acc = acc + attn[d].astype(np.float32)
        acc = acc + mlp[d].astype(np.float32)
        out[d + 1] = acc
    return out


def _l2_error(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[..] |x - y| / |x| over the last axis, one row block at a time."""
    out = np.empty(x.shape[:-1], np.float32)
    for i in range(x.shape[0]):
        a, b = x[i].astype(np.float32), y[i].astype(np.float32)
        out[i] = np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(a, axis=-1), 1e-30)
    return out


def _decoded(parts: dict[str, np.ndarray], dtype) -> np.ndarray:
    return decode_q8(*(parts[p] for p in PARTS), dtype)


def _stack(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The parts of arrays [1, N, R] stacked into those of one [len(blocks), N, R] array."""
    size, rows = blocks[0]["codes"].size, blocks[0]["scale"].size
    return {"codes": np.concatenate([b["codes"] for b in blocks]),
            "scale": np.concatenate([b["scale"] for b in blocks]),
            "oidx": np.concatenate([b["oidx"] + i * size for i, b in enumerate(blocks)]),
            "oval": np.concatenate([b["oval"] for b in blocks]),
            "xrow": np.concatenate([b["xrow"] + i * rows for i, b in enumerate(blocks)]),
            "xval": np.concatenate([b["xval"] for b in blocks])}
