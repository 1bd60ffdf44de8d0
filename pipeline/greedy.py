"""The paper's greedy error-bounded clustering, one driver for all three bounds.

Blocks are sorted once by Frobenius norm, descending. While blocks remain:

1. **Seed**: the largest remaining block, then the next largest while the seed's total
   width stays <= r.
2. **Order** the other remaining blocks: ``"norm"`` (smallest norm first) or
   ``"residual"`` (ascending ||(I - QQ^T) A||_F against the seed's top-r left singular
   basis Q; all blocks at once with one matrix product over the column layout).
3. **Grow**: add candidates in that order while the certified error bound stays <= eps;
   stop at the first candidate that would push it above eps.
4. **Emit** seed + accepted blocks. After ``patience`` groups in a row that accepted no
   candidate, every remaining block becomes its own group.

Every block ends in exactly one group. Reference: M. Shamrai, arXiv 2601.11626 (2026),
Algorithms 1-3.

On narrow blocks the approximate bound grows lazily (:class:`pipeline.bounds.LazySketch`):
a candidate is accepted by its energy inside the sketch's top-r basis, or else by the
eigenvalues of the sketch plus the blocks accepted since, and the sketch is re-solved only
to refresh that basis. It certifies at least what the paper's block-by-block sketch does, so
a group takes at least the candidates that sketch would; groups may differ from the
paper's from then on. On wide blocks of few rows (m at most about four times r + p plus
the block width) in residual order, the group's exact Gram matrix takes the sketch's place
(:class:`pipeline.bounds.ExactGram`): a candidate is accepted through a fixed basis, else
by Ritz values, else by the exact top-r eigenvalues, so a rejection means the group's exact
error with it exceeds eps. Elsewhere the sketch is kept as a factor
(:class:`pipeline.bounds.FactorSketch`): each test is one small eigen-solve of the factor and
the candidate side by side, without the sketch's extension (the same groups on every
recorded case; K = 1,000 blocks of 256 x 52 in norm order: 0.91 -> 0.42 s; 1,000 of
256 x 64 around 250 subspaces, residual order: 2.86 -> 2.37 s).
"""

from __future__ import annotations

import contextlib
import gc
import itertools

import numpy as np

from ._checks import METHODS, ORDERS, check_choice, check_rank
from ._greedy_order import ResidualOrderer, prefix
from ._threads import single_threaded_blas
from .bounds import DEFAULT_TOL, ExactGram, FactorSketch, LazySketch, ResidualBound, WeylBound, _svd, make_bound, surely_exceeds
from .layout import BlockLayout, as_layout, offsets_of, segment_sums
from .params import ClusteringParams
from .spectra import stacked_top_energy

__all__ = ["ClusteringResult", "check_params", "cluster", "greedy_groups", "group_bound", "seed_split"]

# Stacks of small blocks for batched spectra are cut to about this many numbers (memory).
_STACK_ITEMS = 1 << 22
# Blocks this narrow (median width) are read from a column-major copy (see _column_major).
_NARROW_WIDTH = 8
# First window of the Weyl bound's running sums (see _grow_weyl), and the largest first
# window of a residual order (see _grow).
_FIRST_WINDOW = 64
# Smallest first window of a residual order (see _grow).
_LEAST_WINDOW = 16
# Candidates given the lazy sketch's cheap test at once, at first (see _grow_lazy).
_FIRST_CHUNK = 4
# The lazy sketch's pending blocks are folded once they hold this many columns (see _grow_lazy).
_PENDING_COLUMNS = 64
# First run of the residual bound's batched test, in columns (see _grow_residual)
_RUN_COLUMNS = 16
# The lazy sketch is used where this many blocks of the median width fit in the pending columns.
_LAZY_WIDTHS = 4
# The cheap test is asked where at least 1 in this many asks passed (see _CheapTest).
_CHEAP_RATE = 8
# Rejection rates of the screen are kept for this many positions in a group (see _ScreenedAdd).
_SCREEN_POSITIONS = 8
# The exact Gram route is taken where the rows are at most this many times r + p plus the
# median block width, and at most _GRAM_MAX_ROWS (its exact test solves an m x m
# eigenproblem: about 2 ms at 256, 15 ms at 512; see _gram_pays).
_GRAM_ROWS = 4
_GRAM_MAX_ROWS = 512
# ... and for a group whose predecessor accepted at least this many blocks: each group pays
# the route a fixed m x m eigen-solve or two, which short groups do not earn back (K = 1,000
# blocks of 256 x 64 in groups of about 6: 3.5 s against 3.1 s by the sketch).
_GRAM_LEAST_RUN = 8


class ClusteringResult:
    """Groups produced by :func:`cluster`.

    Attributes
    ----------
    clusters : list of list of int
        Block indices per group: the seed blocks first, then accepted blocks in the order
        they were added.
    labels : ndarray of int64, shape (K,)
        Group index of every block.
    bounds : ndarray of float64, shape (n_groups,)
        Certified upper bound on each group's exact relative rank-r error. Only a group of
        one block can exceed eps (a wide block that no rank-r form fits); such a block is
        stored as it is. The bounds of the blocks left alone after ``patience`` are computed
        when ``bounds`` is first read (their spectra can cost more than the clustering);
        until then the result holds a reference to the collection.
    params : dict
        The parameters the clustering ran with.
    """

    def __init__(self, clusters: list[list[int]], labels: np.ndarray, bounds, params: dict | None = None):
        self.clusters, self.labels = clusters, labels
        self.params = {} if params is None else params
        self._bounds = bounds  # an array, or a _PendingBounds evaluated on first read

    @property
    def bounds(self) -> np.ndarray:
        if isinstance(self._bounds, _PendingBounds):
            self._bounds = self._bounds.evaluate()
        return self._bounds

    @property
    def n_groups(self) -> int:
        return len(self.clusters)

    def __getstate__(self) -> dict:
        # pickled with its bounds evaluated, not with the data they are computed from
        return dict(self.__dict__, _bounds=self.bounds)

    def __repr__(self) -> str:
        return f"ClusteringResult(n_groups={self.n_groups}, params={self.params})"


class _SingletonBounds:
    """The bounds of blocks left alone after ``patience``, computed when first needed."""

    def __init__(self, layout: BlockLayout, blocks: np.ndarray, rank: int, energies):
        self.layout, self.blocks, self.rank, self.energies = layout, blocks, rank, energies

    def energy_totals(self) -> tuple[np.ndarray, np.ndarray]:
        """Each block's top-r energy and squared norm."""
        energy = _singleton_energies(self.layout, self.blocks, self.rank, self.energies)
        return energy, self.layout.norms2[self.blocks]

    def evaluate(self) -> list[float]:
        return _error_bounds(*self.energy_totals()).tolist()


class _PendingBounds:
    """Bounds of groups in order: floats and :class:`_SingletonBounds` not yet evaluated."""

    def __init__(self, parts: list):
        self.parts = parts

    def evaluate(self) -> np.ndarray:
        values = []
        with single_threaded_blas():  # the singletons' many small spectra, as in the greedy
            for part in self.parts:
                values += part.evaluate() if isinstance(part, _SingletonBounds) else [part]
        return np.asarray(values, dtype=np.float64)


def seed_split(sorted_blocks: np.ndarray, widths: np.ndarray, rank: int) -> int:
    """How many of ``sorted_blocks`` (largest norm first) form the seed.

    The first block always; then following blocks while the total width stays <= rank.
    """
    # every block has at least one column, so the seed holds at most rank blocks
    total = np.cumsum(widths[sorted_blocks[: rank + 1]])
    return max(1, int(np.searchsorted(total, rank, side="right")))


def _seed_basis(seed: np.ndarray, rank: int, svd=None) -> np.ndarray:
    """Top-r left singular vectors of the seed (its whole range when it has <= r columns);
    ``svd`` is the seed's ``_svd`` when the caller already has it."""
    u, s = _svd(seed) if svd is None else svd
    keep = min(rank, int(np.count_nonzero(s > s[0] * 1e-12))) if s.size and s[0] > 0 else 0
    return u[:, :keep]


def _order_candidates(candidates, seed, rank, orderer, alive, svd=None):
    """Candidates (largest norm first) in growing order: by residual, else smallest norm
    first. An array, or a lazily materialised order (see :func:`prefix`)."""
    if orderer is None:
        return candidates[::-1]
    if not candidates.size:
        return candidates
    return orderer.order(_seed_basis(seed, rank, svd), candidates, alive)


def group_bound(
    blocks,
    members,
    *,
    rank: int,
    method: str,
    order: str = "residual",
    oversampling: int = 5,
    tol: float = DEFAULT_TOL,
) -> float:
    """Certified error bound of one given group, built the way :func:`cluster` builds it.

    The members are sorted by norm, the seed is split off, the others are ordered by
    ``order`` and all of them are added. Used by the bound-tightness study.
    """
    rank = check_rank(rank)
    method = check_choice("method", method, METHODS)
    order = check_choice("order", order, ORDERS)
    layout = as_layout(blocks).subset(np.asarray(members, dtype=np.int64)).common_scale()
    with single_threaded_blas():  # many small LAPACK calls: threads only cost
        return _group_bound(layout, rank, method, order, oversampling, tol)


def _group_bound(layout: BlockLayout, rank: int, method: str, order: str, oversampling: int, tol: float) -> float:
    """:func:`group_bound` on a validated layout of the members."""
    remaining = _by_norm_descending(layout.norms2)
    n_seed = seed_split(remaining, layout.widths, rank)
    seed = layout.gather(remaining[:n_seed])
    alive = np.ones(layout.n_blocks, dtype=bool)
    alive[remaining[:n_seed]] = False
    orderer = ResidualOrderer(layout, rank, screen=False) if order == "residual" else None
    candidates = _order_candidates(remaining[n_seed:], seed, rank, orderer, alive)
    bound = make_bound(method, seed, rank, oversampling=oversampling, tol=tol)
    for block in candidates:
        bound.add(layout.block(block), layout.norms2[block])
    return bound.error_bound()


def _grow_weyl(bound: WeylBound, norms2: np.ndarray, candidates: np.ndarray, eps: float) -> list[int]:
    """Accept the longest feasible prefix of ``candidates`` (see :func:`_feasible_run`)."""
    n = _feasible_run(bound, lambda size: norms2[prefix(candidates, size)], len(candidates), 1.0 - eps * eps)
    accepted = prefix(candidates, n)
    bound.add_norms(norms2[accepted])
    return accepted.tolist()


class _PositionRates:
    """How often something paid at each position in a group (the last kept position
    counting every later one): the screen's rejections, the cheap test's passes."""

    def __init__(self):
        self.asked, self.paid = [0] * _SCREEN_POSITIONS, [0] * _SCREEN_POSITIONS  # lists: no numpy scalars

    def _pays(self, position: int, one_in: int) -> bool:
        """Whether at least 1 in ``one_in`` asks at ``position`` paid so far (or none was made)."""
        at = min(position, _SCREEN_POSITIONS - 1)
        return one_in * self.paid[at] >= self.asked[at]

    def _count(self, position: int, paid: bool) -> None:
        at = min(position, _SCREEN_POSITIONS - 1)
        self.asked[at] += 1
        self.paid[at] += paid


class _ScreenedAdd(_PositionRates):
    """``bound.try_add``, first asking :func:`pipeline.bounds.surely_exceeds` at positions in
    the group where at least a quarter of the proposals so far were rejected.

    The screen costs about a fifth of a proposal on wide blocks and saves the whole
    proposal when it rejects, so it pays only where rejections are frequent: in norm order
    a group of wide blocks usually accepts its first candidate and rejects its second; in
    residual order a group accepts dozens. Rates are kept per position in the group (the
    last one counting every later position). It never changes a decision."""

    def refusals_common(self, position: int) -> bool:
        """Whether at least a quarter of the proposals at ``position`` were refused."""
        return self._pays(position, 4)

    def record(self, position: int, added: int, refused: bool) -> None:
        """``added`` proposals from ``position`` were accepted, then one refused if ``refused``."""
        for i in range(min(added + refused, _SCREEN_POSITIONS)):
            self._count(position + i, i == added)

    def __call__(self, bound, block: np.ndarray, eps: float, norm2: float, position: int) -> bool:
        worth = self.refusals_common(position)
        if isinstance(bound, FactorSketch):  # its screen is its own solve, for values only
            added = bound.try_add(block, eps, norm2, values_first=worth, solve=not self.refusals_common(position + 1))
        else:
            added = not (worth and surely_exceeds(bound, block, eps, norm2)) and bound.try_add(block, eps, norm2)
        self._count(position, not added)
        return added


def _grow(bound, layout: BlockLayout, candidates: np.ndarray, eps: float, try_add, cheap=None,
          first: int = _FIRST_WINDOW) -> list[int]:
    """Add candidates in order until one would push the bound above eps (``try_add``: a
    :class:`_ScreenedAdd`; ``cheap``: the lazy sketch's :class:`_CheapTest`, which takes its
    place). A lazy residual order is materialised in windows of ``first`` candidates, then
    four times as many each time: the window only sets how many exact residuals are
    computed ahead, never which candidates are accepted."""
    if isinstance(bound, WeylBound):
        return _grow_weyl(bound, layout.norms2, candidates, eps)
    if isinstance(bound, LazySketch):
        return _grow_lazy(bound, layout, candidates, eps, cheap)
    if isinstance(bound, ExactGram):
        return _grow_gram(bound, layout, candidates, eps, first)
    if isinstance(bound, ResidualBound):
        return _grow_residual(bound, layout, candidates, eps, try_add, first)

    def walk(window: np.ndarray, accepted: list[int]) -> bool:
        for block in window[len(accepted) :].tolist():
            if not try_add(bound, layout.block(block), eps, layout.norms2[block], len(accepted)):
                return False
            accepted.append(block)
        return True

    return _in_windows(candidates, first, walk)


def _grow_residual(bound: ResidualBound, layout: BlockLayout, candidates, eps: float, try_add: _ScreenedAdd,
                   first: int) -> list[int]:
    """:func:`_grow` for the residual bound: runs of candidates tested at once
    (:meth:`pipeline.bounds.ResidualBound.accept_run`, one QR for the run) at positions in
    the group where candidates are mostly accepted, one by one (screened) where at least a
    quarter are refused: a run's QR would be spent on candidates the group never reaches.
    The same decisions either way. Runs start at ``_RUN_COLUMNS`` columns (blocks wider
    than half of that go one by one: the one-by-one screen rejects for less than a QR of
    two of them costs)."""
    offsets, norms2 = layout.offsets, layout.norms2

    def run(ids: np.ndarray, position: int) -> tuple[int, bool]:
        added, refused = bound.accept_run(layout.gather(ids), offsets_of(offsets[ids + 1] - offsets[ids]),
                                          norms2[ids], eps)
        try_add.record(position, added, refused)
        return added, refused

    def one(block: int, position: int) -> bool:
        return try_add(bound, layout.block(block), eps, norms2[block], position)

    def first_chunk(block: int) -> int:
        return _RUN_COLUMNS // int(offsets[block + 1] - offsets[block])

    return _grow_in_runs(candidates, first, run, one, first_chunk, 2,
                         lambda chunk, position: chunk >= 2 and not try_add.refusals_common(position))


def _grow_in_runs(candidates, first: int, run, one, first_chunk, least: int, runs_pay) -> list[int]:
    """A group grown by runs of candidates, then one by one at the first a run leaves.

    ``run(ids, position)`` tests the candidates ``ids`` (the group holding ``position``
    blocks) at once, adds the longest passing prefix and returns its length and whether
    the next one was refused for certain (the group then ends); ``one(block, position)``
    tests a single candidate and adds it if it passes. A run that passes whole doubles the
    next one; otherwise the next holds twice what passed, at least ``least``. The first
    run holds ``first_chunk(first candidate)``; ``runs_pay(chunk, position)`` says whether
    to run at all there (else one by one)."""
    chunk = None

    def walk(window: np.ndarray, accepted: list[int]) -> bool:
        nonlocal chunk
        position = len(accepted)
        if chunk is None and len(window):
            chunk = first_chunk(int(window[0]))
        while position < len(window):
            if runs_pay(chunk, len(accepted)):
                ids = window[position : position + chunk]
                added, refused = run(ids, len(accepted))
                accepted += ids[:added].tolist()
                position += added
                if refused:
                    return False
                if added == len(ids):  # all passed: try more at once next time
                    chunk *= 2
                    continue
                chunk = max(least, 2 * added)
            block = int(window[position])
            if not one(block, len(accepted)):
                return False
            accepted.append(block)
            position += 1
        return True

    return _in_windows(candidates, first, walk)


def _in_windows(candidates, first: int, walk) -> list[int]:
    """The blocks a group accepts: ``walk(window, accepted)`` extends ``accepted`` along a
    prefix of the candidates (``window``) and returns False once a candidate is refused.
    The prefixes hold ``first`` candidates, then four times as many each time, so that a
    lazy residual order is only materialised as far as needed."""
    accepted, size = [], first
    while True:
        window = prefix(candidates, size)
        if not walk(window, accepted) or len(window) < size:
            return accepted
        size *= 4


class _CheapTest(_PositionRates):
    """When the lazy sketch's cheap test is worth asking at a position in a group.

    It costs a product per candidate and saves an eigenvalue test when it passes; where it
    seldom passes (in norm order a group of narrow blocks usually takes its first candidate
    by the eigenvalue test), that test is made at once. Pass rates are kept per position,
    as the screen's (:class:`_ScreenedAdd`)."""

    def worth(self, position: int) -> bool:
        return self._pays(position, _CHEAP_RATE)

    def record(self, position: int, run: int, tested: int) -> None:
        """``tested`` candidates from ``position`` were tested; the first ``run`` passed."""
        for i in range(min(tested, run + 1, _SCREEN_POSITIONS)):
            self._count(position + i, i < run)


def _grow_lazy(bound: LazySketch, layout: BlockLayout, candidates, eps: float, cheap: _CheapTest) -> list[int]:
    """:func:`_grow` for the lazy sketch: the cheap test of a run of candidates at once (one
    product with the sketch's top-r basis), accepting its longest passing prefix; at the
    first candidate it fails, the eigenvalue test (not screened: the screen would cost as
    much). The group stops at the first candidate neither accepts.

    The pending blocks are folded into the sketch (settled) once they hold
    ``_PENDING_COLUMNS`` columns, before the cheap test accepts more or an eigenvalue test
    is made (its matrix grows with them): a fold's cost grows with the cube of its width."""
    offsets, norms2 = layout.offsets, layout.norms2
    chunk = _FIRST_CHUNK

    def walk(window: np.ndarray, accepted: list[int]) -> bool:
        nonlocal chunk
        position = len(accepted)
        while position < len(window):
            gain = 0.0  # no credit through U unless the cheap test computed it (a product saved)
            if cheap.worth(len(accepted)):  # with the basis U as it is: settled only if it passes
                ids = window[position : position + chunk]
                run_offsets = offsets_of(offsets[ids + 1] - offsets[ids])
                columns = layout.gather(ids)
                gains = bound.gains(columns, run_offsets, norms2[ids])
                run = bound.cheap_run(gains, norms2[ids], eps)
                room = int(np.searchsorted(run_offsets[1 : run + 1], _PENDING_COLUMNS - bound.pending_columns, "right"))
                take = min(run, room if bound.pending else max(room, 1))
                cheap.record(len(accepted), run, len(ids) if take == run else take + 1)
                if take:  # the passing run as gathered
                    bound.accept([columns[:, : run_offsets[take]]], gains[:take], norms2[ids[:take]])
                    accepted += ids[:take].tolist()
                    position += take
                if take < run:  # the pending blocks are full: settle and test the rest again
                    bound.settled()
                    continue
                if run == len(ids):  # all passed: try more at once next time
                    chunk *= 2
                    continue
                chunk = max(_FIRST_CHUNK, 2 * run)
                gain = float(gains[run])
            block = int(window[position])
            if not _exact_test(bound, layout.block(block), eps, norms2[block], gain):
                return False
            accepted.append(block)
            position += 1
        return True

    return _in_windows(candidates, _FIRST_WINDOW, walk)


def _grow_gram(bound: ExactGram, layout: BlockLayout, candidates, eps: float, first: int) -> list[int]:
    """:func:`_grow` for the exact Gram route: the cheap test of a run of candidates at once
    (one product with W), accepting its longest passing prefix; at the first candidate it
    fails, the Ritz and exact tests. The group stops at the first candidate none accepts."""
    offsets, norms2 = layout.offsets, layout.norms2

    def run(ids: np.ndarray, position: int) -> tuple[int, bool]:
        run_offsets = offsets_of(offsets[ids + 1] - offsets[ids])
        columns = layout.gather(ids)
        gains = bound.gains(columns, run_offsets)
        passed = bound.cheap_run(gains, norms2[ids], eps)
        if passed:  # the passing run as gathered
            bound.accept([columns[:, : run_offsets[passed]]], gains[:passed], norms2[ids[:passed]])
        return passed, False

    def one(block: int, position: int) -> bool:
        return bound.try_solve(layout.block(block), eps, float(norms2[block]))

    return _grow_in_runs(candidates, first, run, one, lambda block: _FIRST_CHUNK, _FIRST_CHUNK,
                         lambda chunk, position: True)


def _exact_test(bound: LazySketch, block: np.ndarray, eps: float, norm2: float, gain: float) -> bool:
    """The lazy sketch's eigenvalue test of ``block``, its pending blocks settled first if
    they are many; ``gain`` is its energy inside U from the cheap test, or 0 (a valid
    credit: the cheap test was skipped, or U changed with the settling)."""
    if bound.pending_columns >= _PENDING_COLUMNS:
        bound.settled()
        gain = 0.0
    return bound.try_exact(block, eps, norm2, gain)


def cluster(
    blocks,
    *,
    rank: int,
    eps: float,
    method: str = "approximate",
    order: str = "residual",
    patience: int = 10,
    oversampling: int = 5,
    tol: float = DEFAULT_TOL,
    offsets=None,
) -> ClusteringResult:
    """Group blocks so that every group's rank-r relative error is certified <= eps.

    Parameters
    ----------
    blocks : sequence of 2-D arrays, or 2-D array with ``offsets``, or BlockLayout
        The collection: K blocks with equal row counts and any widths.
    rank : int
        Target rank r of each group's shared truncated SVD.
    eps : float
        Error threshold in (0, 1) on ||M_C - [M_C]_r||_F / ||M_C||_F.
    method : {"approximate", "residuals", "max_norm"}
        Certified bound used while growing a group (see :mod:`pipeline.bounds`).
    order : {"residual", "norm"}
        Candidate order: ascending residual against the seed basis, or ascending norm.
    patience : int
        After this many consecutive groups that accepted no candidate, every remaining
        block becomes its own group.
    oversampling : int
        Extra sketch directions p for ``method="approximate"`` (sketch rank r + p).
    tol : float
        Relative threshold below which residual directions are dropped.
    offsets : array of int, optional
        Column boundaries when ``blocks`` is the concatenated data.

    Returns
    -------
    ClusteringResult

    Raises
    ------
    ValueError
        Bad parameters, or bad input naming the offending block.
    """
    params = check_params(rank, eps, method, order, patience, oversampling, tol)
    layout = as_layout(blocks, offsets)
    clusters, bounds, lazy = [], [], False
    members_of, sizes_of = [], []  # every group's blocks, flat, and its size: for the labels
    with single_threaded_blas():
        # blocks of different magnitude bands never share a group (pipeline.magnitude)
        for members in _magnitude_bands(layout):
            part = layout if members is None else layout.subset(members)
            found, found_bounds, _ = _greedy(part, **params, with_states=False)
            clusters += found if members is None else [members[g].tolist() for g in found]
            bounds += found_bounds
            pending = found_bounds[-1] if found_bounds and isinstance(found_bounds[-1], _SingletonBounds) else None
            lazy = lazy or pending is not None  # always last
            # the singletons left after patience (often most groups) are labelled as one array
            grouped = found[: len(found) - (0 if pending is None else len(pending.blocks))]
            sizes = np.fromiter(map(len, grouped), dtype=np.int64, count=len(grouped))
            flat = np.fromiter(itertools.chain.from_iterable(grouped), dtype=np.int64, count=int(sizes.sum()))
            if pending is not None:
                flat = np.concatenate((flat, pending.blocks))
                sizes = np.concatenate((sizes, np.ones(len(pending.blocks), dtype=np.int64)))
            members_of.append(flat if members is None else members[flat])
            sizes_of.append(sizes)
    sizes = np.concatenate(sizes_of)
    labels = np.empty(layout.n_blocks, dtype=np.int64)
    labels[np.concatenate(members_of)] = np.repeat(np.arange(len(clusters)), sizes)
    return ClusteringResult(clusters, labels, _PendingBounds(bounds) if lazy else np.asarray(bounds, dtype=np.float64),
                            params)


def _magnitude_bands(layout: BlockLayout) -> list[np.ndarray | None]:
    """Block indices of each magnitude band, largest shift first; ``[None]`` (the whole
    layout) when there is one band."""
    if not layout.scaled:
        return [None]
    shifts = layout.shifts
    bands = np.unique(shifts)[::-1]
    if len(bands) == 1:
        return [None]
    return [np.flatnonzero(shifts == s) for s in bands]


def check_params(rank, eps, method, order, patience, oversampling, tol) -> dict:
    """Validate the greedy's parameters up front (:class:`pipeline.params.ClusteringParams`);
    returns them normalised."""
    return ClusteringParams(rank=rank, eps=eps, method=method, order=order, patience=patience,
                            oversampling=oversampling, tol=tol).greedy_kwargs()


def greedy_groups(
    layout: BlockLayout, *, rank: int, eps: float, method: str, order: str, patience: int, oversampling: int, tol: float
) -> tuple[list[list[int]], list[float], list]:
    """The greedy loop on a validated layout; also returns each group's final bound state.

    ``layout.norms2`` are taken as the exact block energies, so the layout's columns may be
    sketch factors F_i with F_i F_i^T <= A_i A_i^T of the real blocks: every bound stays
    certified for the real blocks (they only credit energy the factors carry).

    The loop makes many small LAPACK calls, so it runs with one BLAS thread whatever the
    environment: extra threads only add start-up and, on a busy machine, oversubscription.
    """
    with single_threaded_blas():
        return _greedy(layout, rank, eps, method, order, patience, oversampling, tol)


def _block_energies(layout: BlockLayout) -> np.ndarray:
    """Squared Frobenius norm of every block's columns, in one pass over the data.

    ``layout.norms2`` only when the layout says they are these sums (``norms2_of_data``):
    otherwise they may be the real blocks' energies when the columns are sketch factors,
    and a bound may only credit what the columns carry."""
    if layout.norms2_of_data:
        return layout.norms2
    return segment_sums(np.einsum("ij,ij->j", layout.data, layout.data), layout.offsets)


def _singleton_energies(layout: BlockLayout, blocks: np.ndarray, rank: int, energies=None) -> np.ndarray:
    """Top-r energies of blocks that stay alone, their spectra batched by block width.

    A block of at most r columns keeps all its energy: the sum of its columns' squares,
    taken from one pass over the data instead of a copy of every block (or from
    ``energies``, :func:`_block_energies` when the caller already has them)."""
    energy = np.empty(len(blocks))
    widths = layout.widths[blocks]
    narrow = widths <= rank
    if narrow.any():
        energy[narrow] = (_block_energies(layout) if energies is None else energies)[blocks[narrow]]
    for width in np.unique(widths[~narrow]):
        picked = np.flatnonzero(widths == width)
        if _uniform_rows(layout, int(width)) and 2 * len(picked) >= layout.n_blocks:
            energy[picked] = _uniform_top_energy(layout, int(width), rank)[blocks[picked]]
            continue
        for chunk in np.array_split(picked, -(-len(picked) * layout.rows * int(width) // _STACK_ITEMS)):
            stack = layout.gather(blocks[chunk]).reshape(layout.rows, len(chunk), int(width)).transpose(1, 0, 2)
            energy[chunk] = stacked_top_energy(stack, rank)
    return energy


def _uniform_rows(layout: BlockLayout, width: int) -> bool:
    """Whether every block has ``width`` columns, the data is row-major and every block is
    at one scale (as :meth:`BlockLayout.gather` would leave them), so that the blocks are
    a (rows, K, width) view of the data with no copy."""
    one_scale = not layout.scaled or not np.ptp(layout.shifts)
    return bool(layout.data.flags.c_contiguous and layout.data.shape[1] == layout.n_blocks * width and one_scale
                and np.all(np.diff(layout.offsets) == width))


def _uniform_top_energy(layout: BlockLayout, width: int, rank: int) -> np.ndarray:
    """Top-r energy of every block of a uniform layout, stacked as views of the data (no
    gather, which cost as much as the Gram products): the same products and spectra as of
    gathered copies, bit for bit."""
    view = layout.data.reshape(layout.rows, layout.n_blocks, width).transpose(1, 0, 2)
    energy = np.empty(layout.n_blocks)
    step = max(1, _STACK_ITEMS // (layout.rows * width))
    for start in range(0, layout.n_blocks, step):
        energy[start : start + step] = stacked_top_energy(view[start : start + step], rank)
    return energy


def _error_bounds(energy: np.ndarray, total: np.ndarray) -> np.ndarray:
    """:func:`pipeline.spectra.error_from_energy` of many groups at once (same arithmetic)."""
    safe = np.where(total > 0.0, total, 1.0)
    return np.where(total > 0.0, np.sqrt(np.maximum(0.0, 1.0 - energy / safe)), 0.0)


def _column_major(layout: BlockLayout, method: str, order: str, gathers: bool = False) -> BlockLayout:
    """The layout with its data in column-major order when blocks are narrow and will be
    read one by one: a block of a few columns is then contiguous instead of one number per
    row of the (m x N) row-major data (a page per number when N is large). Also when
    ``gathers`` (the exact Gram route, which gathers runs of candidates for its cheap
    test: K = 1,000 blocks of 256 x 52, 0.87 -> 0.67 s)."""
    reads_blocks = method != "max_norm" or order == "residual"
    narrow = layout.n_blocks and np.median(layout.widths) <= _NARROW_WIDTH
    if not (reads_blocks and (narrow or gathers)) or layout.data.flags.f_contiguous:
        return layout
    return BlockLayout(np.asfortranarray(layout.data), layout.offsets, layout.norms2, None, layout.norms2_of_data)


def _seed_state(layout: BlockLayout, widths, seed_ids, method, rank, oversampling, tol, energies, ordered: bool,
                lazy: bool = False, gram: bool = False, factor: bool = False):
    """The seed's columns (None when nothing needs them), their ``_svd`` (None unless
    ``ordered``: the residual order needs it too, and one decomposition serves both) and
    the seed's bound state (a :class:`LazySketch` when ``lazy``, an :class:`ExactGram` when
    ``gram``, a :class:`FactorSketch` when ``factor``)."""
    total = float(layout.norms2[seed_ids].sum())
    if energies is not None and widths[seed_ids].sum() <= rank:
        bound = WeylBound.from_energy(float(energies[seed_ids].sum()), rank, total)
        return (layout.gather(seed_ids) if ordered else None), None, bound
    if factor and not ordered and len(seed_ids) == 1:  # the factor's Gram product reads a view as fast as a copy
        return None, None, FactorSketch(layout.block(int(seed_ids[0])), rank, oversampling=oversampling, total=total)
    seed = layout.gather(seed_ids)
    svd = _svd(seed) if ordered else None
    if gram:
        return seed, svd, ExactGram(seed, rank, oversampling=oversampling, total=total, svd=svd)
    if factor:
        return seed, svd, FactorSketch(seed, rank, oversampling=oversampling, total=total, svd=svd)
    bound = make_bound(method, seed, rank, oversampling=oversampling, tol=tol, total=total, svd=svd)
    return seed, svd, (LazySketch(bound) if lazy else bound)


def _without_group(remaining: np.ndarray, alive: np.ndarray, n_seed: int, n_accepted: int, tail: bool) -> np.ndarray:
    """``remaining`` without the group just formed (its blocks already dead in ``alive``).

    The seed is the front of ``remaining``. In norm order (``tail``) the accepted blocks
    are its back: the grow loop accepts a prefix of ``remaining[n_seed:][::-1]``. Then a
    slice does, instead of a pass over every remaining block per group (thousands of
    groups of a few blocks each)."""
    if tail or not n_accepted:
        return remaining[n_seed : len(remaining) - n_accepted]
    return remaining[alive[remaining]]


def _lazy_pays(widths: np.ndarray) -> bool:
    """Whether the approximate bound grows lazily (:class:`pipeline.bounds.LazySketch`):
    when several typical blocks fit in the pending columns. A fold's cost grows with the
    cube of its width, so wide blocks are folded one by one as they come (the
    block-by-block :class:`pipeline.bounds.GramSketch`), where the cheap test saves nothing."""
    return bool(widths.size) and _LAZY_WIDTHS * float(np.median(widths)) <= _PENDING_COLUMNS


def _gram_pays(rows: int, capacity: int, widths: np.ndarray) -> bool:
    """Whether the approximate bound may grow on the exact Gram matrix
    (:class:`pipeline.bounds.ExactGram`) in residual order: where the m x m matrix costs
    little next to the sketch's work per block, an extension and an eigen-solve of r + p
    plus the block width. K = 1,000 blocks of 256 x 52, r = 20: 0.75 s against 1.24 s,
    the same groups. In norm order groups take a block or two, and the exact test's
    m x m eigen-solve would cost more than the sketch's small ones."""
    return bool(widths.size) and rows <= min(_GRAM_MAX_ROWS, _GRAM_ROWS * (capacity + float(np.median(widths))))


def _greedy(layout: BlockLayout, rank, eps, method, order, patience, oversampling, tol, with_states=True, screen=True,
            fast=True, lazy=None, gram=None, factor=None):
    """:func:`greedy_groups` with BLAS threads already bounded; ``states`` is None unless
    ``with_states`` (building thousands of singleton bound objects is wasted on callers
    that only want the groups). ``screen=False`` orders by residual in float64 throughout
    (the reference the screened order must reproduce); ``fast=False`` runs the seed bound
    in norm order through the general loop (the reference :func:`_greedy_weyl_norm` must
    reproduce); ``lazy`` chooses the approximate bound's state (None: :func:`_lazy_pays`;
    False: the block-by-block sketch) and ``gram`` whether its exact Gram route may be
    taken instead of the block-by-block sketch (None: :func:`_gram_pays`); ``factor``
    whether, when neither, it is kept as a factor (:class:`pipeline.bounds.FactorSketch`;
    None: it is)."""
    if fast and method == "max_norm" and order == "norm":
        return _greedy_weyl_norm(layout, rank, eps, patience, with_states)
    widths = layout.widths  # computed from the offsets on every access: once here
    if lazy is None:
        lazy = method == "approximate" and _lazy_pays(widths)
    if gram is None:
        gram = _gram_pays(layout.rows, rank + oversampling, widths)
    gram = bool(gram) and method == "approximate" and not lazy and order == "residual"
    factor = (True if factor is None else factor) and method == "approximate" and not lazy
    layout = _column_major(layout, method, order, gram)
    remaining = _by_norm_descending(layout.norms2)  # sorted once
    alive = np.ones(layout.n_blocks, dtype=bool)
    orderer = ResidualOrderer(layout, rank, screen=screen) if order == "residual" else None
    clusters, bounds, states, misses, try_add, cheap = [], [], [], 0, _ScreenedAdd(), _CheapTest()
    # a seed of at most r columns keeps all its energy: the Weyl bound needs no SVD of it
    energies = _block_energies(layout) if method == "max_norm" else None
    accepted_before = _FIRST_WINDOW
    while remaining.size:
        n_seed = seed_split(remaining, widths, rank)
        seed_ids, candidates = remaining[:n_seed], remaining[n_seed:]
        alive[seed_ids] = False
        ordered = orderer is not None and candidates.size > 0
        seed, svd, bound = _seed_state(layout, widths, seed_ids, method, rank, oversampling, tol, energies, ordered,
                                       lazy, gram and accepted_before >= _GRAM_LEAST_RUN, factor)
        candidates = _order_candidates(candidates, seed, rank, orderer, alive, svd)
        accepted = _grow(bound, layout, candidates, eps, try_add, cheap, _first_window(accepted_before))
        accepted_before = len(accepted)
        group = [int(b) for b in seed_ids] + accepted
        clusters.append(group)
        bounds.append(bound.error_bound())
        if with_states:  # a lazy sketch folds its pending blocks: a sketch of the whole group
            states.append(bound.settled() if isinstance(bound, (LazySketch, ExactGram, FactorSketch)) else bound)
        alive[group] = False
        remaining = _without_group(remaining, alive, n_seed, len(accepted), orderer is None)
        misses = misses + 1 if not accepted and len(candidates) else 0
        if misses >= patience:
            _add_singletons(clusters, bounds, states if with_states else None, layout, remaining, rank, energies)
            break
    return clusters, bounds, (states if with_states else None)


def _first_window(accepted_before: int) -> int:
    """First window of a group's residual order: about twice what the previous group
    accepted. Each exact residual ahead of the loop costs a gather of the block's columns
    (K = 1,000 factors of 256 x 21 whose groups take 4 blocks each: a window of 64
    candidates cost the local greedy a quarter of its time)."""
    return min(_FIRST_WINDOW, max(_LEAST_WINDOW, 2 * accepted_before))


def _add_singletons(clusters, bounds, states, layout: BlockLayout, blocks: np.ndarray, rank: int, energies) -> None:
    """Every block of ``blocks`` as its own group. Their bounds (and their states, unless
    ``states`` is None) are computed now only if states are asked for; otherwise one
    :class:`_SingletonBounds` stands for them in ``bounds`` until they are read."""
    with _collector_paused():  # [[block], ...], built in C: thousands of lists, no cycles
        clusters.extend(blocks.reshape(-1, 1).tolist())
    pending = _SingletonBounds(layout, blocks, rank, energies)
    if states is None:
        bounds.append(pending)
        return
    energy, totals = pending.energy_totals()
    bounds.extend(_error_bounds(energy, totals).tolist())
    states.extend(WeylBound.from_energy(e, rank, t) for e, t in zip(energy, totals))


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while many small lists are built at once:
    they hold no cycles, and its passes over them cost a third of building them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _by_norm_descending(norms2: np.ndarray) -> np.ndarray:
    """``np.argsort(-norms2, kind="stable")``: blocks by norm, largest first, ties by index.

    Sorted by introsort (about half the stable sort's time), then checked for ties, which
    only the stable sort orders by index; the permutation is the same."""
    order = np.argsort(-norms2)
    ordered = norms2[order]
    if ordered.size > 1 and (ordered[1:] == ordered[:-1]).any():
        return np.argsort(-norms2, kind="stable")
    return order


def _greedy_weyl_norm(layout: BlockLayout, rank, eps, patience, with_states):
    """:func:`_greedy` for the seed bound in norm order, on two indices instead of arrays.

    In norm order a group takes its seed from the front of the remaining blocks (largest
    norm first) and accepts a run from the back, so the remaining blocks are always one
    slice ``[lo, hi)`` of the norm-sorted order, and the seed bound needs no block's data
    unless the seed is wider than r. Every sum is taken over the same numbers in the same
    order as :func:`_greedy` does (same bits, same groups); only the per-group index
    bookkeeping (masks, fancy indexing, one bound object per group) is gone."""
    order = _by_norm_descending(layout.norms2)
    norms2, widths = layout.norms2[order], layout.widths[order]
    sorted_energies = None  # taken once a seed of at most r columns needs them
    clusters, bounds, states, misses = [], [], [], 0
    lo, hi = 0, len(order)
    floor = 1.0 - eps * eps
    while lo < hi:
        n_seed = max(1, int(np.searchsorted(np.cumsum(widths[lo : min(hi, lo + rank + 1)]), rank, side="right")))
        seed = slice(lo, lo + n_seed)
        total = float(norms2[seed].sum())
        if widths[seed].sum() <= rank:
            if sorted_energies is None:  # a gather of the seeds' columns instead costs more
                sorted_energies = _block_energies(layout)[order]
            bound = WeylBound.from_energy(float(sorted_energies[seed].sum()), rank, total)
        else:
            bound = WeylBound(layout.gather(order[seed]), rank, total=total)
        n = _weyl_run(bound, norms2, lo + n_seed, hi, floor)
        group = order[seed].tolist() + order[hi - n : hi][::-1].tolist()
        if n:
            bound.add_norms(norms2[hi - n : hi][::-1].copy())  # contiguous: summed in this order
        clusters.append(group)
        bounds.append(bound.error_bound())
        states.append(bound)
        misses = misses + 1 if not n and hi > lo + n_seed else 0
        lo, hi = lo + n_seed, hi - n
        if misses >= patience and lo < hi:
            _add_singletons(clusters, bounds, states if with_states else None, layout, order[lo:hi], rank, None)
            break
    return clusters, bounds, (states if with_states else None)


def _weyl_run(bound: WeylBound, norms2: np.ndarray, start: int, stop: int, floor: float) -> int:
    """How many of the blocks ``stop - 1, stop - 2, ..., start`` (norm-sorted, taken from
    the back) the seed bound accepts."""
    return _feasible_run(bound, lambda size: norms2[max(start, stop - size) : stop][::-1], stop - start, floor)


def _feasible_run(bound: WeylBound, first_norms2, n: int, floor: float) -> int:
    """Length of the longest prefix of ``n`` candidates the seed bound accepts (only
    ||M||^2 grows, so the bound is monotone); ``first_norms2(size)`` gives the squared norms
    of the first ``size`` candidates.

    The prefix is found in windows growing fourfold, so a group that accepts a few blocks
    does not pay for a running sum over every remaining block; a window's running sums are
    the same numbers as the first entries of the full running sum."""
    seed, size = bound.lower_energy(), _FIRST_WINDOW
    while True:
        feasible = seed >= floor * (bound.total + np.cumsum(first_norms2(size)))
        if not feasible.all():
            return int(np.argmin(feasible))
        if size >= n:
            return n
        size *= 4
