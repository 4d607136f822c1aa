"""Projections: PCA against a reference SVD, the shared basis, nearest neighbours, the vocabulary map cache."""

from __future__ import annotations

import numpy as np
import pytest
from numeric import assert_close

from explorer.core.analysis import projection as P


def _reference_pca(x: np.ndarray, k: int = 2) -> np.ndarray:
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:k].T


def _data(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.1, d)  # distinct variances: well-separated components
    return (rng.normal(size=(n, d)) * scales + rng.normal(size=d)).astype(np.float32)


@pytest.mark.parametrize("n,d", [(50, 8), (300, 8), (5, 12)])  # SVD path, covariance path, n < d
def test_pca_equals_reference_svd_up_to_sign(n, d):
    x = _data(n, d)
    got = P.pca(x)
    ref = _reference_pca(x.astype(np.float64))
    for axis in range(2):
        sign = np.sign(got[:, axis] @ ref[:, axis])
        np.testing.assert_allclose(got[:, axis], sign * ref[:, axis], atol=1e-3 * np.abs(ref).max())


def test_pca_sign_is_deterministic():
    x = _data(100, 6)
    basis = P.pca_fit(x)
    for row in basis.components:
        assert row[np.argmax(np.abs(row))] > 0
    flipped = P.pca_fit(-x)  # same subspace, opposite data: the sign rule still picks the same axes
    assert_close(np.abs(flipped.components), np.abs(basis.components), 1e-5)
    for row in flipped.components:
        assert row[np.argmax(np.abs(row))] > 0
    assert basis.explained[0] > basis.explained[1] > 0


def test_shared_basis_is_the_same_for_every_layer():
    rng = np.random.default_rng(1)
    states = np.cumsum(rng.normal(size=(5, 40, 16)), axis=0).astype(np.float16)  # [layers, N, D]
    coords, basis = P.project_layers(states)
    assert coords.shape == (5, 40, 2)
    # every layer's coordinates come from the one basis: re-projecting each layer alone with it agrees
    for layer in range(5):
        assert_close(coords[layer], basis.transform(states[layer]), 0.0001)
    # and that basis is the PCA of all layers stacked together (not of any single layer)
    stacked = P.pca_fit(states.reshape(-1, 16))
    assert_close(basis.components, stacked.components, 1e-4)
    single = P.pca_fit(states[0])
    assert not np.allclose(np.abs(single.components), np.abs(basis.components), atol=1e-2)


def test_shared_basis_subsamples_long_runs():
    states = _data(3 * 2000, 8).reshape(3, 2000, 8)
    full = P.shared_basis(states, max_rows=10**9)
    sub = P.shared_basis(states, max_rows=1000)
    # a 1,000-row fit finds the same dominant axis (distinct variances)
    assert abs(float(full.components[0] @ sub.components[0])) > 0.99


def test_nearest_neighbours_on_a_hand_made_table():
    table = np.array([
        [1.0, 0.0, 0.0],    # 0
        [0.9, 0.1, 0.0],    # 1  closest to 0
        [0.0, 1.0, 0.0],    # 2  orthogonal to 0
        [-1.0, 0.0, 0.0],   # 3  opposite of 0
        [10.0, 5.0, 0.0],   # 4  long, but at 26.6 degrees from 0
        [0.0, 0.0, 0.0],    # 5  zero row: similarity 0
    ], np.float32)
    ids, sims = P.nearest_neighbours(table, 0, k=5)
    assert ids.tolist() == [1, 4, 2, 5, 3]
    np.testing.assert_allclose(sims[:2], [0.9 / np.hypot(0.9, 0.1), 10 / np.hypot(10, 5)], rtol=1e-6)
    assert_close(sims[2:], [0.0, 0.0, -1.0], 1e-7)
    assert 0 not in ids  # the token itself is excluded
    ids, sims = P.nearest_neighbours(table, np.array([0.0, 2.0, 0.0]), k=1)  # a vector query
    assert ids.tolist() == [2] and sims[0] == pytest.approx(1.0)


def test_vocab_map_is_cached_on_disk(tmp_path):
    table = _data(500, 16, seed=3)
    first = P.vocab_map(table, "org/some model", n_sample=200, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert not first.from_cache and len(files) == 1 and files[0].suffix == ".npz"
    again = P.vocab_map(table, "org/some model", n_sample=200, cache_dir=tmp_path)
    assert again.from_cache
    np.testing.assert_array_equal(again.ids, first.ids)
    np.testing.assert_allclose(again.coords, first.coords)
    # placing the sampled rows with the map's basis gives their map coordinates
    assert_close(first.place(table, first.ids[:10]), first.coords[:10], 1e-5)
    # a different table (same shape) gets a different key
    other = table.copy()
    other[0, 0] += 1.0
    assert not P.vocab_map(other, "org/some model", n_sample=200, cache_dir=tmp_path).from_cache
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not list(tmp_path.glob("*.tmp"))


def test_vocab_map_rebuilds_a_damaged_cache(tmp_path):
    table = _data(100, 8)
    P.vocab_map(table, "m", n_sample=50, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"not a zip")
    vm = P.vocab_map(table, "m", n_sample=50, cache_dir=tmp_path)
    assert not vm.from_cache and vm.coords.shape == (50, 2)


def test_optional_methods_say_how_to_install():
    methods = P.available_methods()
    assert methods["PCA"]
    x = _data(30, 5)
    for name, ok in methods.items():
        if ok:
            assert P.project(x, name).shape == (30, 2)
        else:
            with pytest.raises(ImportError, match="lm-explorer\\[projections\\]"):
                P.project(x, name)


def test_tied_embedding_detection(tiny_models):
    import explorer

    run = explorer.capture("a b a", model=tiny_models["tiny-llama"])
    assert P.embedding_is_tied(run) is True
    bert = explorer.capture("a b a", model=tiny_models["tiny-bert"])
    assert P.embedding_is_tied(bert) is None


def test_massive_positions_are_left_out_of_the_fit():
    rng = np.random.default_rng(2)
    states = rng.normal(size=(4, 30, 8)).astype(np.float32)  # [layers, N, D]
    states[:, :, 1] *= 3.0  # the spread the fit should find: dimension 1
    states[2:, 0, 5] = 500.0  # position 0: a massive activation along dimension 5 from layer 2
    massive = P.massive_positions(states)
    assert massive.tolist() == [True] + [False] * 29
    _, with_outlier = P.project_layers(states)
    coords, basis = P.project_layers(states, exclude=massive)
    assert np.argmax(np.abs(with_outlier.components[0])) == 5  # the outlier alone sets PC1
    assert np.argmax(np.abs(basis.components[0])) == 1
    assert coords.shape == (4, 30, 2)  # excluded positions are still projected


def test_project_trajectories_equals_the_two_step_path():
    rng = np.random.default_rng(4)
    states = (rng.normal(size=(6, 50, 16)) * np.linspace(1, 4, 6)[:, None, None]).astype(np.float16)
    states[:, 0] *= 40  # a massive position
    for normalise in (True, False):
        coords, basis, massive = P.project_trajectories(states, normalise=normalise, max_rows=10**9)
        assert massive.tolist() == [True] + [False] * 49
        ref, ref_basis = P.project_layers(P.unit_rms(states) if normalise else states, max_rows=10**9,
                                          exclude=massive)
        assert_close(np.abs(basis.components), np.abs(ref_basis.components), 2e-3)
        sign = np.sign(np.sum(basis.components * ref_basis.components, axis=1))  # [2]
        np.testing.assert_allclose(coords, ref * sign, atol=2e-2 * np.abs(ref).max())


def test_top_eigenvectors_match_eigh_on_a_large_matrix():
    x = _data(400, 120, seed=5)
    basis = P.pca_fit(x)  # 120 > 64 dimensions: the subspace-iteration path
    xc = x.astype(np.float64) - x.mean(axis=0)
    evecs = np.linalg.eigh(xc.T @ xc)[1][:, ::-1][:, :2].T
    assert_close(np.abs(basis.components), np.abs(evecs), 1e-5)
