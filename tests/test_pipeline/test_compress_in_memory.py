"""The in-memory compressor (the sequential mode's) shares the distributed stages' kernels
and rules: whatever grouping it is handed, no stored group is above eps, and the errors
it records are those of the stored (dtype-rounded) numbers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline
import storage
from pipeline.distributed.compress import certify_with_splits, compress_in_memory, storage_plan

from .helpers import exact_error


def _blocks(seed, n=24, rows=10, width=3, dtype=np.float64):
    rng = np.random.default_rng(seed)
    bases = [np.linalg.qr(rng.standard_normal((rows, 2)))[0] for _ in range(4)]
    return [(bases[i % 4] @ rng.standard_normal((2, width)) + 1e-3 * rng.standard_normal((rows, width))).astype(dtype)
            for i in range(n)]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 50), cuts=st.lists(st.integers(1, 23), max_size=5, unique=True),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_any_grouping_is_stored_within_eps(tmp_path_factory, seed, cuts, dtype):
    """Arbitrary groups (most far above eps: mixed subspaces) are split until certified."""
    blocks = _blocks(seed, dtype=dtype)
    root = str(tmp_path_factory.mktemp("store"))
    storage.ingest_blocks(root, "c", blocks, dtype=dtype)
    coll = storage.open_collection(root, "c")
    layout = pipeline.as_layout(coll.column_range(0, coll.n_columns), coll.offsets)
    order = np.random.default_rng(seed).permutation(len(blocks))
    groups = [g.tolist() for g in np.split(order, sorted(cuts)) if g.size]
    rank, eps = 2, 0.05
    done = compress_in_memory(coll, layout, groups, rank=rank, eps=eps, label="a", params={"rank": rank, "eps": eps})
    assert sorted(b for g in done.groups for b in g) == list(range(len(blocks)))
    artifact = storage.open_artifact(root, "c", "a")
    stored = artifact.decompress_range(0, len(blocks)).astype(np.float64)  # one read
    width = blocks[0].shape[1]
    for g, group in enumerate(done.groups):
        exact = exact_error(blocks, group, rank)
        assert abs(done.errors[g] - exact) <= 1e-6
        if len(group) > 1:
            assert exact <= eps * (1 + 1e-9)
        residual = sum(np.sum((stored[:, i * width : (i + 1) * width] - blocks[i].astype(np.float64)) ** 2) for i in group)
        energy = sum(np.sum(blocks[i].astype(np.float64) ** 2) for i in group)
        realised = np.sqrt(residual / energy)
        assert realised == pytest.approx(done.stored_errors[g], rel=1e-4, abs=1e-7)  # what is stored, rounded
        assert realised <= eps * (1 + 1e-6) + (1e-6 if dtype == np.float64 else 1e-3)
    assert len(done.groups) == len(groups) + done.splits


def test_certify_with_splits_halves_until_every_group_passes():
    calls = []

    def certify(groups):
        calls.append([list(g) for g in groups])
        return [(0.2 if len(g) > 2 else 0.01, 1, np.zeros((3, 1))) for g in groups]

    groups, results, split, splits = certify_with_splits([[0, 1, 2, 3, 4], [5, 6]], certify, eps=0.1)
    assert groups == [[0, 1], [5, 6], [2], [3, 4]]  # first halves keep their index
    assert all(r[0] <= 0.1 for r in results)
    assert split == [True, False, True, True] and splits == 2
    assert [len(c) for c in calls] == [2, 2, 2]  # only the halves are certified again


def test_storage_plan_compresses_only_when_smaller_and_within_eps():
    groups = [[0], [1, 2], [3], [4]]
    widths = np.array([4, 4, 4, 1, 4])
    errors = np.array([0.01, 0.01, 0.5, 0.0])
    ranks = np.array([1, 2, 1, 0])
    # rows 8: rank 1 of a 4-column block: 12 < 32 -> compressed; a single block above eps -> raw;
    # an all-zero group at rank 0 -> compressed (nothing to store)
    np.testing.assert_array_equal(storage_plan(groups, errors, ranks, widths, 8, 0.1), [True, True, False, True])
    assert not storage_plan([[0]], np.array([0.01]), np.array([4]), np.array([4]), 8, 0.1)[0]  # 4 * 12 > 32


def test_a_group_stored_as_it_is_keeps_its_adaptive_rank(tmp_path):
    """A one-column group is stored raw (rank 1 costs m + 1 numbers against m), yet its
    adaptive rank is 1, as the distributed certify records it: the two differ."""
    rng = np.random.default_rng(3)
    blocks = [rng.standard_normal((10, 1)) for _ in range(3)]
    storage.ingest_blocks(str(tmp_path), "c", blocks)
    coll = storage.open_collection(str(tmp_path), "c")
    layout = pipeline.as_layout(coll.column_range(0, coll.n_columns), coll.offsets)
    done = compress_in_memory(coll, layout, [[0], [1], [2]], rank=2, eps=0.1, label="a", params={})
    np.testing.assert_array_equal(done.stored_ranks, [0, 0, 0])
    np.testing.assert_array_equal(done.adaptive_ranks, [1, 1, 1])

