"""Direct property tests of the sharding kernels (``pipeline.sharding``): pack_shards,
anchor_fractions, merge_buckets, block_factors, certify_gram / certify_partial, affinity_pairs and
merge_groups.

Arrays come from ``hypothesis.extra.numpy``, not from a drawn seed, so a failure shrinks
to a small matrix with simple entries.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.bounds import GramSketch
from pipeline.layout import offsets_of
from pipeline.sharding import (
    affinity_pairs,
    anchor_fractions,
    block_factors,
    certify_gram,
    certify_partial,
    merge_buckets,
    merge_groups,
    pack_shards,
)

from .helpers import bound_is_valid

# no deadline and no too_slow check: the suite shares two cores with Dask workers
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# entries: moderate magnitudes (the magnitude tests cover the float64 range), exact zeros
# included so that zero and rank-deficient blocks appear and shrinking ends at 0 or 1
# the kernels take blocks at their magnitude shift (pipeline.magnitude): entries of order 1
# or zero, never 1e-200 (whose squares underflow: the callers scale those first)
ENTRIES = st.one_of(st.just(0.0), st.floats(1e-6, 8.0), st.floats(-8.0, -1e-6))


def _matrix(rows, columns):
    return arrays(np.float64, (rows, columns), elements=ENTRIES)


@st.composite
def collections(draw, max_rows=7, max_blocks=8, max_width=6):
    """(data m x N, offsets, widths): blocks of widths 1..max_width in the column layout."""
    rows = draw(st.integers(1, max_rows))
    widths = np.asarray(draw(st.lists(st.integers(1, max_width), min_size=1, max_size=max_blocks)), dtype=np.int64)
    if draw(st.booleans()):  # one width for all: block_factors' batched path
        widths[:] = widths[0]
    offsets = offsets_of(widths)
    data = draw(_matrix(rows, int(offsets[-1])))
    return data, offsets, widths


def _matrices(max_rows=7, max_columns=12):
    shapes = st.tuples(st.integers(1, max_rows), st.integers(1, max_columns))
    return shapes.flatmap(lambda shape: _matrix(*shape))


def _svd_energies(a: np.ndarray) -> np.ndarray:
    return np.linalg.svd(a, compute_uv=False) ** 2 if a.size else np.zeros(0)


# ---- pack_shards ---------------------------------------------------------------------------------


@FAST
@given(arrays(np.int64, st.integers(1, 400), elements=st.integers(0, 15)), st.integers(1, 120))
def test_pack_shards_covers_keeps_anchors_together_and_balances(best_anchor, shard_size):
    shards = pack_shards(best_anchor, shard_size)
    n = best_anchor.size
    assert shards.shape == (n,) and shards.dtype == np.int64
    sizes = np.bincount(shards)
    assert sizes.sum() == n and np.all(sizes > 0)  # every block in a shard; ids 0..S-1, none empty
    # as many shards as the power of two at or above n / shard_size (at most n)
    n_target = min(1 << (max(1, -(-n // shard_size)) - 1).bit_length(), n)
    target = -(-n // n_target)
    # no shard exceeds the target by more than an eighth (pieces are at most target)
    assert sizes.max() <= target + target // 8
    # balanced: a shard is only closed when the next piece would overflow it, so any two
    # consecutive shards hold more than the target together
    assert np.all(sizes[:-1] + sizes[1:] > target + target // 8)
    # blocks of one anchor stay together unless the anchor holds more than a target's worth,
    # which is cut into at most ceil(count / target) consecutive pieces
    for anchor in np.unique(best_anchor):
        members = np.flatnonzero(best_anchor == anchor)
        used = np.unique(shards[members])
        assert len(used) <= -(-members.size // target)
        assert np.all(np.diff(used) == 1)  # consecutive shards
    # anchors are packed in order: sorted by (anchor, block), shard ids never go back
    order = np.lexsort((np.arange(n), best_anchor))
    assert np.all(np.diff(shards[order]) >= 0)


# ---- anchor_fractions ----------------------------------------------------------------------------


@FAST
@given(_matrices(max_rows=7, max_columns=9), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_anchor_fractions_are_shares_that_add_up_over_a_split_of_the_space(directions, n_anchors, seed):
    """Anchors that split R^m into orthogonal parts hold shares of every nonzero direction
    that add up to 1 (a zero direction: 0 everywhere); a direction inside an anchor has
    share 1 there."""
    rows = directions.shape[0]
    assume(n_anchors <= rows)
    basis = np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, rows)))[0]
    cuts = np.linspace(0, rows, n_anchors + 1).round().astype(np.int64)
    shares = anchor_fractions(basis, cuts, directions)
    assert shares.shape == (n_anchors, directions.shape[1]) and np.all(shares >= 0)
    nonzero = np.any(directions != 0, axis=0)
    np.testing.assert_allclose(shares.sum(axis=0)[nonzero], 1.0, rtol=1e-5)
    assert np.all(shares[:, ~nonzero] == 0)
    inside = basis[:, cuts[0] : cuts[1]] @ np.ones((cuts[1] - cuts[0], 1))
    assert abs(anchor_fractions(basis, cuts, inside)[0, 0] - 1.0) < 1e-5


def test_anchor_fractions_of_many_directions_match_float64_and_do_not_depend_on_the_others():
    """Past a few hundred directions the products run in pieces: every share still matches
    the float64 value, and a direction's shares do not depend on which others come with it."""
    rng = np.random.default_rng(3)
    rows, widths = 64, rng.integers(1, 9, size=40)
    cuts = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    anchors = np.hstack([np.linalg.qr(rng.standard_normal((rows, w)))[0] for w in widths])
    directions = rng.standard_normal((rows, 1000)) * rng.uniform(0.1, 10.0, size=1000)
    shares = anchor_fractions(anchors, cuts, directions)
    units = directions / np.linalg.norm(directions, axis=0)
    projected = (anchors.T @ units) ** 2
    expected = np.add.reduceat(projected, cuts[:-1], axis=0)
    np.testing.assert_allclose(shares, expected, rtol=1e-4, atol=1e-6)
    some = rng.permutation(1000)[:300]
    np.testing.assert_allclose(anchor_fractions(anchors, cuts, directions[:, some]), shares[:, some], rtol=1e-6, atol=0)


# ---- merge_buckets -------------------------------------------------------------------------------


@FAST
@given(st.data(), st.integers(2, 12))
def test_merge_buckets_partition_groups_that_share_a_key(data, cap):
    n = data.draw(st.integers(1, 120))
    keys = data.draw(arrays(np.int64, n, elements=st.integers(0, 6)))
    energies = data.draw(arrays(np.float64, n, elements=st.floats(0.0, 1e6, allow_nan=False)))
    buckets = merge_buckets(keys, energies, cap)
    seen = np.concatenate(buckets) if buckets else np.zeros(0, dtype=np.int64)
    assert len(seen) == len(set(seen.tolist()))  # disjoint
    for bucket in buckets:
        assert 2 <= len(bucket) <= cap and len(set(keys[bucket].tolist())) == 1
        assert np.all(np.diff(energies[bucket]) <= 0)  # strongest first
    # only groups alone in the last piece of their key are left out
    left_out = np.setdiff1d(np.arange(n), seen)
    for key in np.unique(keys):
        count = int(np.sum(keys == key))
        assert int(np.sum(keys[left_out] == key)) == (1 if count % cap == 1 else 0)


# ---- block_factors -------------------------------------------------------------------------------


@FAST
@given(collections(), st.integers(1, 7))
def test_block_factors_are_below_the_blocks_and_keep_their_top_energy(collection, width_cap):
    data, offsets, widths = collection
    rows = data.shape[0]
    factors, factor_offsets, slack = block_factors(data, offsets, width_cap)
    k = np.minimum(widths, min(width_cap, rows))
    np.testing.assert_array_equal(np.diff(factor_offsets), k)
    assert factors.shape == (rows, int(k.sum())) and slack.shape == (len(widths),) and np.all(slack >= 0)
    for i in range(len(widths)):
        a = data[:, offsets[i] : offsets[i + 1]]
        f = factors[:, factor_offsets[i] : factor_offsets[i + 1]]
        norm2 = float(np.sum(a * a))
        if widths[i] <= min(width_cap, rows):  # kept as it is, no slack
            np.testing.assert_array_equal(f, a)
            assert slack[i] == 0.0
            continue
        # F F^T <= A A^T: the difference is PSD up to the reported slack (F is within slack
        # of such a factor) and eigvalsh's own rounding
        gap = np.linalg.eigvalsh(a @ a.T - f @ f.T).min()
        norm = np.sqrt(norm2)
        assert gap >= -(2 * slack[i] * norm + slack[i] ** 2) - 64 * rows * np.finfo(float).eps * norm2
        # the energy lost is exactly the block's tail beyond its top k directions: the
        # factor's squared singular values are A's top k, up to the slack
        want = _svd_energies(a)[: k[i]]
        got = _svd_energies(f)
        assert np.all(np.abs(got - want) <= 2 * slack[i] * norm + 64 * widths[i] * np.finfo(float).eps * norm2)
        lost = norm2 - float(np.sum(f * f))
        tail = float(np.sum(_svd_energies(a)[k[i]:]))
        assert abs(lost - tail) <= 2 * slack[i] * norm + 64 * widths[i] * np.finfo(float).eps * norm2


# ---- certify_gram / certify_partial --------------------------------------------------------------


def _exact(a: np.ndarray, rank: int) -> tuple[np.ndarray, float]:
    s2 = _svd_energies(a)
    total = float(s2.sum())
    return s2, (float(np.sqrt(s2[rank:].sum() / total)) if total > 0 else 0.0)


@FAST
@given(_matrices(), st.integers(1, 6), st.floats(0.01, 0.9))
def test_certify_gram_error_is_the_svd_error_and_its_basis_meets_eps(a, rank, eps):
    rows = a.shape[0]
    cert = certify_gram(a @ a.T, rank, eps)
    s2, exact = _exact(a, rank)
    total = float(s2.sum())
    # the error is the exact one from the SVD (compared in energy: no cancellation issue)
    assert abs(cert.error**2 - exact**2) <= 1e-12 * max(rank, 1) * 16
    if total == 0.0:
        assert cert.error == 0.0 and cert.adaptive_rank == 0
        return
    if cert.error > eps:
        assert cert.adaptive_rank == 0 and cert.basis.shape == (rows, 0)
        return
    r_c = cert.adaptive_rank
    assert 0 <= r_c <= min(rank, rows) and cert.basis.shape == (rows, r_c)
    np.testing.assert_allclose(cert.basis.T @ cert.basis, np.eye(r_c), atol=1e-10)
    # the basis meets eps on the data it was computed from ...
    residual = a - cert.basis @ (cert.basis.T @ a)
    assert np.sum(residual * residual) <= eps * eps * total * (1 + 1e-9) + 1e-12 * total
    # ... and r_c is the smallest such rank (up to the 1e-9 safety margin)
    if r_c > 0:
        tail_before = float(s2[r_c - 1 :].sum())
        assert tail_before > eps * eps * (1 - 1e-6) * total - 1e-12 * total


@FAST
@given(_matrices(), st.integers(1, 6), st.floats(0.01, 0.9))
def test_certify_partial_of_columns_agrees_with_the_gram_route(a, rank, eps):
    by_gram = certify_gram(a @ a.T, rank, eps)
    by_columns = certify_partial(("columns", a), rank, eps)
    _, exact = _exact(a, rank)
    assert abs(by_columns.error**2 - exact**2) <= 1e-12 * 16 * rank
    assert abs(by_gram.error**2 - by_columns.error**2) <= 1e-12 * 32 * rank
    # both give a basis exactly when the group has energy and meets eps (away from the
    # boundary), and each basis meets eps on the data
    if abs(exact - eps) > 1e-6:
        meets = bool(np.any(a)) and exact <= eps
        assert (by_gram.adaptive_rank > 0) == (by_columns.adaptive_rank > 0) == meets
    total = float(np.sum(a * a))
    for cert in (by_gram, by_columns):
        if cert.adaptive_rank:
            residual = a - cert.basis @ (cert.basis.T @ a)
            assert np.sum(residual * residual) <= eps * eps * total * (1 + 1e-9) + 1e-12 * total


# ---- affinity_pairs and merge_groups -------------------------------------------------------------


@st.composite
def sketched_groups(draw):
    """Blocks near a shared 2-dimensional subspace (so that merges happen) plus noise, one
    group per block, with their Gram sketches."""
    rows = draw(st.integers(2, 7))
    n_blocks = draw(st.integers(2, 8))
    width = draw(st.integers(1, 3))
    rank = draw(st.integers(1, 3))
    basis = draw(_matrix(rows, 2))
    coeffs = draw(_matrix(2, n_blocks * width))
    noise = draw(_matrix(rows, n_blocks * width))
    data = basis @ coeffs + draw(st.sampled_from([0.0, 0.01, 0.3])) * noise
    blocks = [data[:, i * width : (i + 1) * width] for i in range(n_blocks)]
    assume(all(np.any(b) for b in blocks))
    sketches = [GramSketch(b, rank, oversampling=2) for b in blocks]
    return blocks, sketches, rank


@FAST
@given(sketched_groups(), st.integers(1, 4))
def test_affinity_pairs_are_unordered_distinct_and_within_neighbours(groups, neighbours):
    _, sketches, rank = groups
    pairs = affinity_pairs(sketches, rank, neighbours)
    n = len(sketches)
    assert pairs.ndim == 2 and pairs.shape[1] == 2
    assert np.all(pairs[:, 0] < pairs[:, 1]) and np.all(pairs >= 0) and np.all(pairs < n)
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)
    # every group names min(neighbours, n - 1) others, so it sits in at least that many pairs
    counts = np.bincount(pairs.ravel(), minlength=n)
    assert np.all(counts >= min(neighbours, n - 1))
    assert len(pairs) <= n * min(neighbours, n - 1)


@FAST
@given(sketched_groups(), st.floats(0.05, 0.6))
def test_merge_groups_partitions_and_every_merged_group_certifies(groups, eps):
    blocks, sketches, rank = groups
    n = len(blocks)
    merged, merged_sketches, merges = merge_groups([[i] for i in range(n)], sketches, rank=rank, eps=eps)
    assert sorted(b for g in merged for b in g) == list(range(n))
    assert merges == n - len(merged) and len(merged_sketches) == len(merged)
    for group, sketch in zip(merged, merged_sketches):
        energy = sum(float(np.sum(blocks[i] ** 2)) for i in group)
        np.testing.assert_allclose(sketch.total, energy, rtol=1e-12)
        if len(group) == 1:
            continue
        bound = sketch.error_bound()
        assert bound <= eps
        matrix = np.hstack([blocks[i] for i in group])
        _, exact = _exact(matrix, rank)
        assert bound_is_valid(bound, exact), (group, bound, exact)  # certified: exact <= bound


def test_merge_groups_merges_copies_of_one_block_into_one_group():
    block = np.outer(np.arange(1.0, 6.0), [1.0, -2.0])
    blocks = [c * block for c in (1.0, 2.0, -0.5, 3.0, 0.25)]
    sketches = [GramSketch(b, 1, oversampling=2) for b in blocks]
    merged, merged_sketches, merges = merge_groups([[i] for i in range(5)], sketches, rank=1, eps=1e-6)
    assert len(merged) == 1 and sorted(merged[0]) == list(range(5))
    assert merges == 4 and merged_sketches[0].error_bound() <= 1e-6
