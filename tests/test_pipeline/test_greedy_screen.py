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


def factor_layout(seed, n_blocks=240, rows=32, width=12, cap=8):
    """Blocks around rank-2 subspaces as the scan stores them: factors A V_k, strongest
    direction first, so that the screen reads their heads only."""
    from pipeline.sharding import block_factors

    rng = np.random.default_rng(seed)
    bases = np.linalg.qr(rng.standard_normal((12, rows, 2)))[0]
    blocks = [bases[i % 12] @ rng.standard_normal((2, width)) + 0.02 * rng.standard_normal((rows, width))
              for i in range(n_blocks)]
    raw = as_layout(blocks)
    factors, offsets, _ = block_factors(raw.data, raw.offsets, cap)
    from pipeline.layout import BlockLayout

    return BlockLayout(factors, offsets, raw.norms2)


@pytest.mark.parametrize("seed", range(6))
def test_head_screened_order_equals_the_exact_order_prefix_by_prefix(seed):
    layout = factor_layout(seed)
    rng = np.random.default_rng(100 + seed)
    orderer = ResidualOrderer(layout, 6)
    assert orderer._heads is not None and orderer._data.shape[1] < layout.data.shape[1] / 2  # heads screened
    basis = np.linalg.qr(layout.gather([seed, seed + 12, seed + 24]))[0][:, :6]  # near some blocks' subspace
    candidates = rng.permutation(layout.n_blocks)
    alive = np.ones(layout.n_blocks, dtype=bool)
    exact = ResidualOrderer(layout, 6, screen=False).order(basis, candidates, alive)
    lazy = orderer.order(basis, candidates, alive)
    for n in (1, 3, 10, 60, layout.n_blocks):
        np.testing.assert_array_equal(lazy.prefix(n), exact[:n])


def test_heads_leave_at_most_their_share_and_tails_are_the_rest():
    from pipeline._greedy_order import _HEAD_TAIL, _heads

    layout = factor_layout(3)
    column2 = np.einsum("ij,ij->j", layout.data, layout.data)
    heads, tails = _heads(column2, layout.offsets)
    for i in range(layout.n_blocks):
        part = column2[layout.offsets[i] : layout.offsets[i + 1]]
        mask = heads[layout.offsets[i] : layout.offsets[i + 1]]
        assert mask[0] and np.all(np.diff(mask.astype(int)) <= 0)  # a leading run of columns
        assert tails[i] == pytest.approx(part[~mask].sum(), rel=1e-12, abs=0)
        assert tails[i] <= _HEAD_TAIL * part.sum() * (1 + 1e-12)
    # raw blocks of unsorted columns keep most columns: no heads then
    raw = as_layout(awkward_collection(0, 20, 60, 5))
    assert _heads(np.einsum("ij,ij->j", raw.data, raw.data), raw.offsets)[0] is None


@pytest.mark.parametrize("method, eps", [("approximate", 0.1), ("residuals", 0.7)])
def test_head_screened_greedy_groups_equal_the_unscreened_ones(method, eps, monkeypatch):
    layout = factor_layout(7, n_blocks=480)
    params = dict(rank=6, eps=eps, method=method, order="residual", patience=10, oversampling=3, tol=1e-12)
    exact = _greedy(layout, **params, screen=False)
    screened = _greedy(layout, **params)
    assert screened[0] == exact[0] and len(exact[0]) < 0.6 * layout.n_blocks  # real groups
    np.testing.assert_array_equal(screened[1], exact[1])
    import pipeline.greedy as greedy_module

    monkeypatch.setattr(greedy_module, "_LEAST_WINDOW", 1)  # windows only set how far the order is materialised
    assert _greedy(layout, **params)[0] == exact[0]


def low_rank_blocks(seed, n_blocks=120, rows=40, width=24, rank=3, noise=0.01):
    """Raw wide blocks (columns in no order) around rank-3 subspaces: rotated heads apply."""
    rng = np.random.default_rng(seed)
    bases = np.linalg.qr(rng.standard_normal((8, rows, rank)))[0]
    return [bases[i % 8] @ rng.standard_normal((rank, width)) * rng.uniform(0.5, 2.0)
            + noise * rng.standard_normal((rows, width)) for i in range(n_blocks)]


@pytest.mark.parametrize("seed", range(6))
def test_rotated_screen_intervals_hold_the_exact_residuals(seed):
    layout = as_layout(low_rank_blocks(seed))
    orderer = ResidualOrderer(layout, 6)
    assert orderer._heads is None and orderer._data.shape[1] <= layout.data.shape[1] // 4  # rotated heads
    rng = np.random.default_rng(seed)
    for basis in (np.linalg.qr(rng.standard_normal((layout.rows, 6)))[0],
                  np.linalg.qr(layout.gather([seed, seed + 8]))[0][:, :6]):  # random, and near some blocks
        candidates = np.arange(layout.n_blocks)
        alive = np.ones(layout.n_blocks, dtype=bool)
        order = orderer.order(basis, candidates, alive)
        exact = orderer.exact_residuals(basis, candidates)
        assert np.all(order._lower <= exact) and np.all(exact <= order._upper)
        np.testing.assert_array_equal(order.prefix(layout.n_blocks),
                                      ResidualOrderer(layout, 6, screen=False).order(basis, candidates, alive))


def test_rotated_heads_are_declined_where_blocks_are_not_of_low_rank():
    from pipeline._greedy_order import _rotated_heads

    layout = as_layout(list(np.random.default_rng(0).standard_normal((50, 40, 24))))
    assert _rotated_heads(layout, layout.norms2) is None
    assert ResidualOrderer(layout, 6)._data.shape[1] == layout.data.shape[1]  # every column screened


@pytest.mark.parametrize("method, eps", [("approximate", 0.05), ("residuals", 0.7)])
def test_rotated_screen_greedy_groups_equal_the_unscreened_ones(method, eps):
    # ragged: two rotated widths, and blocks narrower than the rotation's least width keep their columns
    blocks = low_rank_blocks(3, n_blocks=200)
    layout = as_layout([b[:, :5] if i % 7 == 0 else b[:, :18] if i % 5 == 0 else b for i, b in enumerate(blocks)])
    assert ResidualOrderer(layout, 6)._data.shape[1] < layout.data.shape[1] / 2  # rotated heads
    params = dict(rank=6, eps=eps, method=method, order="residual", patience=10, oversampling=3, tol=1e-12)
    exact = _greedy(layout, **params, screen=False)
    screened = _greedy(layout, **params)
    assert screened[0] == exact[0] and len(exact[0]) < 0.5 * layout.n_blocks
    np.testing.assert_array_equal(screened[1], exact[1])
