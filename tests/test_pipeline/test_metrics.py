import numpy as np
import pytest

import pipeline
from pipeline.baselines import kmeans_clustering, random_clustering
from pipeline.metrics import adaptive_ranks, compression_ratio, group_errors, summarize
from pipeline.spectra import adaptive_rank, relative_error, squared_singular_values
from pipeline.study import STUDY_COLUMNS, error_estimation_study
from pipeline.synthetic import union_of_subspaces

from .helpers import bound_is_valid, exact_error


def test_compression_ratio_matches_the_paper_formula():
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((10, w)) for w in (2, 3, 30, 4)]
    clusters = [[0, 1, 3], [2]]
    # group of 3: N_C = 9, min(r(m+N_C), m N_C) = min(4*19, 90) = 76; singleton: m*30 = 300
    assert compression_ratio(blocks, clusters, 4) == pytest.approx(10 * 39 / (76 + 300))
    # rank so large that the low-rank form is bigger: the group costs m N_C
    assert compression_ratio(blocks, clusters, 9) == pytest.approx(10 * 39 / (90 + 300))


def test_adaptive_rank_is_the_smallest_rank_meeting_eps():
    s2 = np.array([100.0, 10.0, 1.0, 0.1])
    total = s2.sum()
    for eps in (0.05, 0.1, 0.3, 0.5, 0.99):
        r = adaptive_rank(s2, eps)
        assert np.sum(s2[r:]) <= eps**2 * total
        assert r == 0 or np.sum(s2[r - 1 :]) > eps**2 * total
    assert adaptive_rank(np.zeros(3), 0.1) == 0


def test_spectra_agree_between_svd_and_gram_routes():
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((8, 200))
    s2 = squared_singular_values(wide)
    np.testing.assert_allclose(s2, np.linalg.svd(wide, compute_uv=False) ** 2, rtol=1e-10)
    assert relative_error(wide, 3) == pytest.approx(exact_error([wide], [0], 3), rel=1e-10)


def test_summary_of_certified_clustering_has_no_violation():
    layout, _ = union_of_subspaces(600, rows=32, width=3, blocks_per_subspace=60, noise=0.02, seed=2)
    result = pipeline.cluster(layout, rank=8, eps=0.05)
    summary = summarize(layout, result.clusters, rank=8, eps=0.05)
    assert summary.violations == 0
    assert summary.max_error <= 0.05
    assert np.all(summary.ranks <= 8)
    # per-group adaptive ranks can only lower the cost
    assert summary.compression_ratio_adaptive >= summary.compression_ratio - 1e-12
    errors = group_errors(layout, result.clusters, 8)
    for group, error, bound in zip(result.clusters, errors, result.bounds):
        assert bound_is_valid(bound, error)
    np.testing.assert_array_equal(adaptive_ranks(layout, result.clusters, 0.05), summary.ranks)


def test_random_baseline_is_a_seeded_round_robin_partition():
    a = random_clustering(103, 10, seed=4)
    b = random_clustering(103, 10, seed=4)
    assert a.clusters == b.clusters
    assert sorted(len(g) for g in a.clusters) == [10] * 7 + [11] * 3
    assert sorted(i for g in a.clusters for i in g) == list(range(103))
    assert random_clustering(103, 10, seed=5).clusters != a.clusters
    with pytest.raises(ValueError, match="n_clusters"):
        random_clustering(5, 6)


def test_kmeans_baseline_recovers_well_separated_blocks_and_needs_equal_shapes():
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((3, 6, 2)) * 10
    blocks = [centers[i % 3] + 0.01 * rng.standard_normal((6, 2)) for i in range(30)]
    result = kmeans_clustering(blocks, 3, seed=0)
    assert sorted(sorted(g) for g in result.clusters) == [list(range(k, 30, 3)) for k in range(3)]
    with pytest.raises(ValueError, match="block 1: k-means needs equal-shape blocks"):
        kmeans_clustering([np.ones((6, 2)), np.ones((6, 3))], 1)


def test_certified_clustering_beats_random_groups_on_structured_data():
    layout, _ = union_of_subspaces(400, rows=32, width=2, blocks_per_subspace=50, noise=0.01, seed=6)
    result = pipeline.cluster(layout, rank=8, eps=0.05)
    ours = summarize(layout, result.clusters, rank=8, eps=0.05)
    baseline = random_clustering(layout.n_blocks, result.n_groups, seed=0)
    theirs = summarize(layout, baseline.clusters, rank=8, eps=0.05)
    assert theirs.violations > 0
    assert ours.compression_ratio_adaptive > theirs.compression_ratio_adaptive


def test_study_rows_hold_valid_bounds_for_every_method_and_order():
    layout, _ = union_of_subspaces(120, rows=20, width=3, blocks_per_subspace=20, noise=0.05, seed=7)
    rows = error_estimation_study(layout, rank=5, sizes=range(2, 11, 4), trials=3, seed=1)
    assert len(rows) == 9
    assert [row["size"] for row in rows] == [2, 2, 2, 6, 6, 6, 10, 10, 10]
    for row in rows:
        assert set(row) == set(STUDY_COLUMNS)
        for name in STUDY_COLUMNS[3:]:
            assert bound_is_valid(row[name], row["exact"]), (name, row)
        # the sketch is never looser than the seed bound here
        assert row["approximate_residual"] <= row["max_norm"] + 1e-12
    assert rows == error_estimation_study(layout, rank=5, sizes=range(2, 11, 4), trials=3, seed=1)
    with pytest.raises(ValueError, match="group size 500"):
        error_estimation_study(layout, rank=5, sizes=[500])
