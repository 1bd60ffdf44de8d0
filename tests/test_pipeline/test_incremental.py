"""pipeline.incremental: new blocks join stored groups only while the stored error holds."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from pipeline.incremental import absorb, top_candidates


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 6), st.integers(1, 3),
       st.floats(0.05, 0.5))
def test_absorb_keeps_every_group_within_eps_and_is_the_documented_rule(seed, n_blocks, n_groups, n_candidates, eps):
    rng = np.random.default_rng(seed)
    totals = rng.uniform(1.0, 10.0, n_groups)
    residual = totals * rng.uniform(0.0, 1.0, n_groups) * eps**2  # every group within eps already
    norms2 = rng.uniform(0.1, 3.0, n_blocks)
    residual2 = norms2[:, None] * rng.uniform(0.0, 3.0, (n_blocks, n_candidates)) * eps**2
    # distinct candidates per block (as routing gives), -1 where fewer groups are eligible
    candidates = np.array([np.concatenate([rng.permutation(n_groups), [-1] * n_candidates])[:n_candidates]
                           for _ in range(n_blocks)])
    candidates[rng.random((n_blocks, n_candidates)) < 0.2] = -1
    assigned, after_residual, after_total = absorb(candidates, residual2, norms2, residual, totals, eps)
    # the guarantee: each group's stored error stays <= eps
    assert np.all(after_residual <= eps**2 * after_total)
    # bookkeeping: the groups' sums are exactly what they took
    for g in range(n_groups):
        took = np.flatnonzero(assigned == g)
        column = [int(np.flatnonzero(candidates[b] == g)[0]) for b in took]
        np.testing.assert_allclose(after_total[g], totals[g] + norms2[took].sum())
        np.testing.assert_allclose(after_residual[g], residual[g] + residual2[took, column].sum())
    # a block joins one of its own candidates
    for b in np.flatnonzero(assigned >= 0):
        assert assigned[b] in candidates[b]
    # determinism: the same inputs give the same placement
    again = absorb(candidates.copy(), residual2.copy(), norms2.copy(), residual.copy(), totals.copy(), eps)[0]
    np.testing.assert_array_equal(again, assigned)


def test_absorb_offers_in_rounds_and_prefers_the_best_fitting_blocks():
    # one group with room for exactly one of two blocks: the one with the smaller relative
    # residual joins, whatever the block order; the other goes to its second candidate
    totals, residual = np.array([10.0, 10.0]), np.array([0.0, 0.0])
    norms2 = np.array([1.0, 1.0])
    eps = 0.1  # budget eps^2 (T + n) = 0.11 per group
    residual2 = np.array([[0.08, 0.01], [0.06, 0.5]])
    candidates = np.array([[0, 1], [0, 1]])
    assigned, after, _ = absorb(candidates, residual2, norms2, residual, totals, eps)
    assert assigned.tolist() == [1, 0]  # block 1 fits group 0 better; block 0 then joins group 1
    np.testing.assert_allclose(after, [0.06, 0.01])


def test_top_candidates_orders_by_share_within_eligible_groups():
    shares = np.array([[0.9, 0.1], [0.5, 0.8], [0.7, 0.2]])  # 3 groups x 2 blocks
    eligible = np.array([[True, True], [True, False], [False, True]])
    assert top_candidates(shares, eligible, 3).tolist() == [[0, 1, -1], [2, 0, -1]]
    assert top_candidates(shares, np.zeros_like(eligible), 2).tolist() == [[-1, -1], [-1, -1]]


def test_a_block_turned_away_is_offered_again_once_its_group_has_room():
    eps = 0.1  # group 0 holds exactly eps: no room until a block fitting better than eps^2 joins
    totals, residual = np.array([10.0, 10.0]), np.array([0.1, 0.1])
    norms2 = np.array([1.0, 1.0])
    residual2 = np.array([[0.015, np.inf], [0.5, 0.0]])  # block 0: only group 0; block 1: group 1 then 0
    candidates = np.array([[0, -1], [1, 0]])
    assigned, after, total = absorb(candidates, residual2, norms2, residual, totals, eps)
    assert assigned.tolist() == [0, 0]  # block 1 joined in round 2, then block 0 in the second pass
    assert np.all(after <= eps**2 * total)
