"""The extension's Householder QR route spans what the SVD route keeps.

A residual whose smallest singular value provably clears the keep threshold gets its
extension basis from a QR instead of an SVD: the same span, so the same sketch and
residual bound up to roundoff, and the same groups (test_greedy_identity.py checks those).
"""

import numpy as np
import pytest

from pipeline import bounds
from pipeline.bounds import GramSketch, ResidualBound, extend_basis


def _svd_route(monkeypatch):
    monkeypatch.setattr(bounds, "_QR_WIDTH", 10**9)


def _random_basis(rng, m, k):
    return np.ascontiguousarray(np.linalg.qr(rng.standard_normal((m, k)))[0])


@pytest.mark.parametrize("shape", [(64, 8), (96, 24), (256, 52), (40, 40)])
def test_full_range_basis_is_orthonormal_and_spans_the_residual(shape):
    rng = np.random.default_rng(0)
    residual = rng.standard_normal(shape)
    basis = bounds._full_range_basis(residual, 1e-12 * np.linalg.norm(residual))
    assert basis is not None and basis.shape == shape
    np.testing.assert_allclose(basis.T @ basis, np.eye(shape[1]), atol=1e-13)
    assert np.linalg.norm(residual - basis @ (basis.T @ residual)) <= 1e-13 * np.linalg.norm(residual)


@pytest.mark.parametrize("case", ["rank_deficient", "zero", "ill_conditioned", "weak_direction"])
def test_full_range_basis_declines_what_the_svd_must_decide(case):
    rng = np.random.default_rng(1)
    residual = rng.standard_normal((60, 10))
    if case == "rank_deficient":
        residual[:, 3] = residual[:, 0] - residual[:, 5]
    elif case == "zero":
        residual[:] = 0.0
    elif case == "ill_conditioned":
        residual[:, 4] = residual[:, 2] + 1e-9 * rng.standard_normal(60)
    threshold = 1e-12 * np.linalg.norm(residual)
    if case == "weak_direction":  # well conditioned, but a direction near the threshold
        u, s, vt = np.linalg.svd(residual, full_matrices=False)
        s[-1] = s[0] * 1e-4
        residual = (u * s) @ vt
        threshold = s[-1] * 0.75
    assert bounds._full_range_basis(residual, threshold) is None


@pytest.mark.parametrize("width", [8, 13, 30])
def test_extension_routes_agree(width, monkeypatch):
    rng = np.random.default_rng(2)
    q = _random_basis(rng, 80, 12)
    block = rng.standard_normal((80, width)) + q @ rng.standard_normal((12, width))
    fast = extend_basis(q, block, 1e-12, with_dropped=True)
    _svd_route(monkeypatch)
    slow = extend_basis(q, block, 1e-12, with_dropped=True)
    assert fast.basis.shape == slow.basis.shape
    # same span: the projectors agree, and the new coordinates have the same Gram
    np.testing.assert_allclose(fast.basis @ fast.basis.T, slow.basis @ slow.basis.T, atol=1e-12)
    np.testing.assert_allclose(fast.new_coords.T @ fast.new_coords, slow.new_coords.T @ slow.new_coords,
                               atol=1e-11 * np.linalg.norm(block) ** 2)
    np.testing.assert_allclose(np.abs(q.T @ fast.basis).max(), 0.0, atol=1e-14)
    assert fast.dropped <= 1e-13 * np.linalg.norm(block)


def test_sketch_and_residual_bound_agree_across_routes(monkeypatch):
    rng = np.random.default_rng(3)
    seed = rng.standard_normal((120, 20))
    blocks = [rng.standard_normal((120, 20)) @ np.diag(np.linspace(1.0, 0.1, 20)) for _ in range(6)]

    def grown():
        sketch, residual = GramSketch(seed, 10, oversampling=4), ResidualBound(seed, 10)
        for block in blocks:
            sketch.add(block)
            residual.add(block)
        return sketch, residual

    fast = grown()
    _svd_route(monkeypatch)
    slow = grown()
    np.testing.assert_allclose(fast[0].eigenvalues, slow[0].eigenvalues, rtol=1e-11)
    np.testing.assert_allclose(fast[0].basis @ np.diag(fast[0].eigenvalues) @ fast[0].basis.T,
                               slow[0].basis @ np.diag(slow[0].eigenvalues) @ slow[0].basis.T,
                               atol=1e-10 * fast[0].eigenvalues[0])
    assert fast[0].slack <= 1e-12 * np.sqrt(fast[0].total)
    np.testing.assert_allclose(fast[1].lower_energy(), slow[1].lower_energy(), rtol=1e-12)
    np.testing.assert_allclose(fast[1].basis.T @ fast[1].basis, np.eye(fast[1].basis.shape[1]), atol=1e-12)


@pytest.mark.parametrize("shape", [(256, 52), (60, 30)])
def test_residual_bound_seed_from_qr_matches_the_svd(shape, monkeypatch):
    rng = np.random.default_rng(4)
    seed = rng.standard_normal(shape) @ np.diag(np.logspace(0, -3, shape[1]))
    block = rng.standard_normal((shape[0], 3))
    fast = ResidualBound(seed, 10)
    assert fast.basis.shape == shape
    np.testing.assert_allclose(fast.basis.T @ fast.basis, np.eye(shape[1]), atol=1e-13)
    _svd_route(monkeypatch)
    slow = ResidualBound(seed, 10)
    np.testing.assert_allclose(fast.credited, slow.credited, rtol=1e-12)
    np.testing.assert_allclose(fast.basis @ fast.basis.T, slow.basis @ slow.basis.T, atol=1e-12)
    for bound in (fast, slow):
        bound.add(block)
    np.testing.assert_allclose(fast.lower_energy(), slow.lower_energy(), rtol=1e-12)


def test_residual_bound_seed_keeps_the_svd_route_when_rank_deficient():
    rng = np.random.default_rng(5)
    seed = rng.standard_normal((60, 30))
    seed[:, 29] = seed[:, 0]
    bound = ResidualBound(seed, 4)
    assert bound.basis.shape[1] == 29  # the dependent direction dropped, as the SVD drops it
    np.testing.assert_allclose(bound.basis.T @ bound.basis, np.eye(29), atol=1e-13)


@pytest.mark.parametrize("shape,rank", [((256, 52), 20), ((120, 45), 30), ((120, 45), 50)])
def test_sketch_seed_from_qr_matches_the_svd(shape, rank, monkeypatch):
    rng = np.random.default_rng(6)
    seed = rng.standard_normal(shape) @ np.diag(np.logspace(0, -2, shape[1]))
    block = rng.standard_normal((shape[0], 5))
    fast = GramSketch(seed, rank, oversampling=5)
    monkeypatch.setattr(bounds, "_QR_SEED_WIDTH", 10**9)
    slow = GramSketch(seed, rank, oversampling=5)
    k = min(shape[1], rank + 5)
    assert fast.basis.shape == slow.basis.shape == (shape[0], k)
    np.testing.assert_allclose(fast.basis.T @ fast.basis, np.eye(k), atol=1e-13)
    np.testing.assert_allclose(fast.eigenvalues, slow.eigenvalues, rtol=1e-10)
    np.testing.assert_allclose(np.abs(fast.basis.T @ slow.basis), np.eye(k), atol=1e-8)
    for sketch in (fast, slow):
        sketch.add(block)
    np.testing.assert_allclose(fast.lower_energy(), slow.lower_energy(), rtol=1e-12)
