"""Residual ordering of the greedy's candidates, screened in float32 and exact where it matters.

The ``"residual"`` order sorts every remaining block by ||(I - QQ^T) A_i||_F^2 =
||A_i||^2 - ||Q^T A_i||_F^2 against the seed basis Q, for every group: one product
Q^T D over all remaining columns D per group, the dominant cost of the greedy when groups
are many and blocks narrow. The grow loop only walks a short prefix of that order (it stops
at the first rejection), so:

1. ``Q^T D`` is computed in float32 (about 4x faster than float64 here) with a rigorous
   bound e_i on the error of every residual it gives;
2. the exact float64 residuals, computed exactly as the unscreened order does, are formed
   only for blocks whose screened interval [r_i - e_i, r_i + e_i] reaches the part of the
   order the loop asks for (:class:`CandidateOrder`), so the order handed out is the
   exact order, ties broken by position as a stable sort does.

Data whose magnitude does not fit float32 comfortably is ordered in float64 throughout.

Where most blocks hold nearly all their energy in their first few columns (sketch factors
A_i V_k, strongest direction first, as the distributed driver's scan writes them), the
screen reads only those *head* columns: for the others, 0 <= ||Q^T c||^2 <= ||c||^2 widens
each block's interval by its tail energy, which is exact whatever the columns are. On
K = 1,000 factors of 256 x 21 around rank-4 subspaces the heads are 4 columns wide and the
screen's product costs a fifth.

Blocks stored as they are (columns in no particular order) have no such heads, but a wide
block of low numerical rank has them in a rotated frame: ||Q^T A||_F = ||Q^T A V||_F for
any orthogonal V, so the screen may read A V_h, V_h orthonormal (w x h) and spanning
nearly A's top right singular directions, and widen the interval by the tail
||A||^2 - ||A V_h||_F^2 = ||A V_perp||_F^2 exactly as for stored heads
(:func:`_rotated_heads`: one randomised range finder per block, batched). On K = 1,000
blocks of 256 x 52 around rank-8 subspaces the screen reads 8 columns per block instead
of 52.
"""

from __future__ import annotations

import numpy as np

from .layout import BlockLayout, column_index, offsets_of, segment_sums, take_columns

__all__ = ["CandidateOrder", "ResidualOrderer"]

_U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32
_TINY32 = 2.0**-149  # float32 subnormal spacing: the absolute error of underflow
_SCREEN_MAX_ABS = 2.0**60  # larger entries: no screening (their squares near float32 range)
# The copy is compacted when fewer than this fraction of its blocks remain (see _compact).
_COMPACT_AT = 0.9
# A block's head: its fewest first columns leaving at most this share of its energy after
# them; heads are screened when they hold at most _HEAD_USE of all columns.
_HEAD_TAIL = 1.0 / 16
_HEAD_USE = 0.5
# Blocks at least this wide (median) with no stored heads are screened through rotated heads
# of an eighth, a sixth or a quarter of their width, the first that a sample of them shows
# leaves at most _HEAD_TAIL of their energy (see _rotated_heads).
_ROTATE_WIDTH = 16
_ROTATE_SHARES = (8, 6, 4)
_ROTATE_SAMPLE = 64
_ROTATE_SEED = 0
_ROTATE_ITEMS = 1 << 17  # numbers per stack of blocks rotated at once (in cache)


class CandidateOrder:
    """Candidates in ascending exact residual, materialised lazily from the front.

    ``prefix(n)`` returns the first ``n`` entries of ``candidates[argsort(residual,
    kind="stable")]``, computing exact residuals only for blocks that may belong there.
    """

    def __init__(self, candidates: np.ndarray, lower: np.ndarray, upper: np.ndarray, exact_of):
        self._candidates = candidates
        self._lower, self._upper = lower, upper
        self._exact_of = exact_of  # positions -> exact float64 residuals
        self._exact = np.full(len(candidates), np.nan)
        self._order = np.zeros(0, dtype=np.int64)
        self._settled = -np.inf  # every candidate with exact residual <= this is in _order

    def __len__(self) -> int:
        return len(self._candidates)

    def prefix(self, n: int) -> np.ndarray:
        """The first ``n`` candidates of the exact order (fewer if there are fewer)."""
        n = min(n, len(self._candidates))
        while len(self._order) < n:
            self._extend(min(len(self._candidates), max(n, 2 * len(self._order))))
        return self._candidates[self._order[:n]]

    def _extend(self, target: int) -> None:
        # at least `target` candidates have an exact residual <= t: t bounds their upper ends
        t = float(np.partition(self._upper, target - 1)[target - 1])
        maybe = np.flatnonzero((self._lower <= t) & np.isnan(self._exact))
        if maybe.size:
            self._exact[maybe] = self._exact_of(maybe)
        with np.errstate(invalid="ignore"):
            new = np.flatnonzero((self._exact <= t) & (self._exact > self._settled))
        if not new.size:
            # a screened interval missed its exact value (it must not; this keeps the
            # order exact and the loop finite whatever the data): order the rest exactly
            rest = np.flatnonzero(np.isnan(self._exact))
            if rest.size:
                self._exact[rest] = self._exact_of(rest)
            new, t = np.flatnonzero(self._exact > self._settled), np.inf
        new = new[np.lexsort((new, self._exact[new]))]  # by value, ties by position (stable)
        self._order = np.concatenate([self._order, new])
        self._settled = t


class ResidualOrderer:
    """Residual norms of many remaining blocks against a basis, vectorised.

    Keeps a compacted float32 copy of the remaining blocks' columns; blocks removed since
    the last compaction stay in it (their results are ignored) until they make up half of
    it, so the copying cost is amortised over many groups.

    Parameters
    ----------
    layout : BlockLayout
    rank : int
        Most columns a basis will have (enters the screening error bound).
    screen : bool
        Screen in float32 (default); False computes every residual in float64.
    """

    def __init__(self, layout: BlockLayout, rank: int, *, screen: bool = True):
        self._layout = layout
        self._widths = layout.widths
        data = layout.data
        # the largest magnitude from max and min: np.abs would copy the whole collection
        self._screen = bool(screen) and data.size > 0 and max(float(data.max()), -float(data.min())) < _SCREEN_MAX_ABS
        self._heads = None  # per column of the layout: whether the screen reads it
        self._copy_widths = self._widths  # per block: its columns in the screened copy
        screened = data  # the float64 columns the screen's float32 copy rounds
        if self._screen:
            column2 = np.einsum("ij,ij->j", data, data)
            energy = segment_sums(column2, layout.offsets)
            self._heads, self._tails = _heads(column2, layout.offsets, energy)
            if self._heads is not None:
                self._copy_widths = segment_sums(self._heads, layout.offsets).astype(np.int64)
                screened, column2 = data[:, self._heads], column2[self._heads]
            elif (rotated := _rotated_heads(layout, energy)) is not None:
                screened, self._copy_widths, self._tails = rotated
                column2 = np.einsum("ij,ij->j", screened, screened)
            self._error = self._screen_error(rank, column2, energy)
        self._ids = np.arange(layout.n_blocks)
        self._offsets = offsets_of(self._copy_widths)
        self._data = screened.astype(np.float32) if self._screen else data

    def _screen_error(self, rank: int, column2: np.ndarray, energy: np.ndarray) -> np.ndarray:
        """Per block, a bound on |screened - exact| residual (see the module notes), from the
        squared norms ``column2`` of the screened float64 columns and each block's energy.

        A float32 product entry p_j = q_j . a (||q_j|| = 1) is off by at most
        delta = (m + 4) u ||a|| + (m + 1) tiny: rounding of q and a, m-term accumulation
        and underflow. The squares summed over r entries are then off by at most
        2 sqrt(r) ||a|| delta + r delta^2, the float32 sum of squares by (r + 2) u (1 + .)
        ||a||^2. Doubled for safety, plus float64 roundoff of both residuals (and of a
        rotation's product and tail, see :func:`_rotated_heads`).
        """
        rows = self._layout.rows
        norm = np.sqrt(column2)
        delta = (rows + 4) * _U32 * norm + (rows + 1) * _TINY32
        product = 2.0 * np.sqrt(rank) * norm * delta + rank * delta * delta
        summed = (rank + 2) * _U32 * (column2 + product)
        underflow = 2 * (rank + 2) * _TINY32  # squares and sums of tiny entries in float32
        per_block = segment_sums(2.0 * (product + summed + underflow), offsets_of(self._copy_widths))
        return per_block + 1e-12 * (energy + np.abs(self._layout.norms2))

    def _compact(self, alive: np.ndarray) -> None:
        """Drop removed blocks from the copy once they are ``1 - _COMPACT_AT`` of it.

        The surviving columns are taken from the copy itself (half the bytes of the
        float64 data when screening, and contiguous rows of the transposed copy when it is
        column-major), so compacting often costs little next to the products it saves."""
        keep = alive[self._ids]
        if np.count_nonzero(keep) >= _COMPACT_AT * len(self._ids):
            return
        columns = np.repeat(keep, np.diff(self._offsets))
        data = self._data
        if data.flags.f_contiguous and not data.flags.c_contiguous:
            self._data = data.T[columns].T
        else:
            self._data = data[:, columns]
        self._ids = self._ids[keep]
        self._offsets = offsets_of(self._copy_widths[self._ids])

    def _inside(self, basis: np.ndarray, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        projected = basis.T @ data
        return segment_sums(np.einsum("ij,ij->j", projected, projected), offsets)

    def _screened_inside(self, basis: np.ndarray) -> np.ndarray:
        """||basis^T A_i||_F^2 of every block of the float32 copy, in float32.

        The product runs in whichever orientation reads the copy contiguously: about a
        third faster on column-major data (narrow blocks, see ``greedy._column_major``).
        The screening error bound holds for any summation order, so the exact order the
        loop is handed does not change."""
        data, basis = self._data, basis.astype(np.float32)
        if data.flags.f_contiguous and not data.flags.c_contiguous:
            projected = data.T @ basis
            return segment_sums(np.einsum("ij,ij->i", projected, projected), self._offsets)
        projected = basis.T @ data
        return segment_sums(np.einsum("ij,ij->j", projected, projected), self._offsets)

    def _position(self, blocks: np.ndarray) -> np.ndarray:
        position = np.full(self._layout.n_blocks, -1, dtype=np.int64)
        position[self._ids] = np.arange(len(self._ids))
        return position[blocks]

    def exact_residuals(self, basis: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """||(I - basis basis^T) A_i||_F^2 of ``blocks`` in float64 (clipped at 0)."""
        layout = self._layout
        inside = self._inside(basis, layout.gather(blocks), offsets_of(self._widths[blocks]))
        return np.clip(layout.norms2[blocks] - inside, 0.0, None)

    def residual_norms2(self, basis: np.ndarray, blocks: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """||(I - basis basis^T) A_i||_F^2 for each i in ``blocks`` (all alive), float64."""
        if self._screen:
            return self.exact_residuals(basis, blocks)
        self._compact(alive)
        inside = self._inside(basis, self._data, self._offsets)
        return np.clip(self._layout.norms2[blocks] - inside[self._position(blocks)], 0.0, None)

    def order(self, basis: np.ndarray, candidates: np.ndarray, alive: np.ndarray):
        """``candidates`` sorted by ascending residual (stable): an array, or a lazy
        :class:`CandidateOrder` when screening."""
        if not self._screen:
            residual = self.residual_norms2(basis, candidates, alive)
            return candidates[np.argsort(residual, kind="stable")]
        self._compact(alive)
        inside = self._screened_inside(basis)
        screened = self._layout.norms2[candidates] - inside[self._position(candidates)]
        error = self._error[candidates]
        lower, upper = screened - error - self._tails[candidates], np.maximum(screened + error, 0.0)
        return CandidateOrder(candidates, lower, upper, lambda at: self.exact_residuals(basis, candidates[at]))


def _heads(column2: np.ndarray, offsets: np.ndarray, energy: np.ndarray | None = None
           ) -> tuple[np.ndarray | None, np.ndarray]:
    """Which columns the screen reads (a mask over the layout's columns) and each block's
    energy in the others; ``(None, zeros)`` when heads would not save enough. ``energy``:
    the blocks' sums of ``column2``, if at hand.

    A block's head is its fewest first columns after which at most ``_HEAD_TAIL`` of its
    energy is left (at least one column)."""
    column2 = np.asarray(column2, dtype=np.float64)
    widths = np.diff(offsets)
    if not column2.size:
        return None, np.zeros(len(widths))
    block_of = np.repeat(np.arange(len(widths)), widths)
    energy = segment_sums(column2, offsets) if energy is None else energy
    running = np.concatenate([[0.0], np.cumsum(column2)])
    before = running[:-1] - running[offsets[:-1]][block_of]  # a block's energy before each column
    first = np.zeros(column2.size, dtype=bool)
    first[offsets[:-1][widths > 0]] = True
    heads = first | (energy[block_of] - before > _HEAD_TAIL * energy[block_of])
    if np.count_nonzero(heads) > _HEAD_USE * column2.size:
        return None, np.zeros(len(widths))
    return heads, segment_sums(np.where(heads, 0.0, column2), offsets)


def _rotated_heads(layout: BlockLayout, energy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The screen's columns in a rotated frame: ``(A_i V_i side by side (column-major),
    their widths h_i, tails)``, or None where blocks are narrow (median below
    ``_ROTATE_WIDTH``) or a sample of them shows no low numerical rank.

    V_i = orth(A_i^T Omega), Omega a fixed Gaussian m x h_i: a randomised range finder on
    A_i^T, so V_i spans nearly A_i's top h_i right singular directions wherever its spectrum
    drops after them. h_i is the block's width over the first of ``_ROTATE_SHARES`` whose
    heads leave at most ``_HEAD_TAIL`` of the energy of a sample's median block (K = 1,000
    blocks of 256 x 52 around rank-8 subspaces: 8 columns, 1.1 % left). Blocks narrower than
    ``_ROTATE_WIDTH`` keep their columns (tail 0). The sample is read once and tried with
    the widest heads first: Omega's columns are nested, so narrower heads leave at least as
    much, and data the rotation does not suit is declined after one rotation of the sample
    (MiniLM's weights as 892 blocks of 384 x 32: 9 ms). Householder QR makes V_i orthonormal to
    roundoff, so tail_i = ||A_i||^2 - ||A_i V_i||_F^2 (clipped at 0; ``energy`` holds the
    ||A_i||^2) is ||A_i V_perp||_F^2 up to roundoff far below the screen's margin."""
    widths = layout.widths
    if not widths.size or np.median(widths) < _ROTATE_WIDTH:
        return None
    wide = np.flatnonzero(widths >= _ROTATE_WIDTH)
    sample = np.unique(wide[np.linspace(0, wide.size - 1, min(_ROTATE_SAMPLE, wide.size)).astype(np.int64)])
    stacks = [(_stack(layout, same), energy[same]) for same in _by_width(widths, sample)]  # read once

    def passes(share: int) -> bool:
        return _median_tail_share(stacks, share) <= _HEAD_TAIL

    widest = _ROTATE_SHARES[-1]
    if not passes(widest):  # nested ranges: narrower heads leave more
        return None
    share = next(share for share in _ROTATE_SHARES if share == widest or passes(share))
    copy_widths = np.where(widths >= _ROTATE_WIDTH, np.maximum(widths // share, 1), widths)
    rows = np.empty((int(copy_widths.sum()), layout.rows))  # the copy's columns as rows
    tails = np.zeros(layout.n_blocks)
    copy_offsets = offsets_of(copy_widths)
    narrow = np.flatnonzero(widths < _ROTATE_WIDTH)
    if narrow.size:
        rows[column_index(copy_offsets, narrow)] = take_columns(layout.data, layout.offsets, narrow).T
    for same in _by_width(widths, wide):
        step = max(1, _ROTATE_ITEMS // (int(widths[same[0]]) * layout.rows))
        for start in range(0, same.size, step):
            part = same[start : start + step]
            heads, tails[part] = _rotated(_stack(layout, part), energy[part], share)
            rows[column_index(copy_offsets, part)] = heads.reshape(-1, layout.rows)
    return rows.T, copy_widths, tails


def _by_width(widths: np.ndarray, blocks: np.ndarray) -> list[np.ndarray]:
    """``blocks`` split by width (each part in the given order)."""
    return [blocks[widths[blocks] == width] for width in np.unique(widths[blocks])]


def _median_tail_share(stacks: list[tuple[np.ndarray, np.ndarray]], share: int) -> float:
    """The median over blocks (``stacks``: their A_i^T stacks and energies) of the energy
    share rotated heads of width // ``share`` columns leave (see :func:`_rotated_heads`)."""
    shares = [_rotated(stack, energy, share)[1] / np.where(energy > 0.0, energy, 1.0) for stack, energy in stacks]
    return float(np.median(np.concatenate(shares)))


def _stack(layout: BlockLayout, blocks: np.ndarray) -> np.ndarray:
    """The blocks ``blocks`` (all of one width w) as a stack of A_i^T, shape (n, w, m),
    read as stored (each block at its own scale, as the screen's energies are)."""
    width, rows = int(layout.widths[blocks[0]]), layout.rows
    data = layout.data
    first = int(layout.offsets[blocks[0]])
    consecutive = int(blocks[-1]) - int(blocks[0]) == len(blocks) - 1
    if data.flags.f_contiguous and not data.flags.c_contiguous:  # rows of data.T are columns
        stack = data.T[first : first + len(blocks) * width] if consecutive else data.T[column_index(layout.offsets, blocks)]
    else:
        part = data[:, first : first + len(blocks) * width] if consecutive else take_columns(data, layout.offsets, blocks)
        stack = np.ascontiguousarray(part.T)
    return stack.reshape(len(blocks), width, rows)


def _rotated(stack: np.ndarray, energy: np.ndarray, share: int) -> tuple[np.ndarray, np.ndarray]:
    """(V_i^T A_i^T stacked (n, h, m), tails) of a stack of A_i^T (n, w, m) with energies
    ``energy``, h = w // ``share`` (see :func:`_rotated_heads`): one product, one batched QR
    and one batched product, on a stack small enough to be read from cache the second time.
    Omega's columns are the first h of one fixed sequence, so the ranges are nested in h."""
    n, width, rows = stack.shape
    h = max(1, width // share)
    omega = np.random.default_rng(_ROTATE_SEED).standard_normal((h, rows)).T  # row-major draws: nested in h
    directions, _ = np.linalg.qr((stack.reshape(-1, rows) @ omega).reshape(n, width, h))
    heads = np.matmul(directions.transpose(0, 2, 1), stack)  # (A_i V_i)^T
    return heads, np.maximum(energy - np.einsum("nhm,nhm->n", heads, heads), 0.0)


def prefix(candidates, n: int) -> np.ndarray:
    """The first ``n`` candidates of an array or of a :class:`CandidateOrder`."""
    return candidates[:n] if isinstance(candidates, np.ndarray) else candidates.prefix(n)
