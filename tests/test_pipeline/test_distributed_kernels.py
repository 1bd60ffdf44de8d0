"""Kernels of the scalable variant on plain arrays: factors, rounding slack, merge
candidates, the reduction tree and the Gram partials (no Dask, fast)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import sharding
from pipeline.bounds import GramSketch
from pipeline.distributed.plan import group_ranges, labels_of
from pipeline.layout import offsets_of
from pipeline.sharding import (
    block_factors,
    combine_partials,
    gram_partials,
    group_anchor_keys,
    merge_buckets,
    merge_groups,
    pack_shards,
    partial_gram,
    round_factors,
    unround_factors,
)
from pipeline.spectra import squared_singular_values, top_energy

from .helpers import ENERGY_REL_TOL


def _loewner_below(small: np.ndarray, big: np.ndarray) -> bool:
    gap = np.linalg.eigvalsh(big - small)
    return gap.min() >= -1e-10 * max(1.0, np.abs(big).max())


@pytest.mark.parametrize("rows,width,cap", [(5, 7, 9), (1, 3, 4), (1, 1, 4), (20, 4, 6), (20, 30, 6), (6, 6, 6)])
def test_block_factors_are_below_the_blocks_for_any_shape(rows, width, cap):
    """F F^T <= A A^T block by block, exact for blocks that fit, including m < n <= cap and m = 1."""
    rng = np.random.default_rng(rows * 100 + width)
    data = rng.standard_normal((rows, 3 * width))
    offsets = np.arange(4) * width
    factors, factor_offsets, slack = block_factors(data, offsets, cap)
    assert np.all(np.diff(factor_offsets) <= min(cap, rows))
    for i in range(3):
        a = data[:, offsets[i] : offsets[i + 1]]
        f = factors[:, factor_offsets[i] : factor_offsets[i + 1]]
        assert _loewner_below(f @ f.T, a @ a.T)
        assert slack[i] < 1e-9 * np.linalg.norm(a)
        # the factor keeps the block's top singular directions: its energy is E_k(A)
        s = np.linalg.svd(a, compute_uv=False)
        np.testing.assert_allclose(np.sum(f * f), np.sum(s[: f.shape[1]] ** 2), rtol=1e-10)
        if width <= min(cap, rows):
            np.testing.assert_array_equal(f, a)


@settings(max_examples=40, deadline=None)
@given(st.integers(-300, 300), st.integers(1, 12), st.integers(1, 6), st.integers(0, 10_000))
def test_rounded_factors_with_their_slack_still_bound_the_top_energy(exponent, rows, width, seed):
    """sqrt(E_r) is a norm: the energy certified on float32 factors, minus the measured
    rounding drop, never exceeds the exact top energy, at any magnitude float64 holds."""
    rng = np.random.default_rng(seed)
    scale = 10.0**exponent
    factors = rng.standard_normal((rows, 3 * width)) * scale * rng.lognormal(0, 2, size=3 * width)
    offsets = np.arange(4) * width
    scaled, exponents, dropped = round_factors(factors, offsets)
    assert scaled.dtype == np.float32 and np.all(np.isfinite(scaled))
    recovered = unround_factors(scaled, exponents, offsets)
    # compare in a scale where squares are representable
    unit = scale if scale > 0 else 1.0
    delta = (recovered - factors) / unit
    for i in range(3):
        true = np.linalg.norm(delta[:, offsets[i] : offsets[i + 1]])
        assert dropped[i] / unit >= true * (1 - 1e-12)
    rank = max(1, rows // 2)
    exact = top_energy(squared_singular_values(factors / unit), rank)
    loaded = top_energy(squared_singular_values(recovered / unit), rank)
    slack = np.sqrt(np.sum((dropped / unit) ** 2))
    assert max(np.sqrt(loaded) - slack, 0.0) ** 2 <= exact * (1 + ENERGY_REL_TOL)


def test_gram_partials_sum_to_the_exact_group_grams_and_inputs_stay_untouched():
    rng = np.random.default_rng(0)
    rows = 10
    widths = rng.integers(1, 4, size=60)
    offsets = offsets_of(widths)
    data = rng.standard_normal((rows, int(offsets[-1])))
    labels = rng.integers(-1, 5, size=60)
    cuts = [0, 17, 30, 31, 60]
    partials = [
        gram_partials(data[:, offsets[a] : offsets[b]], offsets[a : b + 1] - offsets[a], labels[a:b])
        for a, b in zip(cuts[:-1], cuts[1:])
    ]
    snapshot = [{k: (kind, v.copy()) for k, (kind, v) in p.items()} for p in partials]
    total = partials[0]
    for part in partials[1:]:
        total = combine_partials(total, part)
    for before, after in zip(snapshot, partials):  # a retried task must see the same inputs
        assert all(np.array_equal(before[k][1], after[k][1]) for k in before)
    for label in range(5):
        members = np.flatnonzero(labels == label)
        x = np.hstack([data[:, offsets[i] : offsets[i + 1]] for i in members])
        np.testing.assert_allclose(partial_gram(total[label]), x @ x.T, rtol=1e-12, atol=1e-12)


def test_group_anchor_keys_follow_the_energy_vote():
    labels = np.array([0, 0, 0, 1, 1, -1, 2])
    anchors = np.array([[3, 1], [3, 2], [1, 3], [0, 4], [4, 0], [9, 9], [5, 5]])
    norms2 = np.array([1.0, 1.0, 5.0, 2.0, 1.0, 100.0, 1.0])
    keys = group_anchor_keys(labels, anchors, norms2, 3)
    # group 0: anchor 1 gets 0.5 + 5 = 5.5, anchor 3 gets 1 + 1 + 2.5 = 4.5
    np.testing.assert_array_equal(keys[0], [1, 3])
    np.testing.assert_array_equal(keys[1], [0, 4])  # 2 + 0.5 against 1 + 1: anchor 0 first
    np.testing.assert_array_equal(keys[2], [5, 5])


def test_merge_buckets_are_disjoint_bounded_and_share_a_key():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 5, size=500)
    keys[:200] = 2  # one crowded anchor
    energies = rng.random(500)
    buckets = merge_buckets(keys, energies, cap=16)
    seen = np.concatenate(buckets)
    assert len(seen) == len(set(seen.tolist()))
    for bucket in buckets:
        assert 2 <= len(bucket) <= 16 and len(set(keys[bucket].tolist())) == 1
        assert np.all(np.diff(energies[bucket]) <= 0)  # strongest first


def test_pack_shards_keeps_anchors_together_and_balances():
    rng = np.random.default_rng(2)
    best = rng.integers(0, 50, size=4100)
    shards = pack_shards(best, 1000)
    sizes = np.bincount(shards)
    # ceil(4100 / 1000) = 5 shards' worth, rounded up to a power of two: 8 of about 513
    assert len(sizes) == 8 and sizes.max() <= 513 + 513 // 8
    for anchor in range(50):
        assert len(np.unique(shards[best == anchor])) == 1


def _sketches(rng, n, rows=12, rank=3):
    basis = np.linalg.qr(rng.standard_normal((rows, 2)))[0]
    out = []
    for i in range(n):
        block = basis @ rng.standard_normal((2, 3)) + (0.05 if i % 3 else 0.6) * rng.standard_normal((rows, 3))
        out.append(GramSketch(block, rank, oversampling=2))
    return out


def test_the_prefilters_never_change_which_merges_happen(monkeypatch):
    rng = np.random.default_rng(3)
    sketches = _sketches(rng, 30)
    groups = [[i] for i in range(30)]
    with_filter = merge_groups(groups, sketches, rank=3, eps=0.2)
    monkeypatch.setattr(sharding, "_merge_cannot_certify", lambda s, pairs, r, e: np.zeros(len(pairs), dtype=bool))
    monkeypatch.setattr(sharding, "_union_cannot_certify", lambda a, b, r, e: False)
    without = merge_groups(groups, sketches, rank=3, eps=0.2)
    assert with_filter[0] == without[0] and with_filter[2] == without[2] > 0
    for a, b in zip(with_filter[1], without[1]):
        assert a.error_bound() == b.error_bound() <= 0.2


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.6))
def test_the_union_spectrum_test_only_rejects_merges_that_fail(seed, eps):
    rng = np.random.default_rng(seed)
    a, b = _sketches(rng, 2)
    if sharding._union_cannot_certify(a, b, 3, eps):
        assert a.merge(b).error_bound() > eps


def test_group_ranges_respect_budget_and_count():
    ranges = group_ranges(np.array([5, 5, 5, 20, 1, 1, 1, 1]), budget=10, max_groups=3)
    assert ranges.tolist() == [0, 0, 1, 2, 3, 3, 3, 4]
    assert labels_of([[2, 0], [1]], 4).tolist() == [0, 1, 0, -1]


@pytest.mark.parametrize("columns", [3, 40])
def test_certify_partial_matches_the_exact_spectrum_either_way(columns):
    from pipeline.sharding import certify_partial
    from pipeline.spectra import relative_error

    rng = np.random.default_rng(columns)
    x = rng.standard_normal((20, 3)) @ rng.standard_normal((3, columns)) + 0.05 * rng.standard_normal((20, columns))
    for part in (("cols", x), ("upper", np.triu(x @ x.T))):
        cert = certify_partial(part, 4, 0.3)
        assert abs(cert.error**2 - relative_error(x, 4) ** 2) <= 1e-12
        basis = cert.basis
        assert basis.shape[1] == cert.adaptive_rank <= 4
        residual = x - basis @ (basis.T @ x)
        assert np.linalg.norm(residual) <= 0.3 * np.linalg.norm(x)


def test_group_sketches_cover_patience_singletons():
    """After ``patience`` groups without a merge the greedy returns Weyl states for the
    leftover blocks; anchors and merges still need a sketch of every group."""
    from pipeline.greedy import check_params, greedy_groups
    from pipeline.layout import as_layout
    from pipeline.sharding import group_sketches

    rng = np.random.default_rng(7)
    layout = as_layout([rng.standard_normal((10, 3)) for _ in range(30)])  # pure noise: nothing merges
    params = check_params(2, 0.05, "approximate", "residual", 1, 2, 1e-12)
    clusters, bounds, states = greedy_groups(layout, **params)
    assert any(not isinstance(s, GramSketch) for s in states)
    sketches = group_sketches(layout, clusters, states, 2, 2, 1e-12)
    assert len(sketches) == len(clusters) and all(isinstance(s, GramSketch) for s in sketches)
    for group, sketch in zip(clusters, sketches):
        assert sketch.total == pytest.approx(float(layout.norms2[group].sum()))


def test_leading_directions_are_each_blocks_top_singular_direction():
    from pipeline.sharding import leading_directions

    rng = np.random.default_rng(8)
    factors = rng.standard_normal((10, 12))
    offsets = np.array([0, 1, 5, 9, 12])
    lead = leading_directions(factors, offsets)
    for i in range(4):
        u, s, _ = np.linalg.svd(factors[:, offsets[i] : offsets[i + 1]], full_matrices=False)
        assert abs(abs(lead[:, i] @ u[:, 0]) - s[0]) <= 1e-10 * s[0]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8), st.floats(0.0, 1.0))
def test_the_cheap_union_bound_is_never_below_the_exact_top_energy(seed, rank, shared):
    """The bound that skips the eigen-solve (top of both spectra + sqrt(r) ||X||_F) is
    at least the exact top-r energy of the union, for unrelated, partly shared and equal
    heads alike."""
    rng = np.random.default_rng(seed)
    rows, k = 24, 6
    qa = np.linalg.qr(rng.standard_normal((rows, k)))[0]
    other = np.linalg.qr(rng.standard_normal((rows, k)))[0]
    qb = np.linalg.qr(shared * qa + (1.0 - shared) * other)[0]
    la, lb = np.sort(rng.exponential(size=k))[::-1], np.sort(rng.exponential(size=k))[::-1]
    cross = (np.sqrt(la)[:, None] * (qa.T @ qb)) * np.sqrt(lb)[None, :]
    exact = np.linalg.eigvalsh(np.block([[np.diag(la), cross], [cross.T, np.diag(lb)]]))[::-1][:rank].sum()
    assert sharding._union_head_bound(la, lb, cross, rank) >= exact


def test_unrelated_groups_are_rejected_without_an_eigen_solve(monkeypatch):
    """Sketches of unrelated random columns (as single weight columns are) never reach the
    eigen-solve, and the merge they would make indeed fails."""
    rng = np.random.default_rng(5)
    a, b = (GramSketch(rng.standard_normal((200, 20)), 8, oversampling=2) for _ in range(2))
    assert a.merge(b).error_bound() > 0.2
    monkeypatch.setattr(np.linalg, "eigvalsh", lambda *args, **kw: pytest.fail("eigen-solve reached"))
    assert sharding._union_cannot_certify(a, b, 8, 0.2)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.5, 0.999))
def test_dominant_factors_keep_the_fewest_strongest_directions(seed, share):
    """Masked blocks keep the fewest of their strongest directions holding >= share of
    their energy (and no more than that: one fewer holds less); the others are unchanged."""
    from pipeline.layout import offsets_of as offsets_from
    from pipeline.sharding import dominant_factors

    rng = np.random.default_rng(seed)
    widths = rng.integers(1, 7, size=9)
    offsets = offsets_from(widths)
    factors = rng.standard_normal((10, int(offsets[-1]))) * rng.exponential(size=int(offsets[-1]))
    which = rng.random(9) < 0.6
    out, out_offsets = dominant_factors(factors, offsets, share, which)
    for i in range(9):
        block = factors[:, offsets[i] : offsets[i + 1]]
        kept = out[:, out_offsets[i] : out_offsets[i + 1]]
        if not which[i]:
            np.testing.assert_array_equal(kept, block)
            continue
        spectrum = np.sort(np.linalg.svd(block, compute_uv=False) ** 2)[::-1]
        t = kept.shape[1]
        assert np.sum(kept**2) >= share * spectrum.sum() * (1 - 1e-9)
        assert t == 1 or spectrum[: t - 1].sum() < share * spectrum.sum() * (1 + 1e-9)
        np.testing.assert_allclose(np.linalg.svd(kept, compute_uv=False) ** 2, spectrum[:t], rtol=1e-8, atol=1e-10)


def test_pack_shards_keeps_near_copies_together_when_it_cuts_an_anchor():
    # one anchor of 4,000 blocks: the second half repeats the first (a later checkpoint of
    # the same weights), so block i and i + 2,000 share their second anchor and share there
    n = 4000
    twin = np.arange(n) % (n // 2)
    second, share = twin % 37, (twin * 0.61803) % 1.0
    by_index = pack_shards(np.zeros(n, dtype=np.int64), 1000)
    assert np.mean(by_index[: n // 2] == by_index[n // 2 :]) == 0.0  # block order splits every pair
    shards = pack_shards(np.zeros(n, dtype=np.int64), 1000, within=(second, -share))
    assert np.bincount(shards).max() <= 1000 + 1000 // 8  # still balanced
    together = np.mean(shards[: n // 2] == shards[n // 2 :])
    assert together >= 0.99  # only pairs at a cut are apart
