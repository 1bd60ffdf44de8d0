"""The guarantee at every finite magnitude (pipeline.magnitude): blocks near 1e-300 or
1e300 in float64, 1e-30 .. 1e30 in float32, and mixtures of them in one collection.

Before the magnitude shifts, squared norms of 1e-200 blocks underflowed to 0: different
subspaces were put in one group, certified at error 0 and stored as zeros.
"""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pipeline
from pipeline.magnitude import (
    BAND_BITS,
    add_scaled_norm2,
    band_pure,
    block_shifts,
    common_shift,
    group_shifts,
    residual_norm2,
    scaled_norm2,
    scaled_ratio,
    shifts_of_max,
)

from .helpers import exact_error

RANK, EPS = 3, 0.1


def _blocks(n_subspaces=4, per_subspace=6, rows=16, width=2, seed=0):
    """Blocks from rank-2 subspaces with a little noise (entries of order 1)."""
    rng = np.random.default_rng(seed)
    bases = [np.linalg.qr(rng.standard_normal((rows, 2)))[0] for _ in range(n_subspaces)]
    out = []
    for i in range(n_subspaces * per_subspace):
        block = bases[i % n_subspaces] @ rng.standard_normal((2, width)) + 1e-3 * rng.standard_normal((rows, width))
        out.append(block)
    return out


def _check_guarantee(blocks, result, rank=RANK, eps=EPS):
    assert sorted(b for g in result.clusters for b in g) == list(range(len(blocks)))
    for group in result.clusters:
        if len(group) > 1:
            assert exact_error(blocks, group, rank) <= eps * (1 + 1e-9), group


@pytest.mark.parametrize("scale", [1e-200, 1e-300, 5e-324 * 2**60, 1e300, 1.5e307])
def test_the_issues_example_tiny_and_huge_blocks_keep_their_groups(scale):
    """Three or more subspaces at 1e-200 used to form one group at 'error 0'."""
    blocks = _blocks()
    plain = pipeline.cluster(blocks, rank=RANK, eps=EPS)
    scaled_blocks = [b * scale for b in blocks]
    result = pipeline.cluster(scaled_blocks, rank=RANK, eps=EPS)
    assert result.n_groups >= 4  # four different subspaces can never share a rank-3 group
    _check_guarantee(scaled_blocks, result)
    assert result.n_groups == plain.n_groups


@settings(max_examples=25, deadline=None)
@given(exponent=st.integers(-990, 1000), seed=st.integers(0, 3))
@example(exponent=398, seed=1)  # a band edge among the blocks (found by hypothesis)
@example(exponent=-402, seed=1)
@example(exponent=0, seed=2)
def test_power_of_two_scaling_changes_no_group(exponent, seed):
    """2^k A is clustered like A when one band holds all of 2^k A: the shifts are exact, so
    the decisions are the same and the bounds agree in energy (bound^2) to rounding. When
    a band edge falls among its blocks (k near +-400, then every 800), blocks on two sides
    never share a group, and the guarantee holds."""
    blocks = _blocks(seed=seed)
    scaled_blocks = [np.ldexp(b, exponent) for b in blocks]
    shifts = shifts_of_max(np.array([np.abs(b).max() for b in scaled_blocks]))
    scaled = pipeline.cluster(scaled_blocks, rank=RANK, eps=EPS)
    if np.unique(shifts).size > 1:
        assert all(np.unique(shifts[g]).size == 1 for g in scaled.clusters)
        _check_guarantee(scaled_blocks, scaled)
        return
    plain = pipeline.cluster(blocks, rank=RANK, eps=EPS)
    assert scaled.clusters == plain.clusters
    np.testing.assert_allclose(scaled.bounds**2, plain.bounds**2, rtol=0, atol=1e-12)



@settings(max_examples=25, deadline=None)
@given(exponents=st.lists(st.integers(-300, 300), min_size=24, max_size=24), method=st.sampled_from(
    ["approximate", "residuals", "max_norm"]))
def test_guarantee_with_mixed_magnitudes_float64(exponents, method):
    blocks = [b * 10.0**e for b, e in zip(_blocks(), exponents)]
    result = pipeline.cluster(blocks, rank=RANK, eps=EPS, method=method)
    _check_guarantee(blocks, result)
    assert np.all(result.bounds <= EPS)


@settings(max_examples=20, deadline=None)
@given(exponents=st.lists(st.integers(-30, 30), min_size=24, max_size=24))
def test_guarantee_with_mixed_magnitudes_float32(exponents):
    blocks = [(b * 10.0**e).astype(np.float32) for b, e in zip(_blocks(), exponents)]
    assert all(np.isfinite(b).all() for b in blocks)
    result = pipeline.cluster(blocks, rank=RANK, eps=EPS)
    _check_guarantee(blocks, result)


def test_groups_never_mix_magnitude_bands():
    blocks = _blocks()
    tiny = [b * 2.0**-1000 for b in blocks]  # shift -800
    mixed = blocks + tiny
    result = pipeline.cluster(mixed, rank=RANK, eps=EPS)
    layout = pipeline.as_layout(mixed)
    shifts = layout.block_shifts()
    assert set(shifts.tolist()) == {0, -BAND_BITS}
    for group in result.clusters:
        assert len(set(shifts[group].tolist())) == 1
    _check_guarantee(mixed, result)


def test_shift_zero_for_ordinary_and_float32_data():
    """Nothing is scaled unless magnitudes are extreme: results stay bit-identical."""
    data = np.array([[1.0, 1.99 * 2.0**398, -(2.0**-401), 0.0]])
    assert block_shifts(data, np.arange(5)).tolist() == [0, 0, 0, 0]
    f32 = np.array([[np.finfo(np.float32).max, np.finfo(np.float32).smallest_subnormal]], dtype=np.float32)
    assert block_shifts(f32, np.arange(3)).tolist() == [0, 0]
    assert not pipeline.as_layout([np.ones((3, 2))]).scaled
    extreme = np.array([[2.0**400, 2.0**-402, 1e-320, np.finfo(np.float64).max]])
    assert block_shifts(extreme, np.arange(5)).tolist() == [BAND_BITS, -BAND_BITS, -BAND_BITS, BAND_BITS]


@pytest.mark.parametrize("values", [
    np.array([np.finfo(np.float32).max, np.finfo(np.float32).smallest_subnormal, np.inf, -np.inf, np.nan, 0.0],
             dtype=np.float32),
    np.array([np.finfo(np.float16).max, np.finfo(np.float16).smallest_subnormal, 0.0], dtype=np.float16),
    np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min, 0], dtype=np.int64),
    np.array([np.iinfo(np.uint64).max, 0], dtype=np.uint64),
])
def test_narrow_dtypes_take_shift_zero_without_a_pass_and_agree_with_float64(values):
    data = values.reshape(1, -1)
    offsets = np.arange(data.shape[1] + 1)
    assert block_shifts(data, offsets).tolist() == [0] * data.shape[1]
    with np.errstate(invalid="ignore"):
        assert block_shifts(data.astype(np.float64), offsets).tolist() == [0] * data.shape[1]


def test_norms_of_pieces_add_up_to_the_blocks_norm():
    rng = np.random.default_rng(1)
    block = rng.standard_normal((5, 6)) * 1e-250
    block[:, 2:4] = 0.0
    block[:, 4:] *= 1e200  # pieces with different shifts
    total = (None, 0.0)
    for a in range(0, 6, 2):
        total = add_scaled_norm2(total, scaled_norm2(block[:, a:a + 2]))
    whole = scaled_norm2(block)
    assert total[0] == whole[0]
    assert total[1] == pytest.approx(whole[1], rel=1e-12)
    assert scaled_norm2(np.zeros((3, 2))) == (None, 0.0)


def test_relative_residual_of_huge_blocks_does_not_overflow():
    a = np.full((4, 3), 1.5e308)
    b = a * (1 - 1e-3)
    r, n = residual_norm2(a, -b)  # a - (-b) overflows in plain arithmetic
    assert np.isfinite(r[1]) and np.isfinite(n[1])
    assert np.sqrt(scaled_ratio(r, n)) == pytest.approx(2 - 1e-3, rel=1e-12)


def test_band_pure_refines_keys_only_where_shifts_differ():
    keys = np.array([0, 0, 1, 1])
    assert band_pure(keys, np.zeros(4, dtype=np.int64)) is not None
    np.testing.assert_array_equal(band_pure(keys, np.zeros(4, dtype=np.int64)), keys)
    refined = band_pure(keys, np.array([0, 800, 0, 0]))
    assert refined[0] != refined[1] and refined[2] == refined[3] and refined[0] != refined[2]


@settings(max_examples=40, deadline=None)
@given(shifts=st.lists(st.sampled_from([-800, 0, 800, 1600]), min_size=1, max_size=12), data=st.data())
def test_group_shifts_is_common_shift_of_every_group(shifts, data):
    shifts = np.array(shifts)
    labels = data.draw(st.lists(st.integers(0, 4), min_size=len(shifts), max_size=len(shifts)))
    groups = [[i for i, g in enumerate(labels) if g == k] for k in range(5)]  # some may be empty
    np.testing.assert_array_equal(group_shifts(shifts, groups), [common_shift(shifts[g]) for g in groups])

