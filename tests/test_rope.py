"""RoPE: angles, rotation and the distance curve, against the model's own settings."""

from __future__ import annotations

import numpy as np
import pytest
from numeric import assert_close

from explorer.core.analysis import rope


@pytest.mark.parametrize("theta,head_dim", [(10000.0, 16), (100000.0, 64)])
def test_angles_equal_theta_power_times_position(theta, head_dim):
    ang = rope.rope_angles(50, head_dim, theta)
    assert ang.shape == (50, head_dim // 2)
    for pos in (0, 1, 7, 49):
        for i in (0, 1, head_dim // 4, head_dim // 2 - 1):
            assert ang[pos, i] == pytest.approx(theta ** (-2 * i / head_dim) * pos, rel=1e-12)
    wrapped = rope.rope_angles(50, head_dim, theta, wrap=True)
    assert wrapped.min() >= 0 and wrapped.max() < 2 * np.pi
    assert_close(np.cos(wrapped), np.cos(ang), 1e-9)


def test_angles_for_the_tiny_models_theta(tiny_llama):
    info = tiny_llama.info
    ang = rope.rope_angles(10, info.head_dim, info.rope_theta)
    expected = np.arange(10)[:, None] * info.rope_theta ** (-2 * np.arange(info.head_dim // 2) / info.head_dim)
    np.testing.assert_allclose(ang, expected, rtol=1e-12)


def test_apply_rope_matches_the_models_rotation(tiny_models):
    """Un-rotating the captured post-RoPE keys of one token at two positions gives the same vector."""
    import explorer

    model = tiny_models["tiny-llama"]
    run = explorer.capture("x y x y x y x y", model=model)
    keys = run.array("keys")[0, 0].astype(np.float64)  # [N, head_dim] post-RoPE keys of layer 0
    ids = run.token_ids
    same = [i for i in range(len(ids)) if ids[i] == ids[1]]
    assert len(same) >= 2
    a, b = same[0], same[-1]
    raw = rope.apply_rope(keys[[a, b]], -np.array([a, b]), model.info.rope_theta)  # undo the rotation
    np.testing.assert_allclose(raw[0], raw[1], atol=2e-2 * np.abs(raw).max())  # fp16 storage
    # and the captured keys differ before un-rotation (RoPE really moved them)
    assert np.abs(keys[a] - keys[b]).max() > 0.1 * np.abs(raw).max()


def test_distance_curve_equals_rotated_dot_products():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 32))
    theta = 10000.0
    curve = rope.distance_curve(q, k, theta, 40)
    for m in (40, 77):  # the query position does not matter, only the distance
        for dist in (0, 1, 5, 40):
            rq = rope.apply_rope(q[None], np.array([m]), theta)[0]
            rk = rope.apply_rope(k[None], np.array([m - dist]), theta)[0]
            assert curve[dist] == pytest.approx(rq @ rk, rel=1e-9, abs=1e-9)
    assert curve[0] == pytest.approx(q @ k)
    # a vector with itself: the curve peaks at distance 0 with |q|^2 (rotation keeps lengths)
    self_curve = rope.distance_curve(q, q, theta, 200)
    assert self_curve[0] == pytest.approx(q @ q)
    assert (self_curve[1:] < self_curve[0]).all() and self_curve.std() > 0.01 * self_curve[0]
