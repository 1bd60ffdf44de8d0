"""Magnitude bands: exact power-of-two scaling that keeps every squared norm finite.

In float64 the squared norm of a block with entries near 1e-200 underflows to 0 and one
with entries near 1e300 overflows to inf. Either silently breaks the guarantee: a group
of zero-energy blocks "certifies" at error 0 whatever its blocks are. LAPACK's ``nrm2``
avoids this by scaling; here the scaling is chosen once per block and kept by every
computation on it.

Every block ``A_i`` gets a *shift* ``s_i``, a multiple of :data:`BAND_BITS`, from the binary
exponent ``e_i`` of its largest entry (``max |A_i| in [2^(e_i - 1), 2^e_i)``)::

    s_i = BAND_BITS * floor((e_i + BAND_BITS / 2) / BAND_BITS)

and numerics work on ``2^-s_i A_i``, whose largest entry lies in [2^-401, 2^399). Its
squares and their sums (up to 2^40 terms) stay normal floats, far from over- and
underflow. Multiplying by a power of two is exact, so relative errors and every decision
taken on scaled blocks are those of the blocks themselves.

Blocks with different shifts never share a group (a group's relative error is
scale-free only under one common scale), which costs nothing in practice: shifts differ
only between blocks on two sides of a band edge (about 2^±400 = 1e±120, then every 2^800). Every float32 value, and every float64
block whose largest entry lies in [2^-401, 2^399), has shift 0: for such collections
nothing is scaled and every result is bit-identical to unscaled arithmetic.

Entries more than about 2^-670 below their block's largest entry may underflow to zero
in scaled units. Their share of the block's energy is below 2^-1300, far under any eps
the parameters accept, so certified bounds are unaffected; data stored as it is (raw)
is always written from the unscaled original.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BAND_BITS", "block_shifts", "shifts_of_max", "scale_blocks", "column_shifts", "common_shift", "rescale",
    "scaled_norm2", "add_scaled_norm2", "own_shift", "at_own_shift", "scaled_ratio", "residual_norm2", "band_pure",
    "group_norms2", "group_scaled_sums", "group_shifts", "residual_shifts",
]

BAND_BITS = 800


def block_shifts(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Shift ``s_i`` (int64, a multiple of :data:`BAND_BITS`) of every block of a column layout.

    ``data`` holds the blocks side by side and block ``i`` is
    ``data[:, offsets[i]:offsets[i + 1]]``; all-zero blocks get shift 0.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n_blocks = len(offsets) - 1
    if n_blocks <= 0 or data.size == 0 or _always_band_zero(data.dtype):
        return np.zeros(max(n_blocks, 0), dtype=np.int64)
    column_max = np.max(np.abs(data), axis=0).astype(np.float64, copy=False)
    block_max = np.maximum.reduceat(column_max, offsets[:-1])
    return shifts_of_max(block_max)


def _always_band_zero(dtype: np.dtype) -> bool:
    """Whether every value of ``dtype`` (finite or not) has shift 0: floats of at most 32
    bits (largest 2^128, smallest 2^-149) and integers of at most 64 bits. Their blocks
    need no pass over the data to find it (a scan batch of float32 saves about 8 ms in 450)."""
    return dtype.kind in "biu" or (dtype.kind == "f" and dtype.itemsize <= 4)


def shifts_of_max(largest: np.ndarray | float) -> np.ndarray:
    """Shifts for blocks whose largest absolute entries are ``largest``."""
    _, exponents = np.frexp(np.asarray(largest, dtype=np.float64))
    exponents = np.where(np.asarray(largest) > 0, exponents, 0).astype(np.int64)
    return BAND_BITS * np.floor_divide(exponents + BAND_BITS // 2, BAND_BITS)


def column_shifts(shifts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-column shifts of a layout from per-block ``shifts``."""
    return np.repeat(np.asarray(shifts, dtype=np.int64), np.diff(np.asarray(offsets, dtype=np.int64)))


def scale_blocks(data: np.ndarray, offsets: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``2^-s_i A_i`` for every block, in float64 (``data`` itself, as float64, when all
    shifts are 0)."""
    return rescale(data, -column_shifts(shifts, offsets)[None, :])


def common_shift(shifts: np.ndarray) -> int:
    """The shift one group's computations use: the largest of its blocks' shifts (blocks
    with a smaller one contribute less than 2^-1000 of the group's energy)."""
    shifts = np.asarray(shifts, dtype=np.int64)
    return int(shifts.max()) if shifts.size else 0


def rescale(x: np.ndarray, exponent: int | np.ndarray) -> np.ndarray:
    """``2^exponent x`` (float64; ``exponent`` broadcasts against ``x``, e.g. one per
    column), exact up to over- or underflow; ``x`` unchanged when 0.

    A product with the power of two: exact, and correctly rounded where it lands among
    subnormals, as ``ldexp`` is, but about 8x faster than a broadcast ``ldexp``, which
    stays the route when some 2^exponent is not itself a normal float."""
    x = np.asarray(x, dtype=np.float64)
    exponent = np.asarray(exponent, dtype=np.int64)
    if not np.any(exponent):
        return x
    if np.abs(exponent).max() > 1000:
        return np.ldexp(x, exponent.astype(np.int32))
    return x * np.ldexp(1.0, exponent)


def scaled_norm2(block: np.ndarray) -> tuple[int | None, float]:
    """``(s, ||2^-s A||_F^2)`` of one block or piece of a block at its own shift ``s``;
    ``(None, 0.0)`` for an all-zero or empty one (it sets no shift)."""
    block = np.asarray(block, dtype=np.float64)
    if not np.any(block):
        return None, 0.0
    shift = own_shift(block)
    scaled = rescale(block, -shift)
    return shift, float(np.einsum("ij,ij->", scaled, scaled))


def add_scaled_norm2(a: tuple[int | None, float], b: tuple[int | None, float]) -> tuple[int | None, float]:
    """Sum of two squared norms given as ``(shift, value)`` pairs (see :func:`scaled_norm2`),
    at the larger shift: pieces of one block add up to the block's own scaled norm.
    Values may also be arrays of squares, such as Gram matrices ``2^-2s X X^T``."""
    (sa, na), (sb, nb) = a, b
    if sa is None:
        return b
    if sb is None:
        return a
    top = max(sa, sb)
    total = np.ldexp(na, 2 * (sa - top)) + np.ldexp(nb, 2 * (sb - top))
    return top, (float(total) if np.ndim(total) == 0 else total)


def own_shift(x: np.ndarray) -> int:
    """The shift of an array taken as one block (0 when all zero)."""
    largest = float(np.max(np.abs(x), initial=0.0)) if np.size(x) else 0.0
    return int(shifts_of_max(largest)) if largest > 0 else 0


def at_own_shift(x: np.ndarray) -> np.ndarray:
    """``2^-s x`` (float64) at the array's own shift: its spectrum, relative errors and
    adaptive ranks without under- or overflow (``x`` as float64 when ``s = 0``)."""
    return rescale(x, -own_shift(x))


def band_pure(keys: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Dense keys that equal ``keys`` refined by ``shifts``: items with different shifts
    never share a key (``keys`` itself when there is one shift). Deterministic."""
    keys, shifts = np.asarray(keys, dtype=np.int64), np.asarray(shifts, dtype=np.int64)
    if shifts.size == 0 or np.all(shifts == shifts[0]):
        return keys
    pairs = np.stack([keys, shifts], axis=1)
    return np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


#: Shift that zero blocks take in :func:`group_scaled_sums`: below every real one, so a zero
#: block never raises its group's common shift (within int32 for ``np.ldexp``).
_NO_SHIFT = -(10**6)


def group_scaled_sums(values: np.ndarray, shifts: np.ndarray, labels: np.ndarray,
                      n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group, its common shift S_g (the largest of its members', :func:`common_shift`)
    and the sum of its members' ``values`` (squares at their own shifts) brought to S_g:
    one pass over the blocks, no loop over groups. Members with shift ``_NO_SHIFT`` (zero
    blocks) set no shift; a group of only such members gets S_g = 0."""
    values, shifts = np.asarray(values, dtype=np.float64), np.asarray(shifts, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    common = _largest_per_group(shifts, labels, n_groups)
    brought = np.ldexp(values, (2 * (shifts - common[labels])).astype(np.int32))
    sums = np.bincount(labels, weights=brought, minlength=n_groups)
    return np.where(common == _NO_SHIFT, 0, common), sums


def group_shifts(shifts: np.ndarray, groups) -> np.ndarray:
    """Each group's common shift (:func:`common_shift`: the largest of its blocks', 0 for
    an empty group), in one pass over the members."""
    members, labels = _members_and_labels(groups)
    common = _largest_per_group(np.asarray(shifts, dtype=np.int64)[members], labels, len(groups))
    return np.where(common == _NO_SHIFT, 0, common)


def _largest_per_group(shifts: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """The largest shift of each group's members (``_NO_SHIFT`` for a group with none)."""
    common = np.full(n_groups, _NO_SHIFT, dtype=np.int64)
    np.maximum.at(common, labels, shifts)
    return common


def _members_and_labels(groups) -> tuple[np.ndarray, np.ndarray]:
    """All members of ``groups`` in order, and the group index of each."""
    members = np.fromiter((b for g in groups for b in g), dtype=np.int64)
    return members, np.repeat(np.arange(len(groups)), [len(g) for g in groups])


def group_norms2(norms2: np.ndarray, shifts: np.ndarray, groups) -> np.ndarray:
    """Each group's squared norm at its common shift (:func:`common_shift`), from the
    blocks' squared norms at their own shifts."""
    members, labels = _members_and_labels(groups)
    shifts = np.asarray(shifts, dtype=np.int64)[members]
    return group_scaled_sums(np.asarray(norms2, dtype=np.float64)[members], shifts, labels, len(groups))[1]


def residual_shifts(data: np.ndarray, approx: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per block, one shift for both a block and its reconstruction (from the larger of the
    two largest entries); ``_NO_SHIFT`` where both are zero."""
    largest = np.maximum(np.max(np.abs(data), axis=0, initial=0.0), np.max(np.abs(approx), axis=0, initial=0.0))
    block_max = np.maximum.reduceat(largest.astype(np.float64), np.asarray(offsets[:-1], dtype=np.int64))
    return np.where(block_max > 0, shifts_of_max(block_max), _NO_SHIFT)


def scaled_ratio(numerator: tuple[int | None, float], denominator: tuple[int | None, float]) -> float:
    """``numerator / denominator`` of two squared norms given as ``(shift, value)`` pairs
    (0 when the denominator is 0)."""
    (sn, vn), (sd, vd) = numerator, denominator
    if sd is None or vd == 0.0:
        return 0.0
    if sn is None:
        return 0.0
    return float(np.ldexp(vn / vd, 2 * (sn - sd)))


def residual_norm2(block: np.ndarray, approx: np.ndarray) -> tuple[tuple[int | None, float], tuple[int | None, float]]:
    """``||A - B||_F^2`` and ``||A||_F^2`` of a block and its reconstruction as
    ``(shift, value)`` pairs, without forming ``A - B`` unscaled (it may overflow)."""
    block, approx = np.asarray(block, dtype=np.float64), np.asarray(approx, dtype=np.float64)
    largest = max(float(np.max(np.abs(block), initial=0.0)), float(np.max(np.abs(approx), initial=0.0)))
    if largest == 0.0:
        return (None, 0.0), (None, 0.0)
    shift = int(shifts_of_max(largest))
    difference = rescale(block, -shift) - rescale(approx, -shift)
    return (shift, float(np.einsum("ij,ij->", difference, difference))), scaled_norm2(block)
