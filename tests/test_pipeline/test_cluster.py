import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline
from pipeline.synthetic import union_of_subspaces

from .helpers import awkward_collection, bound_is_valid, exact_error

METHODS = ("max_norm", "residuals", "approximate")
ORDERS = ("norm", "residual")
COMBOS = [(m, o) for m in METHODS for o in ORDERS]


def assert_partition(result, n_blocks):
    flat = [b for group in result.clusters for b in group]
    assert sorted(flat) == list(range(n_blocks))
    for g, group in enumerate(result.clusters):
        assert all(result.labels[b] == g for b in group)


def assert_guarantee(blocks, result, rank, eps):
    """Every group's exact rank-r error (full SVD) is <= eps, and <= its certified bound.
    A single block that no rank-r form fits is stored as it is (error 0)."""
    for group, bound in zip(result.clusters, result.bounds):
        exact = exact_error(blocks, group, rank)
        assert bound_is_valid(bound, exact), (group, bound, exact)
        if len(group) > 1:
            assert bound_is_valid(eps, exact), (group, exact)


@pytest.mark.parametrize("method,order", COMBOS)
def test_guarantee_partition_and_determinism_on_subspace_data(method, order):
    layout, _ = union_of_subspaces(300, rows=24, width=3, blocks_per_subspace=30, subspace_rank=2, noise=0.02, seed=5)
    blocks = [layout.block(i) for i in range(layout.n_blocks)]
    result = pipeline.cluster(blocks, rank=6, eps=0.1, method=method, order=order)
    assert_partition(result, len(blocks))
    assert_guarantee(blocks, result, 6, 0.1)
    again = pipeline.cluster(layout.data, offsets=layout.offsets, rank=6, eps=0.1, method=method, order=order)
    assert again.clusters == result.clusters
    np.testing.assert_array_equal(again.bounds, result.bounds)
    if method == "approximate":
        assert result.n_groups < len(blocks) / 3  # structure is actually found


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 12),
    k=st.integers(1, 12),
    width=st.integers(1, 10),
    rank=st.integers(1, 6),
    eps=st.floats(0.01, 0.9),
    patience=st.integers(1, 3),
)
def test_guarantee_on_awkward_collections(seed, rows, k, width, rank, eps, patience):
    blocks = awkward_collection(seed, rows, k, width)
    for method, order in COMBOS:
        result = pipeline.cluster(blocks, rank=rank, eps=eps, method=method, order=order, patience=patience, oversampling=2)
        assert_partition(result, len(blocks))
        assert_guarantee(blocks, result, rank, eps)


@pytest.mark.parametrize("method,order", COMBOS)
def test_identical_blocks_form_one_group(method, order):
    rng = np.random.default_rng(0)
    block = rng.standard_normal((16, 3))
    result = pipeline.cluster([block] * 12, rank=3, eps=0.01, method=method, order=order)
    if method == "approximate":
        assert len(result.clusters) == 1 and result.clusters[0][0] == 0
        assert sorted(result.clusters[0]) == list(range(12))
        assert result.bounds[0] < 1e-6
    else:
        # the seed and residual bounds credit no energy inside the seed's span: a copy of
        # the seed only grows ||M||^2, so every block stays alone
        assert result.clusters == [[i] for i in range(12)]


@pytest.mark.parametrize("method,order", COMBOS)
def test_orthogonal_full_rank_blocks_exceeding_rank_do_not_merge(method, order):
    q = np.linalg.qr(np.random.default_rng(1).standard_normal((30, 30)))[0]
    blocks = [q[:, 5 * i : 5 * i + 5] * (1.0 + 0.1 * i) for i in range(6)]  # six orthogonal rank-5 blocks
    result = pipeline.cluster(blocks, rank=5, eps=0.3, method=method, order=order)
    assert result.n_groups == 6
    assert sorted(len(g) for g in result.clusters) == [1] * 6


def test_seed_takes_blocks_while_width_fits_and_patience_ends_with_singletons():
    q = np.linalg.qr(np.random.default_rng(2).standard_normal((40, 40)))[0]
    blocks = [q[:, 2 * i : 2 * i + 2] * (30.0 - i) for i in range(20)]  # mutually orthogonal, width 2
    result = pipeline.cluster(blocks, rank=4, eps=0.05, patience=2)
    # seeds: two largest blocks (width 4 = r), nothing else fits; after 2 misses: singletons
    assert result.clusters[:2] == [[0, 1], [2, 3]]
    assert all(len(g) == 1 for g in result.clusters[2:])
    assert len(result.clusters) == 2 + 16
    assert np.all(result.bounds[:2] < 1e-7)  # exact up to the cancellation in 1 - L/||M||^2


def test_approximate_is_at_least_as_good_as_max_norm_on_structured_data():
    layout, _ = union_of_subspaces(400, rows=32, width=2, blocks_per_subspace=50, noise=0.01, seed=3)
    approx = pipeline.cluster(layout, rank=8, eps=0.05)
    weyl = pipeline.cluster(layout, rank=8, eps=0.05, method="max_norm")
    assert approx.n_groups < weyl.n_groups


@pytest.mark.parametrize(
    "kwargs,blocks,message",
    [
        ({"rank": 0, "eps": 0.1}, None, "rank"),
        ({"rank": 2.5, "eps": 0.1}, None, "rank"),
        ({"rank": 2, "eps": 0.0}, None, "eps"),
        ({"rank": 2, "eps": 1.0}, None, "eps"),
        ({"rank": 2, "eps": 0.1, "method": "svd"}, None, "method"),
        ({"rank": 2, "eps": 0.1, "order": "random"}, None, "order"),
        ({"rank": 2, "eps": 0.1, "patience": 0}, None, "patience"),
        ({"rank": 2, "eps": 0.1}, [], "empty"),
        ({"rank": 2, "eps": 0.1}, [np.ones((4, 2)), np.ones((5, 2))], "block 1: has 5 rows"),
        ({"rank": 2, "eps": 0.1}, [np.ones((4, 2)), np.ones(4)], "block 1: must be a 2-D"),
        ({"rank": 2, "eps": 0.1}, [np.ones((4, 2)), np.array([[1.0, np.nan]] * 4)], "block 1: contains NaN"),
        ({"rank": 2, "eps": 0.1}, [np.ones((4, 2)), np.full((4, 3), np.inf)], "block 1: contains NaN or Inf"),
        ({"rank": 2, "eps": 0.1}, [np.ones((4, 2)), np.ones((4, 0))], "block 1: is empty"),
        ({"rank": 2, "eps": 0.1}, [np.ones((4, 2), dtype=complex)], "block 0: dtype complex"),
    ],
)
def test_bad_input_names_the_parameter_or_block(kwargs, blocks, message):
    blocks = [np.ones((4, 2))] if blocks is None else blocks
    with pytest.raises(ValueError, match=message):
        pipeline.cluster(blocks, **kwargs)


def test_bad_offsets_are_rejected():
    with pytest.raises(ValueError, match="block 1: has width 0"):
        pipeline.cluster(np.ones((3, 4)), offsets=[0, 2, 2, 4], rank=1, eps=0.1)
    with pytest.raises(ValueError, match="end at the number of columns"):
        pipeline.cluster(np.ones((3, 4)), offsets=[0, 2, 3], rank=1, eps=0.1)


def test_zero_and_rank_deficient_blocks_are_valid():
    blocks = [np.zeros((6, 2)), np.outer(np.arange(6.0), [1.0, 2.0, 3.0]), np.zeros((6, 1))]
    result = pipeline.cluster(blocks, rank=1, eps=0.01)
    assert result.clusters == [[1, 0, 2]] or sorted(map(sorted, result.clusters)) == [[0, 1, 2]]
    assert result.bounds.max() < 1e-6
