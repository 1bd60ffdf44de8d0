"""cluster() leaves the bounds of the blocks left alone after ``patience`` until they are read.

Read later, they are the numbers the greedy computes when it builds its states; a wide seed
bound takes its spectrum by the same route, so a wide block gets one bound whether it is a
seed or left alone.
"""

import pickle

import numpy as np
import pytest

import pipeline
from pipeline.bounds import WeylBound
from pipeline.greedy import _greedy, _singleton_energies, check_params
from pipeline.layout import as_layout
from pipeline.synthetic import union_of_subspaces

from .helpers import awkward_collection, bound_is_valid, exact_error


@pytest.mark.parametrize("method", ["approximate", "residuals", "max_norm"])
@pytest.mark.parametrize("order", ["residual", "norm"])
def test_bounds_read_later_are_the_eager_ones(method, order):
    layout = as_layout(awkward_collection(3, 16, 70, 9))
    params = check_params(4, 0.1, method, order, 2, 5, 1e-12)
    result = pipeline.cluster(layout, **params)
    _, eager, _ = _greedy(layout, **params)
    assert len(result.clusters[-1]) == 1  # patience left blocks alone
    np.testing.assert_array_equal(result.bounds, eager)
    assert result.bounds is result.bounds  # evaluated once


def test_bounds_read_later_in_several_magnitude_bands():
    blocks = awkward_collection(5, 12, 40, 6)
    blocks = [b.astype(np.float64) * (1e-300 if i % 3 == 0 else 1e200) for i, b in enumerate(blocks)]
    result = pipeline.cluster(blocks, rank=3, eps=0.05, method="max_norm", order="norm", patience=1)
    assert len(result.bounds) == result.n_groups
    for group, bound in zip(result.clusters, result.bounds):
        assert bound_is_valid(bound, exact_error(blocks, group, 3))


def test_a_pickled_result_carries_its_bounds():
    layout, _ = union_of_subspaces(60, rows=20, width=8, blocks_per_subspace=30, noise=0.05, seed=2)
    result = pipeline.cluster(layout, rank=4, eps=0.02, method="max_norm", order="norm", patience=1)
    again = pickle.loads(pickle.dumps(result))
    np.testing.assert_array_equal(again.bounds, result.bounds)
    assert again.clusters == result.clusters and np.array_equal(again.labels, result.labels)


@pytest.mark.parametrize("shape", [(40, 9), (12, 9)])  # a Gram eigen-solve, an SVD
def test_a_wide_seed_bound_equals_the_singleton_bound(shape):
    data = np.random.default_rng(4).standard_normal(shape)
    layout = as_layout(data, np.array([0, shape[1]]))
    assert WeylBound(data, 4).lower_energy() == _singleton_energies(layout, np.array([0]), 4)[0]

