"""The approximate bound's exact Gram route (few rows, wide blocks, residual order)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline
from pipeline import greedy
from pipeline.bounds import ExactGram
from pipeline.greedy import _greedy, check_params
from pipeline.layout import as_layout
from pipeline.metrics import summarize
from pipeline.synthetic import union_of_subspaces

from .helpers import (
    assert_certified_with_sketches, assert_groups_certified, awkward_collection, bound_is_valid, recorded_results,
)


def wide_layout(seed):
    # blocks too wide for the lazy sketch, 48 rows <= 4 (r + p + width) = 4 (6 + 5 + 20): the
    # route is taken by default
    return union_of_subspaces(300, rows=48, width=20, blocks_per_subspace=25, subspace_rank=3, noise=0.03, seed=seed)[0]


def solves(monkeypatch) -> list:
    return recorded_results(monkeypatch, ExactGram, "try_solve")


@pytest.mark.parametrize("seed", range(4))
def test_every_group_holds_the_guarantee_and_compresses_as_well(seed, monkeypatch):
    layout = wide_layout(seed)
    params = check_params(6, 0.08, "approximate", "residual", 10, 5, 1e-12)
    calls = solves(monkeypatch)
    result = pipeline.cluster(layout, **params)
    assert any(calls) and not all(calls)  # the route was taken; it solved, accepted and rejected
    assert_groups_certified(layout, result.clusters, result.bounds, 6, 0.08)
    eager = _greedy(layout, **params, lazy=False, gram=False, factor=False, with_states=False)[0]
    assert result.n_groups < layout.n_blocks / 4  # real groups
    assert (summarize(layout, result.clusters, rank=6, eps=0.08).compression_ratio
            >= summarize(layout, eager, rank=6, eps=0.08).compression_ratio)
    again = pipeline.cluster(layout, **params)
    assert again.clusters == result.clusters and np.array_equal(again.bounds, result.bounds)


def test_the_route_is_taken_only_where_it_pays():
    widths = np.full(10, 52)
    assert greedy._gram_pays(256, 25, widths)  # the paper's MIMO blocks
    assert not greedy._gram_pays(256, 21, np.full(10, 21))  # factors of r + p columns
    assert not greedy._gram_pays(4096, 25, np.full(10, 4000))  # an m x m solve would cost too much


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rank=st.integers(1, 5), eps=st.sampled_from([0.05, 0.2, 0.5]))
def test_forced_route_certifies_awkward_collections_and_its_sketches(seed, rank, eps):
    # zero, duplicate, scaled and rank-deficient blocks; blocks wider than the rows
    layout = as_layout(awkward_collection(seed, 10, 30, 7))
    params = check_params(rank, eps, "approximate", "residual", 10, 2, 1e-12)
    clusters, bounds, states = _greedy(layout, **params, gram=True, lazy=False)
    assert_certified_with_sketches(layout, clusters, bounds, states, rank, eps)


def test_exact_test_rejects_only_above_eps():
    rng = np.random.default_rng(3)
    seed = np.linalg.qr(rng.standard_normal((30, 4)))[0] * [4.0, 3.0, 2.0, 1.0]
    bound = ExactGram(seed, 4, oversampling=2)
    outside = np.zeros((30, 2))
    outside[:, 0] = np.linalg.qr(np.hstack([seed, rng.standard_normal((30, 1))]))[0][:, 4]  # orthogonal to the seed
    total = float(np.sum(seed**2)) + 1.0
    exact = np.sqrt(1.0 / total)  # rank 4 leaves the new direction's energy, 1.0
    assert not bound.try_solve(outside, exact * (1 - 1e-6), 1.0)
    assert bound.try_solve(outside, exact * (1 + 1e-6), 1.0)
    assert bound_is_valid(bound.error_bound(), exact) and bound.error_bound() <= exact * (1 + 1e-6)


def test_groups_after_a_short_one_take_the_sketch(monkeypatch):
    layout = wide_layout(5)
    params = check_params(6, 0.08, "approximate", "residual", 10, 5, 1e-12)
    sketch_only = _greedy(layout, **params, gram=False, with_states=False)[0]
    calls = solves(monkeypatch)
    _greedy(layout, **params, with_states=False)
    assert calls  # the route is taken after long groups
    monkeypatch.setattr(greedy, "_GRAM_LEAST_RUN", 10**9)  # no group follows a long enough one
    calls.clear()
    assert _greedy(layout, **params, with_states=False)[0] == sketch_only and not calls
