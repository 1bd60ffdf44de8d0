"""The greedy's low-overhead kernels give the same numbers as the calls they replace.

The grow loop makes tens of thousands of small LAPACK calls, so it calls numpy's LAPACK
gufuncs directly, shares one seed SVD between the bound and the residual order, and grows
the residual bound's basis in a buffer. Each must leave every bit as it was (the recorded
group hashes in test_greedy_identity.py check the end result; these check the parts).
"""

import numpy as np
import pytest

from pipeline import bounds
from pipeline.bounds import (
    GramSketch,
    ResidualBound,
    WeylBound,
    _eigh,
    _svd,
    make_bound,
)
from pipeline.greedy import _without_group
from pipeline.spectra import squared_singular_values, top_energy

SHAPES = [(40, 7), (7, 40), (30, 1), (1, 30), (25, 25), (5, 0), (0, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_svd_is_numpys_bit_for_bit(shape):
    matrix = np.random.default_rng(0).standard_normal(shape)
    if min(shape) > 2:
        matrix[:, -1] = matrix[:, 0]  # rank-deficient
    u, s = _svd(matrix)
    u_ref, s_ref, _ = np.linalg.svd(matrix, full_matrices=False)
    assert np.array_equal(u, u_ref) and np.array_equal(s, s_ref)


@pytest.mark.parametrize("n", [0, 1, 6, 25, 26, 38, 60])
def test_eigh_is_numpys_bit_for_bit(n):
    x = np.random.default_rng(1).standard_normal((n, n + 3))
    small = x @ x.T
    lam, vecs = _eigh(small.copy())
    lam_ref, vecs_ref = np.linalg.eigh(small)
    assert np.array_equal(lam, lam_ref) and np.array_equal(vecs, vecs_ref)


def test_eigh_of_a_sketch_update_is_numpys_bit_for_bit():
    # the matrices the sketch solves: diag(lam, 0) + C C^T, orders around dsyevd's switch to
    # divide and conquer (25)
    rng = np.random.default_rng(4)
    for n in range(2, 45):
        coords = rng.standard_normal((n, min(n, 4)))
        small = coords @ coords.T
        small.flat[: (n - 1) * (n + 1) : n + 1] += np.sort(rng.random(n - 1))[::-1]
        lam, vecs = _eigh(small.copy())
        lam_ref, vecs_ref = np.linalg.eigh(small)
        assert np.array_equal(lam, lam_ref) and np.array_equal(vecs, vecs_ref), n
        assert vecs.flags.c_contiguous  # like numpy's: later products keep their bits


def test_eigh_raises_on_nan():
    with pytest.raises(np.linalg.LinAlgError):
        _eigh(np.full((3, 3), np.nan))


def test_svd_falls_back_to_gesvd_when_gesdd_fails(monkeypatch):
    matrix = np.random.default_rng(2).standard_normal((12, 5))

    class Failing:
        @staticmethod
        def svd_s(a, signature):
            nan = np.full(min(a.shape), np.nan)
            return np.full((a.shape[0], nan.size), np.nan), nan, np.full((nan.size, a.shape[1]), np.nan)

    monkeypatch.setattr(bounds, "_umath_linalg", Failing)
    u, s = _svd(matrix)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, np.linalg.svd(matrix, compute_uv=False), rtol=1e-12)
    np.testing.assert_allclose(u.T @ u, np.eye(5), atol=1e-12)


@pytest.mark.parametrize("method", ["max_norm", "residuals", "approximate"])
def test_a_shared_seed_svd_gives_the_same_bound(method):
    rng = np.random.default_rng(3)
    seed, block = rng.standard_normal((30, 12)), rng.standard_normal((30, 3))
    alone = make_bound(method, seed, 8, oversampling=2)
    shared = make_bound(method, seed, 8, oversampling=2, svd=_svd(seed))
    for bound in (alone, shared):
        bound.add(block)
    if method == "residuals":
        # without a shared SVD the residual bound's seed takes the QR route (same span and
        # values up to roundoff, see test_greedy_extension.py): equal to roundoff, not bits
        np.testing.assert_allclose(alone.lower_energy(), shared.lower_energy(), rtol=1e-13)
        np.testing.assert_allclose(alone.error_bound(), shared.error_bound(), rtol=1e-12)
        return
    assert alone.lower_energy() == shared.lower_energy()
    assert alone.error_bound() == shared.error_bound()


def _one_by_one_basis(seed, blocks, tol):
    """The residual bound's basis built by copying it whole at every step (the old way)."""
    u, s, _ = np.linalg.svd(seed, full_matrices=False)
    basis = np.ascontiguousarray(u[:, s > max(tol, bounds._NOISE_FLOOR) * np.linalg.norm(seed)])
    for block in blocks:
        ext = bounds.extend_basis(basis, block, tol)
        basis = np.hstack([basis, ext.basis])
    return basis


def test_residual_basis_grown_in_a_buffer_is_the_copied_basis():
    rng = np.random.default_rng(4)
    seed = rng.standard_normal((60, 3))
    blocks = [rng.standard_normal((60, w)) for w in [1, 2, 1, 3, 1, 1, 4, 2, 1, 1, 2, 1]]
    bound = ResidualBound(seed, 6)
    for block in blocks:
        bound.add(block)
    assert np.array_equal(bound.basis, _one_by_one_basis(seed, blocks, bound.tol))
    np.testing.assert_allclose(bound.basis.T @ bound.basis, np.eye(bound.basis.shape[1]), atol=1e-12)
    exact = top_energy(squared_singular_values(np.hstack([seed, *blocks])), 6)
    assert bound.lower_energy() <= exact * (1 + 1e-12)


def test_rejected_proposals_leave_the_residual_buffer_alone():
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.standard_normal((40, 4)))[0]
    bound = ResidualBound(basis * [5.0, 4.0, 3.0, 2.0], 4)
    before = bound.basis.copy()
    assert not bound.try_add(rng.standard_normal((40, 3)), 0.01)  # far outside: rejected
    assert np.array_equal(bound.basis, before)
    assert bound.try_add(basis[:, :1] * 0.5, 0.5)
    assert bound.basis.shape[1] == 4  # inside the span: nothing new to add


def test_a_group_is_cut_from_the_remaining_blocks():
    remaining = np.array([9, 4, 7, 1, 3, 8, 2])
    alive = np.ones(10, dtype=bool)
    alive[[9, 4, 2, 8]] = False  # seed 9, 4; norm order accepted 2 then 8 (the back)
    assert _without_group(remaining, alive, 2, 2, tail=True).tolist() == [7, 1, 3]
    alive = np.ones(10, dtype=bool)
    alive[[9, 4, 1, 8]] = False  # residual order: accepted anywhere
    assert _without_group(remaining, alive, 2, 2, tail=False).tolist() == [7, 3, 2]
    alive = np.ones(10, dtype=bool)
    alive[[9]] = False
    assert _without_group(remaining, alive, 1, 0, tail=False).tolist() == [4, 7, 1, 3, 8, 2]


def test_weyl_add_norms_accepts_a_list():
    bound = WeylBound(np.eye(3), 3)
    bound.add_norms([1.0, 2.0])
    assert bound.total == 6.0


def test_sketch_is_unchanged_by_the_direct_eigen_solver():
    rng = np.random.default_rng(6)
    sketch = GramSketch(rng.standard_normal((50, 6)), 4, oversampling=2)
    reference = sketch.copy()
    block = rng.standard_normal((50, 2))
    sketch.add(block)
    # the same update through numpy's public eigh
    ext = bounds.extend_basis(reference.basis, block, reference.tol, with_dropped=True)
    coords = np.vstack([ext.coords, ext.new_coords])
    small = coords @ coords.T
    k = reference.basis.shape[1]
    small[np.arange(k), np.arange(k)] += reference.eigenvalues
    lam, vecs = np.linalg.eigh(small)
    keep = min(reference.capacity, lam.size)
    assert np.array_equal(sketch.eigenvalues, np.clip(lam[::-1][:keep], 0.0, None))
    assert np.array_equal(sketch.basis, np.hstack([reference.basis, ext.basis]) @ vecs[:, ::-1][:, :keep])


def test_scalar_arithmetic_keeps_numpys_bits():
    # the sketch's certified energy and the error use math.sqrt and Python's ** instead of
    # numpy scalars: the same bits (x ** 2 is libm's pow in both, which is not always x * x)
    from pipeline.spectra import error_from_energy

    rng = np.random.default_rng(5)
    sketch = GramSketch(rng.standard_normal((20, 6)), 4, oversampling=2)
    for _ in range(2000):
        lam = np.sort(rng.random(6) * 10.0 ** rng.integers(-3, 4))[::-1]
        slack = float(rng.random() * 0.1)
        head = float(lam[:4].sum())
        assert sketch._sketch_energy(lam, slack) == max(0.0, np.sqrt(head) - slack) ** 2
        low, total = float(rng.random()), 1.0 + float(rng.random())
        assert error_from_energy(low, total) == float(np.sqrt(max(0.0, 1.0 - low / total)))


@pytest.mark.parametrize("n_blocks", [1, 7, 40])
def test_singleton_spectra_of_a_uniform_layout_equal_the_gathered_ones(n_blocks, monkeypatch):
    # wide singletons of one width are stacked as views of the data instead of a gather:
    # the same Grams and spectra, bit for bit (also across chunks of the stack)
    from pipeline import greedy
    from pipeline.layout import as_layout

    rng = np.random.default_rng(6)
    data = rng.standard_normal((30, 9 * n_blocks)) * rng.uniform(0.1, 10.0, 9 * n_blocks)
    layout = as_layout(data, np.arange(0, 9 * n_blocks + 1, 9))
    blocks = rng.permutation(n_blocks)
    viewed = greedy._singleton_energies(layout, blocks, 4)
    monkeypatch.setattr(greedy, "_uniform_rows", lambda layout, width: False)
    gathered = greedy._singleton_energies(layout, blocks, 4)
    assert np.array_equal(viewed, gathered)
    monkeypatch.setattr(greedy, "_STACK_ITEMS", 30 * 9 * 3)  # chunks of 3 blocks
    assert np.array_equal(greedy._uniform_top_energy(layout, 9, 4)[blocks], gathered)
