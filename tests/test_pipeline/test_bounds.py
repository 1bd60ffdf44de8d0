import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import GramSketch, ResidualBound, WeylBound
from pipeline.bounds import extend_basis
from pipeline.greedy import group_bound
from pipeline.spectra import relative_error, squared_singular_values, top_energy

from .helpers import awkward_collection, bound_is_valid, exact_error

REL_TOL = 1e-9

# a collection is drawn as the parameters of awkward_collection (a seeded numpy generator)
collections = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 14), st.integers(1, 7), st.integers(1, 12))


@settings(max_examples=150, deadline=None)
@given(blocks=collections, rank=st.integers(1, 8))
def test_every_bound_dominates_the_exact_error(blocks, rank):
    blocks = awkward_collection(*blocks)
    members = np.arange(len(blocks))
    exact = exact_error(blocks, members, rank)
    for method in ("max_norm", "residuals", "approximate"):
        for order in ("norm", "residual"):
            bound = group_bound(blocks, members, rank=rank, method=method, order=order, oversampling=2)
            assert bound_is_valid(bound, exact), (method, order, bound, exact)


@settings(max_examples=100, deadline=None)
@given(blocks=collections, rank=st.integers(1, 8), oversampling=st.integers(0, 4))
def test_lower_energy_never_exceeds_top_energy(blocks, rank, oversampling):
    blocks = awkward_collection(*blocks)
    full = np.hstack([b.astype(np.float64) for b in blocks])
    exact_top = top_energy(np.linalg.svd(full, compute_uv=False) ** 2, rank)
    states = [
        WeylBound(blocks[0], rank),
        ResidualBound(blocks[0], rank),
        GramSketch(blocks[0], rank, oversampling=oversampling),
    ]
    for state in states:
        for block in blocks[1:]:
            state.add(block)
        assert state.lower_energy() <= exact_top * (1 + REL_TOL) + 1e-300
        assert state.total == pytest.approx(float(np.sum(full * full)), rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(blocks=collections, rank=st.integers(1, 6), split=st.integers(1, 6))
def test_merged_sketches_bound_the_union(blocks, rank, split):
    blocks = awkward_collection(*blocks)
    if len(blocks) < 2:
        blocks = blocks * 2
    split = min(split, len(blocks) - 1)
    left = GramSketch(blocks[0], rank, oversampling=2)
    for block in blocks[1:split]:
        left.add(block)
    right = GramSketch(blocks[split], rank, oversampling=2)
    for block in blocks[split + 1 :]:
        right.add(block)
    merged = left.merge(right)
    exact = exact_error(blocks, range(len(blocks)), rank)
    assert bound_is_valid(merged.error_bound(), exact)
    assert merged.basis.shape[1] <= rank + 2
    # merging left the operands untouched
    assert left.total + right.total == pytest.approx(merged.total)


def test_weyl_uses_the_seed_spectrum_when_the_seed_is_wider_than_rank():
    rng = np.random.default_rng(1)
    seed = rng.standard_normal((30, 12))  # full rank 12 > r = 4
    bound = WeylBound(seed, 4)
    s2 = squared_singular_values(seed)
    assert bound.lower_energy() == pytest.approx(s2[:4].sum())
    assert bound.lower_energy() < np.sum(seed**2) * 0.9  # the buggy ||M_S||^2 would be too high
    assert bound.error_bound() == pytest.approx(relative_error(seed, 4))


def test_extension_basis_is_orthonormal_and_orthogonal_for_rank_deficient_residuals():
    rng = np.random.default_rng(2)
    q = np.linalg.qr(rng.standard_normal((40, 6)))[0]
    # residual of rank 2 inside a 7-column block, plus components along q
    block = rng.standard_normal((40, 2)) @ rng.standard_normal((2, 7)) + q @ rng.standard_normal((6, 7))
    ext = extend_basis(q, block, 1e-12, with_dropped=True)
    assert ext.basis.shape[1] == 2
    assert np.allclose(ext.basis.T @ ext.basis, np.eye(2), atol=1e-13)
    assert np.abs(q.T @ ext.basis).max() < 1e-13
    assert ext.dropped < 1e-12 * np.linalg.norm(block)


def test_block_inside_the_basis_adds_no_direction():
    rng = np.random.default_rng(3)
    seed = rng.standard_normal((20, 3))
    sketch = GramSketch(seed, 3, oversampling=1)
    sketch.add(seed @ rng.standard_normal((3, 5)))
    assert sketch.basis.shape[1] == 3
    assert sketch.error_bound() < 1e-7


def test_try_add_leaves_state_unchanged_on_rejection():
    rng = np.random.default_rng(4)
    seed = rng.standard_normal((20, 2))
    for state in (WeylBound(seed, 2), ResidualBound(seed, 2), GramSketch(seed, 2, oversampling=1)):
        before = (state.total, state.lower_energy())
        assert not state.try_add(rng.standard_normal((20, 8)) * 10, 0.05)
        assert (state.total, state.lower_energy()) == before
    # only the sketch credits energy that lies inside the span it already holds
    sketch = GramSketch(seed, 2, oversampling=1)
    assert sketch.try_add(seed * 0.5, 0.05)
    assert sketch.error_bound() <= 0.05
    assert sketch.total == pytest.approx(1.25 * np.sum(seed**2))


@settings(max_examples=100, deadline=None)
@given(blocks=collections, rank=st.integers(1, 6), oversampling=st.integers(0, 3), cut=st.integers(1, 6))
def test_a_fold_keeps_the_sketch_valid_and_orthonormal(blocks, rank, oversampling, cut):
    # the lazy sketch's fold: many blocks added at once from the small Gram, no extension
    blocks = [np.asarray(b, dtype=np.float64) for b in awkward_collection(*blocks)]
    cut = min(cut, len(blocks))
    sketch = GramSketch(np.hstack(blocks[:cut]), rank, oversampling=oversampling)
    if cut < len(blocks):
        pending = np.hstack(blocks[cut:])
        sketch.fold(pending, float(np.sum(pending * pending)))
    exact = exact_error(blocks, np.arange(len(blocks)), rank)
    assert bound_is_valid(sketch.error_bound(), exact)
    assert sketch.total == pytest.approx(sum(float(np.sum(b * b)) for b in blocks), rel=1e-12)
    basis = sketch.basis
    assert basis.shape[1] <= rank + oversampling and np.all(np.diff(sketch.eigenvalues) <= 0)
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-12)


def test_a_fold_keeps_what_the_extension_keeps():
    rng = np.random.default_rng(4)
    space = rng.standard_normal((40, 6))
    blocks = [space @ rng.standard_normal((6, 3)) + 0.01 * rng.standard_normal((40, 3)) for _ in range(12)]
    folded, added = GramSketch(blocks[0], 4, oversampling=3), GramSketch(blocks[0], 4, oversampling=3)
    pending = np.hstack(blocks[1:])
    folded.fold(pending, float(np.sum(pending**2)))
    added.add(pending)
    np.testing.assert_allclose(folded.eigenvalues, added.eigenvalues, rtol=1e-10)
    assert folded.lower_energy() == pytest.approx(added.lower_energy(), rel=1e-12)
    # the same subspace: the top directions agree up to sign
    np.testing.assert_allclose(np.abs(folded.basis.T @ added.basis)[:4, :4], np.eye(4), atol=1e-8)


@settings(max_examples=100, deadline=None)
@given(blocks=collections, rank=st.integers(1, 6), eps=st.sampled_from([0.05, 0.2, 0.5, 0.9]))
def test_a_run_of_residual_tests_decides_as_one_by_one(blocks, rank, eps):
    # one QR for a run of candidates; the one-by-one extensions are the reference
    blocks = [np.asarray(b, dtype=np.float64) for b in awkward_collection(*blocks)]
    batched, single = ResidualBound(blocks[0], rank), ResidualBound(blocks[0], rank)
    rest = blocks[1:]
    if not rest:
        return
    norms2 = np.array([float(np.sum(b * b)) for b in rest])
    offsets = np.concatenate(([0], np.cumsum([b.shape[1] for b in rest])))
    added, refused = batched.accept_run(np.hstack(rest), offsets, norms2, eps)
    for i in range(added):  # each accepted block is accepted one by one too
        assert single.try_add(rest[i], eps, norms2[i])
    if refused:
        assert not single.try_add(rest[added], eps, norms2[added])
    assert batched.total == pytest.approx(single.total, rel=1e-12)
    np.testing.assert_allclose(np.sort(batched.credited), np.sort(single.credited), rtol=1e-8, atol=1e-12 * single.total)
    basis = batched.basis
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-10)
    assert bound_is_valid(batched.error_bound(), exact_error(blocks, np.arange(added + 1), rank))
