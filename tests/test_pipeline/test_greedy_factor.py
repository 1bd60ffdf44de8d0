"""The approximate bound kept as a factor (``pipeline.bounds.FactorSketch``): wide blocks, where
neither the lazy sketch nor the exact Gram route is taken."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline
from pipeline import greedy
from pipeline.bounds import FactorSketch, _split_energy
from pipeline.greedy import _greedy, check_params
from pipeline.layout import as_layout
from pipeline.metrics import summarize
from pipeline.synthetic import union_of_subspaces

from .helpers import (
    assert_certified_with_sketches, assert_groups_certified, awkward_collection, bound_is_valid, exact_error,
    recorded_results,
)


def wide_layout(seed):
    # blocks too wide for the lazy sketch (4 x 20 > 64 pending columns): the route is the default
    return union_of_subspaces(240, rows=64, width=20, blocks_per_subspace=30, subspace_rank=3, noise=0.03, seed=seed)[0]


def counted(monkeypatch) -> list:
    return recorded_results(monkeypatch, FactorSketch, "try_add")


@pytest.mark.parametrize("order", ["norm", "residual"])
@pytest.mark.parametrize("seed", range(3))
def test_every_group_holds_the_guarantee_and_matches_the_sketch(seed, order, monkeypatch):
    layout = wide_layout(seed)
    params = check_params(6, 0.08, "approximate", order, 10, 5, 1e-12)
    calls = counted(monkeypatch)
    monkeypatch.setattr(greedy, "_GRAM_MAX_ROWS", 0)  # 64 rows: the exact Gram route would be taken
    result = pipeline.cluster(layout, **params)
    assert any(calls) and not all(calls)  # the route was taken; it accepted and rejected
    assert_groups_certified(layout, result.clusters, result.bounds, 6, 0.08)
    sketch = _greedy(layout, **params, lazy=False, gram=False, factor=False, with_states=False)[0]
    assert result.n_groups < layout.n_blocks * 0.8  # real groups
    # it certifies at least what the block-by-block sketch does: here, the very same groups
    assert result.clusters == sketch or (summarize(layout, result.clusters, rank=6, eps=0.08).compression_ratio
                                         >= summarize(layout, sketch, rank=6, eps=0.08).compression_ratio)
    again = pipeline.cluster(layout, **params)
    assert again.clusters == result.clusters and np.array_equal(again.bounds, result.bounds)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rank=st.integers(1, 5), eps=st.sampled_from([0.05, 0.2, 0.5]),
       order=st.sampled_from(["norm", "residual"]))
def test_the_route_certifies_awkward_collections_and_its_sketches(seed, rank, eps, order):
    # zero, duplicate, scaled and rank-deficient blocks; blocks wider than the rows
    layout = as_layout(awkward_collection(seed, 10, 30, 7))
    params = check_params(rank, eps, "approximate", order, 10, 2, 1e-12)
    clusters, bounds, states = _greedy(layout, **params, lazy=False, gram=False)
    assert_certified_with_sketches(layout, clusters, bounds, states, rank, eps)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rank=st.integers(1, 4), oversampling=st.integers(0, 3))
def test_every_added_block_keeps_the_bound_valid(seed, rank, oversampling):
    blocks = [np.asarray(b, dtype=np.float64) for b in awkward_collection(seed, 12, 6, 9)]
    bound = FactorSketch(blocks[0], rank, oversampling=oversampling)
    for i in range(1, len(blocks)):
        bound.add(blocks[i])
        assert bound.factor.shape[1] <= rank + oversampling
        assert bound_is_valid(bound.error_bound(), exact_error(blocks, range(i + 1), rank))


@pytest.mark.parametrize("values_first, solve", [(True, True), (False, False), (True, False)])
def test_values_first_and_unsolved_factors_change_no_decision(values_first, solve):
    layout = wide_layout(7)
    blocks = [layout.block(i) for i in range(layout.n_blocks)]
    for eps in (0.05, 0.1, 0.3):
        one, two = FactorSketch(blocks[0], 6), FactorSketch(blocks[0], 6)
        for block in blocks[1:40]:
            assert one.try_add(block, eps) == two.try_add(block, eps, values_first=values_first, solve=solve)
            # an unsolved acceptance may hold the split bound's energy: never more
            assert two.energy <= one.energy * (1 + 1e-12) and one.total == two.total
            assert two.error_bound() <= max(eps, one.error_bound())
        assert one.settled().eigenvalues == pytest.approx(two.settled().eigenvalues, rel=1e-9)


def test_a_rejection_means_the_exact_error_exceeds_eps():
    # seed and block fit in the sketch (no truncation): its energy is the exact E_r
    rng = np.random.default_rng(3)
    seed = np.linalg.qr(rng.standard_normal((30, 4)))[0] * [4.0, 3.0, 2.0, 1.0]
    outside = np.zeros((30, 2))
    outside[:, 0] = np.linalg.qr(np.hstack([seed, rng.standard_normal((30, 1))]))[0][:, 4]  # orthogonal to the seed
    exact = np.sqrt(1.0 / (float(np.sum(seed**2)) + 1.0))  # rank 4 leaves the new direction's energy, 1.0
    for values_first, solve in ((False, True), (True, True), (False, False)):
        bound = FactorSketch(seed, 4, oversampling=2)
        assert not bound.try_add(outside, exact * (1 - 1e-6), 1.0, values_first=values_first, solve=solve)
        assert bound.try_add(outside, exact * (1 + 1e-6), 1.0, values_first=values_first, solve=solve)
        assert bound_is_valid(bound.error_bound(), exact) and bound.error_bound() <= exact * (1 + 1e-6)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rank=st.integers(1, 8), widths=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       shared=st.integers(0, 4))
def test_the_split_bound_never_exceeds_the_joint_top_energy(seed, rank, widths, shared):
    # E_(r-j)(X) + E_j(Y) <= E_r(X + Y) for PSD X, Y, overlapping ranges included
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((12, shared))
    x, y = (np.hstack([common @ rng.standard_normal((shared, w)), rng.standard_normal((12, w))])
            * 10.0 ** rng.uniform(-3, 3, size=2 * w) for w in widths)
    values = np.linalg.eigvalsh(x @ x.T)[::-1]
    split = _split_energy(values, np.linalg.eigvalsh(y.T @ y), rank)
    joint = np.linalg.eigvalsh(x @ x.T + y @ y.T)[::-1][:rank].sum()
    assert split <= joint * (1 + 1e-12) + 1e-12 * np.trace(x @ x.T + y @ y.T)
    assert split >= max(values[:rank].sum(), np.linalg.eigvalsh(y @ y.T)[::-1][:rank].sum()) * (1 - 1e-12)
