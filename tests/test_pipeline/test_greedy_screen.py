"""The float32-screened residual order is the exact float64 order, whatever the data."""

import numpy as np
import pytest

from pipeline._greedy_order import ResidualOrderer
from pipeline.greedy import _greedy
from pipeline.layout import as_layout
from pipeline.synthetic import union_of_subspaces

from .helpers import awkward_collection


def both_orders(layout, rank, basis, candidates):
    alive = np.ones(layout.n_blocks, dtype=bool)
    exact = ResidualOrderer(layout, rank, screen=False).order(basis, candidates, alive)
    lazy = ResidualOrderer(layout, rank).order(basis, candidates, alive)
    return exact, lazy


@pytest.mark.parametrize("seed", range(12))
def test_screened_order_equals_the_exact_order_prefix_by_prefix(seed):
    layout = as_layout(awkward_collection(seed, 20, 60, 5))
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((20, 4)))[0]
    candidates = rng.permutation(layout.n_blocks)
    exact, lazy = both_orders(layout, 4, basis, candidates)
    for n in (1, 3, 10, 60, 100):  # growing prefixes, as the grow loop asks for them
        np.testing.assert_array_equal(lazy.prefix(n), exact[:n])


def test_screened_order_breaks_ties_by_position_like_a_stable_sort():
    block = np.random.default_rng(0).standard_normal((10, 2))
    layout = as_layout([block, block * 2, block, block, block * 2])  # exact duplicates tie
    basis = np.linalg.qr(np.random.default_rng(1).standard_normal((10, 3)))[0]
    exact, lazy = both_orders(layout, 3, basis, np.array([4, 3, 2, 1, 0]))
    np.testing.assert_array_equal(lazy.prefix(5), exact)


def test_huge_entries_fall_back_to_float64():
    blocks = [np.full((4, 1), 1e30), np.ones((4, 1))]
    orderer = ResidualOrderer(as_layout(blocks), 2)
    assert isinstance(orderer.order(np.eye(4)[:, :2], np.array([0, 1]), np.ones(2, bool)), np.ndarray)


@pytest.mark.parametrize("method", ["approximate", "residuals", "max_norm"])
def test_screened_greedy_groups_equal_the_unscreened_ones(method):
    layout, _ = union_of_subspaces(600, rows=48, width=2, blocks_per_subspace=40, noise=0.05, seed=21)
    params = dict(rank=8, eps=0.08, method=method, order="residual", patience=10, oversampling=5, tol=1e-12)
    screened = _greedy(layout, **params)
    exact = _greedy(layout, **params, screen=False)
    assert screened[0] == exact[0]
    np.testing.assert_array_equal(screened[1], exact[1])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rank", [1, 3, 8])
@pytest.mark.parametrize("eps", [0.05, 0.3, 0.7])
def test_seed_bound_in_norm_order_on_indices_equals_the_general_loop(seed, rank, eps):
    # ragged widths, blocks wider than r (an SVD seed), zero and duplicate blocks, patience
    layout = as_layout(awkward_collection(seed, 12, 80, 6))
    params = dict(rank=rank, eps=eps, method="max_norm", order="norm", patience=3, oversampling=5, tol=1e-12)
    fast = _greedy(layout, **params)
    general = _greedy(layout, **params, fast=False)
    assert fast[0] == general[0]
    np.testing.assert_array_equal(fast[1], general[1])
    assert [s.lower_energy() for s in fast[2]] == [s.lower_energy() for s in general[2]]
    assert [s.total for s in fast[2]] == [s.total for s in general[2]]
