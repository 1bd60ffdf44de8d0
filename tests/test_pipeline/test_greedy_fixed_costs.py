"""The greedy's per-call fixed costs (sort, block energies, labels, singleton lists) are
cut without changing what they give."""

import gc
import itertools

import numpy as np
import pytest

import pipeline
from pipeline import greedy
from pipeline.layout import BlockLayout, as_layout
from pipeline.synthetic import union_of_subspaces


@pytest.mark.parametrize("case", ["distinct", "ties", "zeros", "one", "empty"])
def test_norm_order_is_the_stable_sort(case):
    rng = np.random.default_rng(0)
    norms2 = {"distinct": rng.lognormal(size=500), "ties": rng.integers(0, 5, 500).astype(float),
              "zeros": np.zeros(7), "one": np.ones(1), "empty": np.zeros(0)}[case]
    assert np.array_equal(greedy._by_norm_descending(norms2), np.argsort(-norms2, kind="stable"))


def test_block_energies_come_from_the_norms_only_when_they_are_the_datas():
    layout = union_of_subspaces(60, rows=20, width=3, blocks_per_subspace=10, seed=1)[0]
    assert layout.norms2_of_data and layout.subset([3, 1]).norms2_of_data
    computed = greedy.segment_sums(np.einsum("ij,ij->j", layout.data, layout.data), layout.offsets)
    assert np.array_equal(greedy._block_energies(layout), computed)
    # factors whose real blocks carry more energy than the columns: the columns' energy
    factors = BlockLayout(layout.data, layout.offsets, 2.0 * layout.norms2)
    assert not factors.norms2_of_data
    assert np.array_equal(greedy._block_energies(factors), computed)
    assert greedy._column_major(layout, "approximate", "norm").norms2_of_data


@pytest.mark.parametrize("method,order", [("max_norm", "norm"), ("approximate", "norm"), ("residuals", "residual")])
def test_labels_match_the_groups_with_singletons_and_bands(method, order):
    rng = np.random.default_rng(2)
    blocks = [rng.standard_normal((12, int(rng.integers(1, 4)))) * 10.0 ** (300 * (i % 7 == 0)) for i in range(150)]
    result = pipeline.cluster(blocks, rank=3, eps=0.05, method=method, order=order, patience=2)
    assert sorted(itertools.chain.from_iterable(result.clusters)) == list(range(150))
    for g, group in enumerate(result.clusters):
        assert np.all(result.labels[group] == g)
    assert len(result.bounds) == result.n_groups


def test_singleton_lists_leave_the_collector_as_it_was():
    layout = as_layout([np.eye(4)[:, :1] * (i + 1) for i in range(4)])
    for enabled in (True, False):
        (gc.enable if enabled else gc.disable)()
        try:
            clusters = []
            greedy._add_singletons(clusters, [], None, layout, np.arange(4), 1, None)
            assert clusters == [[0], [1], [2], [3]] and gc.isenabled() == enabled
        finally:
            gc.enable()
