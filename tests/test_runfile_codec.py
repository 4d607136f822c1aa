"""The run file's activation encoding (core/runfile_codec.py): its stated bounds, its checks, and the residual
stream stored as the running sum of its blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.core import runfile_codec as codec
from explorer.core.errors import RunFileError
from explorer.core.runfile import row_errors
from explorer.core.runfile_codec import (
    MAX_STEP_ERROR,
    OUTLIER_RMS,
    PARTS,
    ROW_L2_BOUND,
    decode_q8,
    decode_sum,
    encode_q8,
    encode_sum,
)


def roundtrip(x: np.ndarray, exact_rows=None) -> np.ndarray:
    parts = encode_q8(x, exact_rows)
    return decode_q8(*(parts[p] for p in PARTS), x.dtype)


def inlier_max(x: np.ndarray) -> np.ndarray:
    """[...] each row's largest |entry| that is not an outlier (the encoder's rule, rewritten here)."""
    a = x.astype(np.float64)
    rms = np.sqrt(np.mean(a * a, axis=-1, keepdims=True))
    return np.where(np.abs(a) > OUTLIER_RMS * rms, 0.0, np.abs(a)).max(axis=-1)


def activations(rng, shape, massive: bool) -> np.ndarray:
    """Heavy-tailed float16 rows, optionally with a few 'massive activation' channels thousands of times larger."""
    x = rng.standard_t(4, size=shape) * rng.uniform(0.01, 30, size=(*shape[:-1], 1))
    if massive:
        x[..., 0, 7 % shape[-1]] = 2.2e4  # one position, one channel: what SmolLM2's first token carries
        x[..., -1, 100 % shape[-1]] = -900.0
    return x.astype(np.float16)


@pytest.mark.parametrize("massive", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 64), (2, 7, 576), (4, 1, 8)])
def test_the_stated_bounds_hold(shape, massive):
    rng = np.random.default_rng(sum(shape) + massive)
    x = activations(rng, shape, massive)
    y = roundtrip(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    a, b = x.astype(np.float64), y.astype(np.float64)
    # element bound: half a step of the row's largest ordinary entry, plus float16's rounding of the result
    bound = MAX_STEP_ERROR * inlier_max(x)[..., None] + np.abs(a) * 2.0**-11 * 1.01
    assert (np.abs(a - b) <= bound).all()
    # row bound: the L2 error under ROW_L2_BOUND of the row's norm (runs_equal's tolerance)
    assert row_errors(x, y).max() <= ROW_L2_BOUND
    outliers = np.abs(a) > OUTLIER_RMS * np.sqrt(np.mean(a * a, axis=-1, keepdims=True))
    np.testing.assert_array_equal(y[outliers], x[outliers])  # massive activations bit-exact
    if massive and shape[-1] > OUTLIER_RMS**2:  # a row of R entries has none above sqrt(R) x its RMS
        assert outliers.any()
        # without the outlier rule the massive row would lose everything but its spike
        ordinary = ~outliers[..., 0, :]
        assert (np.abs(b[..., 0, :] - a[..., 0, :])[ordinary] <= 2.2e4 / 254).all()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bounds_on_arbitrary_rows(data):
    width = data.draw(st.integers(1, 70))
    rows = data.draw(st.integers(1, 6))
    values = st.one_of(st.floats(-65504, 65504, width=16), st.sampled_from([0.0, -0.0, 1e-7, 6e-8]))
    x = np.array(data.draw(st.lists(values, min_size=rows * width, max_size=rows * width)),
                 np.float16).reshape(rows, width)
    y = roundtrip(x)
    a, b = x.astype(np.float64), y.astype(np.float64)
    assert (np.abs(a - b) <= MAX_STEP_ERROR * inlier_max(x)[..., None] + np.abs(a) * 2.0**-11 * 1.01 + 1e-12).all()
    assert (row_errors(x, y) <= ROW_L2_BOUND).all()


def test_non_finite_values_zero_rows_and_float32_keep_exactly():
    x = np.zeros((2, 3, 16), np.float32)
    x[0, 1] = np.linspace(-3, 3, 16)
    x[0, 1, 4], x[1, 2, 0], x[1, 2, 1] = np.inf, np.nan, 1e30  # float32 beyond float16 (a widened array)
    y = roundtrip(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[1, 0], 0.0)  # an all-zero row stays zero
    assert np.isposinf(y[0, 1, 4]) and np.isnan(y[1, 2, 0]) and y[1, 2, 1] == np.float32(1e30)
    assert row_errors(np.nan_to_num(x, posinf=0), np.nan_to_num(y, posinf=0)).max() <= ROW_L2_BOUND


def test_exact_rows_are_stored_whole():
    rng = np.random.default_rng(3)
    x = activations(rng, (4, 6, 32), massive=False)
    y = roundtrip(x, exact_rows=[1, 13])
    np.testing.assert_array_equal(y.reshape(-1, 32)[[1, 13]], x.reshape(-1, 32)[[1, 13]])
    assert not np.array_equal(y, x)


def _parts(x):
    return encode_q8(x, [0])


BROKEN = {
    "codes_int16": lambda p: p.update(codes=p["codes"].astype(np.int16)),
    "scale_shape": lambda p: p.update(scale=p["scale"][:-1]),
    "scale_negative": lambda p: p.update(scale=-np.abs(p["scale"]) - 1),
    "scale_inf": lambda p: p.update(scale=np.full_like(p["scale"], np.inf)),
    "oidx_beyond": lambda p: p.update(oidx=np.array([10**6]), oval=np.ones(1, np.float16)),
    "oidx_negative": lambda p: p.update(oidx=np.array([-1]), oval=np.ones(1, np.float16)),
    "oidx_repeated": lambda p: p.update(oidx=np.array([2, 2]), oval=np.ones(2, np.float16)),
    "oidx_floats": lambda p: p.update(oidx=np.array([2.0]), oval=np.ones(1, np.float16)),
    "oval_short": lambda p: p.update(oidx=np.array([2, 3]), oval=np.ones(1, np.float16)),
    "xrow_beyond": lambda p: p.update(xrow=np.array([99])),
    "xrow_unsorted": lambda p: p.update(xrow=np.array([3, 1]), xval=np.zeros((2, 16), np.float16)),
    "xval_width": lambda p: p.update(xval=np.zeros((1, 15), np.float16)),
    "xval_rows": lambda p: p.update(xval=np.zeros((2, 16), np.float16)),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_inconsistent_parts_are_refused_before_the_output_is_allocated(name):
    parts = _parts(np.ones((2, 3, 16), np.float16))
    BROKEN[name](parts)
    with pytest.raises(RunFileError):
        decode_q8(*(parts[p] for p in PARTS), np.float16)


def test_decoding_refuses_a_type_other_than_float16_or_float32():
    parts = _parts(np.ones((2, 16), np.float16))
    with pytest.raises(RunFileError):
        decode_q8(*(parts[p] for p in PARTS), np.int64)


# --- the residual stream as a running sum ---------------------------------------------------------------------
def additive_stream(rng, layers=6, n=9, d=48, sink: bool = True):
    """resid, attn_out, mlp_out of a pre-norm model (float16, as captured: the sum holds to float16 rounding)."""
    attn = (rng.standard_normal((layers, n, d)) * 0.5).astype(np.float16)
    mlp = (rng.standard_normal((layers, n, d)) * 0.7).astype(np.float16)
    if sink:  # position 0: big blocks that cancel, leaving a small state (an attention sink)
        attn[:, 0] = (rng.standard_normal((layers, d)) * 300).astype(np.float16)
        mlp[:, 0] = (-attn[:, 0].astype(np.float32) + rng.standard_normal((layers, d))).astype(np.float16)
    resid = np.empty((layers + 1, n, d), np.float32)
    resid[0] = rng.standard_normal((n, d))
    for i in range(layers):
        resid[i + 1] = resid[i] + attn[i].astype(np.float32) + mlp[i].astype(np.float32)
    return resid.astype(np.float16), attn, mlp


def _decode_chain(parts, dtype=np.float16):
    blocks = {k: decode_q8(*(parts[k][p] for p in PARTS), dtype) for k in parts}
    return decode_sum(blocks["resid"], blocks["attn_out"], blocks["mlp_out"], dtype), blocks


def test_a_pre_norm_stream_is_stored_as_a_sum_and_stays_additive():
    resid, attn, mlp = additive_stream(np.random.default_rng(5))
    parts = encode_sum(resid, attn, mlp)
    assert parts is not None and parts["resid"]["codes"].shape == (1, *resid.shape[1:])  # only depth 0 stored
    rebuilt, blocks = _decode_chain(parts)
    for got, want in ((rebuilt, resid), (blocks["attn_out"], attn), (blocks["mlp_out"], mlp)):
        assert row_errors(want, got).max() <= ROW_L2_BOUND
    # the sink position was stored exactly (its rounding would not add up), the others encoded
    np.testing.assert_array_equal(blocks["attn_out"][:, 0], attn[:, 0])
    assert not np.array_equal(blocks["attn_out"][:, 1:], attn[:, 1:])
    # the opened run is additive: each state is the sum of the decoded blocks, the last one meets the saved one
    sums = rebuilt[:1].astype(np.float64) + np.cumsum(blocks["attn_out"].astype(np.float64)
                                                      + blocks["mlp_out"], axis=0)
    assert row_errors(rebuilt[1:].astype(np.float64), sums).max() < 2e-3
    assert row_errors(resid[-1:], rebuilt[-1:]).max() <= codec.SUM_GAP_TOL


def test_without_the_sink_position_fallback_the_sum_drifts(monkeypatch):
    """The class the exact rows fix: independently rounded blocks that cancel leave the state far off."""
    resid, attn, mlp = additive_stream(np.random.default_rng(5))
    monkeypatch.setattr(codec, "SUM_L2_TOL", np.inf)
    monkeypatch.setattr(codec, "SUM_GAP_TOL", np.inf)
    rebuilt, _ = _decode_chain(encode_sum(resid, attn, mlp))
    assert row_errors(resid, rebuilt)[:, 0].max() > ROW_L2_BOUND


def test_a_post_norm_stream_is_not_stored_as_a_sum():
    resid, attn, mlp = additive_stream(np.random.default_rng(6), sink=False)
    resid[1:] = resid[1:] / np.linalg.norm(resid[1:], axis=-1, keepdims=True)  # renormalised after each block
    assert encode_sum(resid, attn, mlp) is None
    bad = resid.copy()
    bad[2, 3, 4] = np.inf
    assert encode_sum(bad, attn, mlp) is None


def test_decode_sum_refuses_shapes_that_disagree():
    with pytest.raises(RunFileError):
        decode_sum(np.zeros((2, 3, 4), np.float16), np.zeros((5, 3, 4), np.float16), np.zeros((5, 3, 4), np.float16),
                   np.float16)
    with pytest.raises(RunFileError):
        decode_sum(np.zeros((1, 3, 4), np.float16), np.zeros((5, 3, 4), np.float16), np.zeros((4, 3, 4), np.float16),
                   np.float16)
