"""The lazy Gram sketch (``pipeline.bounds.LazySketch``): certified, deterministic, and the
greedy that grows with it compresses at least as well as the block-by-block sketch.

It accepts a block when its energy inside the sketch's top-r basis keeps the bound, and
folds the pending blocks into the sketch only when that cheap test fails, so its groups may
differ from the block-by-block greedy's (recorded in ``test_greedy_identity``).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.bounds import GramSketch, LazySketch
from pipeline.greedy import _greedy, check_params, greedy_groups
from pipeline.layout import as_layout
from pipeline.metrics import summarize
from pipeline.spectra import top_energy
from pipeline.synthetic import union_of_subspaces

from .helpers import awkward_collection, bound_is_valid, exact_error
from .test_greedy_identity import CASES

collections = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 14), st.integers(1, 12), st.integers(1, 5))


@settings(max_examples=150, deadline=None)
@given(blocks=collections, rank=st.integers(1, 6), eps=st.sampled_from([0.01, 0.1, 0.3, 0.7]),
       oversampling=st.integers(0, 3))
def test_the_lazy_sketch_bounds_what_it_accepted(blocks, rank, eps, oversampling):
    blocks = awkward_collection(*blocks)
    sketch = LazySketch(GramSketch(blocks[0], rank, oversampling=oversampling))
    members = [0]
    for i, block in enumerate(blocks[1:], start=1):
        if sketch.try_add(block, eps):
            members.append(i)
            assert sketch.error_bound() <= eps
        assert bound_is_valid(sketch.error_bound(), exact_error(blocks, members, rank))
    full = np.hstack([blocks[i].astype(np.float64) for i in members])
    assert sketch.total == pytest.approx(float(np.sum(full * full)), rel=1e-12)
    settled = sketch.settled()  # a sketch of every member, for merges
    assert isinstance(settled, GramSketch) and not sketch.pending
    assert settled.lower_energy() <= top_energy(np.linalg.svd(full, compute_uv=False) ** 2, rank) * (1 + 1e-9) + 1e-300
    assert bound_is_valid(settled.error_bound(), exact_error(blocks, members, rank))


@settings(max_examples=60, deadline=None)
@given(blocks=collections, rank=st.integers(1, 6), eps=st.sampled_from([0.05, 0.2, 0.5]),
       order=st.sampled_from(["residual", "norm"]))
def test_the_lazy_greedy_keeps_the_guarantee(blocks, rank, eps, order):
    blocks = awkward_collection(*blocks)
    params = check_params(rank, eps, "approximate", order, 2, 2, 1e-12)
    clusters, bounds, states = _greedy(as_layout(blocks), **params, lazy=True)
    assert sorted(b for group in clusters for b in group) == list(range(len(blocks)))
    for group, bound, state in zip(clusters, bounds, states):
        exact = exact_error(blocks, group, rank)
        assert bound_is_valid(bound, exact), (group, bound, exact)
        if len(group) > 1:
            assert bound <= eps and bound_is_valid(eps, exact)
            assert isinstance(state, GramSketch) and bound_is_valid(state.error_bound(), exact)


def test_a_run_of_cheap_tests_is_the_tests_one_by_one():
    # one product for a run of candidates accepts what testing them in turn accepts, with
    # the same running sums (same bits)
    layout, _ = union_of_subspaces(200, rows=32, width=2, blocks_per_subspace=200, subspace_rank=3, noise=0.02, seed=5)
    at_once, in_turn = (LazySketch(GramSketch(layout.gather(np.arange(4)), 6)) for _ in range(2))
    norms2 = layout.norms2[4:64]
    gains = at_once.gains(layout.gather(np.arange(4, 64)), np.arange(0, 121, 2), norms2)
    run = at_once.cheap_run(gains, norms2, 0.02)
    at_once.accept([layout.block(i) for i in range(4, 4 + run)], gains[:run], norms2[:run])
    n = 0
    while n < 60 and in_turn.cheap_run(gains[n : n + 1], norms2[n : n + 1], 0.02):
        in_turn.accept([layout.block(4 + n)], gains[n : n + 1], norms2[n : n + 1])
        n += 1
    assert 0 < run < 60 and n == run
    assert (at_once.lower_energy(), at_once.total) == (in_turn.lower_energy(), in_turn.total)
    assert at_once.error_bound() <= 0.02


@pytest.mark.parametrize("regime", ["narrow", "single"])
@pytest.mark.parametrize("order", ["residual", "norm"])
def test_the_lazy_greedy_compresses_as_well_and_is_deterministic(regime, order):
    gen, rank, eps = CASES[regime]
    layout = union_of_subspaces(**gen)[0]
    params = check_params(rank, eps, "approximate", order, 10, 5, 1e-12)
    lazy = _greedy(layout, **params, with_states=False)
    again = _greedy(layout, **params, with_states=False)
    eager = _greedy(layout, **params, lazy=False, gram=False, factor=False, with_states=False)
    assert lazy[0] == again[0] and lazy[1] == again[1]
    ratio = summarize(layout, lazy[0], rank=rank, eps=eps).compression_ratio
    assert ratio >= summarize(layout, eager[0], rank=rank, eps=eps).compression_ratio
    blocks = [layout.block(i) for i in range(layout.n_blocks)]
    for group in lazy[0]:
        if len(group) > 1:
            assert bound_is_valid(eps, exact_error(blocks, group, rank))


def test_greedy_groups_give_settled_sketches():
    layout, _ = union_of_subspaces(400, rows=24, width=2, blocks_per_subspace=40, noise=0.05, seed=9)
    clusters, _, states = greedy_groups(layout, **check_params(6, 0.1, "approximate", "residual", 10, 5, 1e-12))
    for group, state in zip(clusters, states):
        if len(group) > 1:
            assert isinstance(state, GramSketch)
            assert state.total == pytest.approx(float(layout.norms2[group].sum()), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rank=st.integers(1, 6), eps=st.sampled_from([0.05, 0.1, 0.3]),
       width=st.integers(1, 4))
def test_the_lazy_sketch_accepts_what_the_block_by_block_sketch_accepts(seed, rank, eps, width):
    # in order, stopping at the first rejection (the greedy's grow loop): the eigenvalue
    # test sees G + P P^T + A A^T, which dominates what truncating after every block keeps
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((16, 3))
    blocks = [basis @ rng.standard_normal((3, width)) + 0.05 * rng.standard_normal((16, width)) for _ in range(30)]
    eager = GramSketch(blocks[0], rank, oversampling=2)
    lazy = LazySketch(GramSketch(blocks[0], rank, oversampling=2))
    eager_run = next((i for i, b in enumerate(blocks[1:]) if not eager.try_add(b, eps)), len(blocks) - 1)
    lazy_run = next((i for i, b in enumerate(blocks[1:]) if not lazy.try_add(b, eps)), len(blocks) - 1)
    assert lazy_run >= eager_run
