"""Property tests of the Rayleigh-Ritz certificate (``pipeline.certify.certify_projected``),
the route the distributed certify stage takes for groups with a clustering sketch.

The certificate's error must be the exact error of the basis it returns (so an upper bound
on the exact rank-r error), equal to the exact rank-r error when the projection basis holds
the top singular subspace, and it must refuse (None) rather than certify above eps.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.certify import certify_projected, combine_projected, projected_partials
from pipeline.layout import offsets_of

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENTRIES = st.one_of(st.just(0.0), st.floats(1e-6, 8.0), st.floats(-8.0, -1e-6))


def _matrices(max_rows=8, max_columns=14):
    shapes = st.tuples(st.integers(1, max_rows), st.integers(1, max_columns))
    return shapes.flatmap(lambda shape: arrays(np.float64, shape, elements=ENTRIES))


def _orthonormal(rows: int, k: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, min(k, rows))))
    return q


def _partial(a: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, float]:
    p = q.T @ a
    return p @ p.T, float(np.sum(a * a))


def _energy_errors(a: np.ndarray, rank: int) -> tuple[float, float]:
    s2 = np.linalg.svd(a, compute_uv=False) ** 2
    return float(s2[rank:].sum()), float(s2.sum())


@FAST
@given(_matrices(), st.integers(1, 5), st.integers(1, 8), st.floats(0.01, 0.95), st.integers(0, 2**16))
def test_error_is_that_of_the_returned_basis_and_bounds_the_exact_error(a, rank, k, eps, seed):
    q = _orthonormal(a.shape[0], k, seed)
    cert = certify_projected(_partial(a, q), q, rank, eps)
    tail, total = _energy_errors(a, rank)
    roundoff = 1e-12 * max(total, 1e-300)
    if cert is None:  # refused: the best basis inside span(Q) does not meet eps
        best = q @ np.linalg.svd(q.T @ a, full_matrices=False)[0][:, :rank]
        residual = a - best @ (best.T @ a)
        assert np.sum(residual**2) >= eps * eps * (1 - 1e-6) * total - roundoff
        return
    if total == 0.0:
        assert cert.error == 0.0 and cert.adaptive_rank == 0
        return
    r_c = cert.adaptive_rank
    assert cert.basis.shape == (a.shape[0], r_c)
    np.testing.assert_allclose(cert.basis.T @ cert.basis, np.eye(r_c), atol=1e-10)
    # the basis at the adaptive rank meets eps on the data ...
    residual = a - cert.basis @ (cert.basis.T @ a)
    assert np.sum(residual**2) <= eps * eps * total * (1 + 1e-9) + roundoff
    # ... and the reported rank-r error is never below the exact one
    assert cert.error**2 * total >= tail - roundoff
    assert cert.error <= eps * (1 + 1e-9)


@FAST
@given(_matrices(), st.integers(1, 5), st.floats(0.01, 0.95), st.integers(0, 3))
def test_error_is_exact_when_the_basis_holds_the_top_subspace(a, rank, eps, extra):
    u = np.linalg.svd(a, full_matrices=True)[0]
    q = u[:, : min(rank + extra, a.shape[0])]
    cert = certify_projected(_partial(a, q), q, rank, eps)
    tail, total = _energy_errors(a, rank)
    exact = np.sqrt(tail / total) if total > 0 else 0.0
    if exact <= eps * (1 - 1e-6):
        assert cert is not None
        assert abs(cert.error**2 - exact**2) <= 1e-12 * 16
    elif exact > eps:
        assert cert is None


@FAST
@given(_matrices(max_columns=6), _matrices(max_columns=6), st.integers(1, 4), st.integers(0, 2**16))
def test_partials_over_batches_add_up_to_the_whole(a, b, k, seed):
    if a.shape[0] != b.shape[0]:
        b = np.resize(b, (a.shape[0], b.shape[1]))
    q = _orthonormal(a.shape[0], k, seed)
    both = np.hstack([a, b])
    # one group in two batches, a second group only in the first
    first = projected_partials(np.hstack([a, a]), offsets_of([a.shape[1], a.shape[1]]), np.array([0, 1]),
                               {0: q, 1: q})
    second = projected_partials(b, offsets_of([b.shape[1]]), np.array([0]), {0: q})
    summed = combine_projected(first, second)
    h, total = _partial(both, q)
    np.testing.assert_allclose(summed[0][0], h, rtol=1e-12, atol=1e-12 * max(total, 1.0))
    assert abs(summed[0][1] - total) <= 1e-12 * max(total, 1.0)
    np.testing.assert_array_equal(summed[1][0], first[1][0])
