"""The run file's compact encoding of activation arrays ("q8"): per-row scaled int8 plus exact outliers.

An activation array `x` ([..., R], float16 or float32; a "row" is its last axis: one head's query at
one position, one position's residual vector...) is stored as four members:

- `<name>.codes` int8 [..., R]: round(x / scale) for the row's inliers (0 where an outlier sits);
- `<name>.scale` float32 [...]: the row's step, max |inlier| / 127 (0 for an all-zero row);
- `<name>.oidx` int64 [M]: flat indices, strictly increasing, of the outliers: entries with
  |x| > OUTLIER_RMS x the row's root-mean-square, and anything not finite;
- `<name>.oval` [M] (the array's own dtype): their values, exactly as captured.

Error bound (tested in tests/test_runfile_size.py): an inlier decodes to within half a step of the
saved value, |x' - x| <= max|inlier of its row| / 254 (0.39% of the row's largest ordinary entry),
plus float16's own rounding of the result (<= |x| * 2**-11) when the array is float16. Outliers
(the "massive activations" of a few channels and positions, which would otherwise coarsen their
whole row's step to 1/127 of a value thousands of times the rest) are kept bit-exact.

Decoding allocates the decoded array plus one float32 row block at a time (never the whole array
in float32). A notebook decodes a member set with `decode_q8(codes, scale, oidx, oval, dtype)`.
"""

from __future__ import annotations

import numpy as np

from .errors import RunFileError

CODEC = "q8"
PARTS = ("codes", "scale", "oidx", "oval")  # member suffixes, in this order
LEVELS = 127  # int8 codes run -127 .. 127 (-128 unused, so the code is symmetric)
OUTLIER_RMS = 6.0  # |x| above this many row RMS is an outlier, stored exactly (a Gaussian row has none)
BLOCK_ROWS = 8192  # rows encoded/decoded at once (bounds the float32 scratch to BLOCK_ROWS x R x 4 bytes)
MAX_STEP_ERROR = 1.0 / (2 * LEVELS)  # the inlier error bound, as a fraction of the row's max |inlier|


def member(name: str, part: str) -> str:
    return f"{name}.{part}"


def encode_q8(x: np.ndarray) -> dict[str, np.ndarray]:
    """The four parts of `x` ([..., R] float), keyed by PARTS."""
    rows = x.reshape(-1, x.shape[-1])  # [rows, R]
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
    return {"codes": codes.reshape(x.shape), "scale": scale.reshape(x.shape[:-1]),
            "oidx": flat_idx.astype(np.int64), "oval": np.ascontiguousarray(x).reshape(-1)[flat_idx]}


def decode_q8(codes: np.ndarray, scale: np.ndarray, oidx: np.ndarray, oval: np.ndarray,
              dtype: np.dtype | str) -> np.ndarray:
    """The array the parts encode, in `dtype` (float16 or float32). Parts are checked for shape and range
    (RunFileError) before the output is allocated."""
    dtype = np.dtype(dtype)
    check_parts(codes, scale, oidx, oval, dtype)
    out = np.empty(codes.shape, dtype)
    if not codes.size:
        return out
    width = codes.shape[-1]
    c2, s1, o2 = codes.reshape(-1, width), scale.reshape(-1), out.reshape(-1, width)
    for lo in range(0, c2.shape[0], BLOCK_ROWS):
        hi = lo + BLOCK_ROWS
        o2[lo:hi] = c2[lo:hi].astype(np.float32) * s1[lo:hi, None]  # [b, R]
    out.reshape(-1)[oidx] = oval.astype(dtype)
    return out


def check_parts(codes: np.ndarray, scale: np.ndarray, oidx: np.ndarray, oval: np.ndarray, dtype: np.dtype) -> None:
    """Shapes agree, scales are finite and non-negative, outlier indices strictly increase inside the array."""
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
