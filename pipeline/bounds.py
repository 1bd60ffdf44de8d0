"""Certified lower bounds on the top-r energy of a growing concatenation of blocks.

Each bound is a small incremental state built from a *seed* matrix and grown block by
block with :meth:`add` (always) or :meth:`try_add` (only if the certified error stays at or
below a threshold). All of them satisfy

    lower_energy() <= E_r(M) = sum_{j<=r} s_j(M)^2

for the concatenation M of the seed and every block added, so
``error_bound() = sqrt(1 - lower_energy() / ||M||_F^2)`` is a certified upper bound on the
exact relative rank-r error. ``||M||_F^2`` is tracked exactly.

Three bounds, after Shamrai, "Concatenated Matrix SVD: Compression Bounds, Incremental
Approximation, and Error-Constrained Clustering", arXiv 2601.11626 (2026):

* :class:`WeylBound` ("max_norm"): E_r(M) >= E_r(M_seed), computed from the seed's SVD (using
  ||M_seed||_F^2 for a seed wider than r would overestimate).
* :class:`ResidualBound` ("residuals"): credits the singular values of each block's
  residual against the span of everything added so far; the credited pieces live in
  mutually orthogonal subspaces.
* :class:`GramSketch` ("approximate"): an incremental truncated eigen-sketch G <= M M^T that
  also merges across disjoint groups without touching data (:meth:`GramSketch.merge`).
  The greedy grows it lazily on narrow blocks (:class:`LazySketch`): blocks are accepted
  through the sketch's top-r basis or the eigenvalues of the sketch plus the blocks
  accepted since, and folded into it only now and then. On wide blocks of few rows, in
  residual order, it keeps the group's exact m x m Gram matrix instead (:class:`ExactGram`):
  its certificates are never below the sketch's. Elsewhere, on blocks too wide to grow
  lazily, the sketch is kept as a factor (:class:`FactorSketch`): no extension, nothing
  dropped.

Numerical care. Extension bases are computed from a twice-orthogonalised residual, cut at a
relative threshold, projected once more and re-orthonormalised, so they are orthonormal
and orthogonal to the current basis to working precision (a plain QR of a rank-deficient
residual is not, and the bound then fails). Energy outside the kept subspace is not
credited; for the sketch, the norm of what was dropped is carried as a *slack* that is
subtracted from the certified bound (see :meth:`GramSketch.lower_energy`), so dropping
numerically-zero directions never invalidates it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import blas as _blas
from scipy.linalg import lapack as _lapack
from numpy.linalg import _umath_linalg  # numpy's own LAPACK gufuncs, see _svd and _eigh

from ._checks import DEFAULT_TOL, check_nonnegative_int, check_rank, check_tol
from .spectra import error_from_energy, stacked_top_energy, top_energy

__all__ = ["DEFAULT_TOL", "ExactGram", "FactorSketch", "GramSketch", "LazySketch", "ResidualBound", "WeylBound", "make_bound", "surely_exceeds"]

# Residual directions weaker than this (relative to the block's norm) are below the
# accuracy of a twice-orthogonalised residual and are dropped whatever tol says.
_NOISE_FLOOR = 1e3 * np.finfo(np.float64).eps


_add_reduce = np.add.reduce  # what ndarray.sum calls, without two Python wrappers (same bits)


def _as_float64(block: np.ndarray) -> np.ndarray:
    if type(block) is np.ndarray and block.dtype == np.float64 and block.ndim == 2:
        return block  # the greedy's blocks: views of float64 data, nothing to check
    block = np.asarray(block, dtype=np.float64)
    if block.ndim != 2:
        raise ValueError(f"a block must be 2-D, got shape {block.shape}")
    return block


def _quiet() -> np.errstate:
    """The floating-point state numpy's own linalg wrappers run LAPACK under."""
    return np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore")


def _svd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values (economy) of a float64 matrix.

    The same gesdd call as ``np.linalg.svd(matrix, full_matrices=False)``, bit for bit,
    without its wrapper: the greedy makes tens of thousands of these calls on matrices of
    a few columns, where the wrapper's checks cost about a third of the solve. A failure
    to converge fills the result with NaN; gesvd is then used (slower but robust)."""
    with _quiet():
        u, s, _ = _umath_linalg.svd_s(matrix, signature="d->ddd")
    if s.size and s[0] != s[0]:  # NaN: gesdd did not converge
        u, s, _ = scipy.linalg.svd(matrix, full_matrices=False, check_finite=False, lapack_driver="gesvd")
    return u, s


def _eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.linalg.eigh(matrix)`` (ascending, lower triangle) bit for bit, without its
    wrapper's overhead (see :func:`_svd`); raises LinAlgError like it on failure."""
    with _quiet():
        lam, vecs = _umath_linalg.eigh_lo(matrix, signature="d->dd")
    if lam.size and lam[0] != lam[0]:  # NaN: no convergence; let numpy raise its error
        return np.linalg.eigh(matrix)
    return lam, vecs


def _unit_column(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The SVD of one column (m x 1), without a LAPACK call: r = (r / ||r||) ||r||."""
    s = math.sqrt(np.dot(column[:, 0], column[:, 0]))
    return (column / s if s > 0.0 else np.zeros_like(column)), np.array([s])


def _squared_singular_values(matrix: np.ndarray) -> np.ndarray:
    """Squared singular values; a single row or column has one, its squared norm."""
    if min(matrix.shape) == 1:
        return np.array([float(np.einsum("ij,ij->", matrix, matrix))])
    return _singular_values(matrix) ** 2  # values only: a third of the solve with vectors on 52 x 52


def _keep_threshold(norm: float, tol: float) -> float:
    return max(tol, _NOISE_FLOOR) * norm


# Residuals at least this wide get their basis from a Householder QR when it provably keeps
# every direction (see _full_range_basis); narrower ones go straight to the SVD, which
# costs no more there.
_QR_WIDTH = 8
# Seeds at least this wide get their residual-bound basis (24) or sketch (40) from a QR when
# it keeps every direction (see ResidualBound and GramSketch._seed_from_qr); on narrower
# ones the SVD costs no more (128 x 16: 49 us against 52).
_QR_RESIDUAL_SEED_WIDTH = 24
_QR_SEED_WIDTH = 40
# The QR route's lower bound on the smallest singular value is trusted only when the
# triangular factor is better conditioned than this (its inverse is then accurate to
# about 1e-10 relative).
_QR_CONDITION = 1e6


def _full_range_basis(residual: np.ndarray, threshold: float) -> np.ndarray | None:
    """An orthonormal basis of the whole range of ``residual`` (m x n, m >= n), or None
    (see :func:`_full_range_qr`)."""
    factors = _full_range_qr(residual, threshold)
    return None if factors is None else factors[0]


def _full_range_qr(residual: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray] | None:
    """``(W, T)`` with ``residual = W T``, W an orthonormal basis of its whole range (m x n,
    m >= n) and T upper triangular, or None.

    The SVD route keeps the left singular vectors whose singular values exceed
    ``threshold``. When the smallest singular value provably exceeds twice the threshold,
    it keeps all n, and any orthonormal basis of the range spans the same subspace: the
    sketch and the residual bound depend on that span only (a rotation W O of the
    extension rotates B = W^T A and leaves the small matrix's spectrum and the new basis
    [Q W] V unchanged). A Householder QR R = W T gives one at a third of the SVD's cost
    on 256 x 52, and s_min(R) = s_min(T) >= 1 / ||T^-1||_F. None (use the SVD) when that
    bound does not clear twice the threshold or T is too ill-conditioned to trust it.
    """
    n = residual.shape[1]
    qr, tau, _, info = _lapack.dgeqrf(residual)  # a column-major copy of the residual
    if info != 0:
        return None
    t = np.triu(qr[:n])
    inverse, info = _lapack.dtrtri(t)
    if info != 0:  # a zero on T's diagonal: rank-deficient
        return None
    inverse_norm = math.sqrt(np.einsum("ij,ij->", inverse, inverse))
    t_norm = math.sqrt(np.einsum("ij,ij->", t, t))
    smallest = 1.0 / inverse_norm if inverse_norm > 0.0 else 0.0
    if not (smallest > 2.0 * threshold and smallest * _QR_CONDITION > t_norm):  # also False on NaN
        return None
    basis, _, info = _lapack.dorgqr(qr, tau, overwrite_a=1)
    return (basis, t) if info == 0 else None


def _singular_values(matrix: np.ndarray) -> np.ndarray:
    """Singular values (descending) of a float64 matrix: numpy's gesdd gufunc without its
    wrapper, gesvd if it fails to converge (as :func:`_svd`)."""
    with _quiet():
        s = _umath_linalg.svd(matrix, signature="d->d")
    if s.size and s[0] != s[0]:
        s = scipy.linalg.svd(matrix, compute_uv=False, check_finite=False, lapack_driver="gesvd")
    return s


@dataclass
class Extension:
    """How a block A splits against an orthonormal basis Q.

    ``coords = Q^T A``, ``basis`` W (orthonormal, orthogonal to Q) spans the kept part of
    the residual, ``new_coords = W^T A``, and ``dropped`` = ||A - Q coords - W new_coords||_F.
    """

    coords: np.ndarray
    basis: np.ndarray
    new_coords: np.ndarray
    dropped: float


def extend_basis(
    q: np.ndarray, block: np.ndarray, tol: float, with_dropped: bool = False, norm2: float | None = None
) -> Extension:
    """Split ``block`` into its coordinates in ``q`` and an orthonormal extension basis.

    Parameters
    ----------
    q : ndarray, shape (m, k)
        Orthonormal columns (k may be 0).
    block : ndarray, shape (m, n)
    tol : float
        Residual directions with singular value <= ``tol * ||block||_F`` are dropped.
    with_dropped : bool
        Also compute the Frobenius norm of the part of ``block`` left outside span([q, W]).
    norm2 : float, optional
        ||block||_F^2 if already known.
    """
    coords = q.T @ block
    residual = _residual(q, block, coords)
    norm = math.sqrt(np.einsum("ij,ij->", block, block) if norm2 is None else norm2)
    threshold = _keep_threshold(norm, tol)
    if residual.shape[1] == 1:  # one column: no LAPACK call, and nothing to select
        u, s = _unit_column(residual)
        kept = u if s[0] > threshold else u[:, :0]
    else:
        kept = None
        if residual.shape[1] >= _QR_WIDTH and residual.shape[0] >= residual.shape[1]:
            kept = _full_range_basis(residual, threshold)
        if kept is None:
            u, s = _svd(residual)
            kept = u[:, s > threshold]  # (a column-major copy: products below depend on it bit for bit)
    if kept.shape[1]:
        kept = _orthogonal_to(q, kept)
    dropped = 0.0
    if with_dropped:
        # W^T A = W^T R + (W^T Q)(Q^T A), and W^T Q is roundoff: W^T R serves as the new
        # coordinates and as the kept part of the residual, one product for both
        new_coords = kept.T @ residual
        outside = (residual - kept @ new_coords).ravel(order="K")
        dropped = math.sqrt(outside.dot(outside))  # np.linalg.norm's arithmetic, without its wrapper
    else:
        new_coords = kept.T @ block
    return Extension(coords, kept, new_coords, dropped)


def _residual(q: np.ndarray, block: np.ndarray, coords: np.ndarray | None = None) -> np.ndarray:
    """``block`` less its part in span(q) (``coords``: q^T block, if at hand), by two
    Gram-Schmidt passes ("twice is enough")."""
    residual = block - q @ (q.T @ block if coords is None else coords)
    residual -= q @ (q.T @ residual)
    return residual


def _orthogonal_to(q: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """An orthonormal basis ``kept`` of residual directions with its roundoff along q
    projected out: singular vectors (or Q factors) of weak directions carry roundoff along q
    of size ~eps ||A|| / s_j, so it is removed, and ``kept`` re-orthonormalised if it was not
    negligible."""
    overlap = q.T @ kept
    kept = kept - q @ overlap
    if overlap.size and np.abs(overlap).max() > 1e-8:
        kept, _ = np.linalg.qr(kept)
    return kept


def _seed_total(seed: np.ndarray, total: float | None) -> float:
    """||M_seed||_F^2, or the given exact total when the seed columns are only a sketch
    (factors F with F F^T <= A A^T) of the real blocks."""
    return float(np.einsum("ij,ij->", seed, seed)) if total is None else float(total)


class _Bound:
    """Shared behaviour: exact ||M||_F^2 bookkeeping and the certified error."""

    rank: int
    total: float

    def lower_energy(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def error_bound(self) -> float:
        """Certified upper bound on the relative rank-r error of everything added."""
        return error_from_energy(self.lower_energy(), self.total)

    def add(self, block: np.ndarray, norm2: float | None = None) -> None:
        """Add ``block`` (m x n) unconditionally."""
        self._commit(self._propose(_as_float64(block), norm2))

    def try_add(self, block: np.ndarray, max_error: float, norm2: float | None = None) -> bool:
        """Add ``block`` only if the certified error then stays <= ``max_error``.

        Returns whether the block was added; on False the state is unchanged.
        """
        proposal = self._propose(_as_float64(block), norm2)
        if self._proposal_error(proposal) > max_error:
            return False
        self._commit(proposal)
        return True

    @staticmethod
    def _norm2(block: np.ndarray, norm2: float | None) -> float:
        return float(np.einsum("ij,ij->", block, block)) if norm2 is None else float(norm2)


class WeylBound(_Bound):
    """Seed bound ("max_norm"): E_r(M) >= E_r(M_seed) because adding columns never lowers
    singular values. The seed's top-r energy comes from its SVD.

    Parameters
    ----------
    seed : ndarray, shape (m, n_seed)
    rank : int
    """

    def __init__(self, seed: np.ndarray, rank: int, *, total: float | None = None):
        self.rank = check_rank(rank)
        seed = _as_float64(seed)
        # E_r of a seed of at most r columns is all its energy; a wider one needs its
        # spectrum, by the route the greedy's singleton groups take (for a tall seed, a Gram
        # eigen-solve without vectors: a quarter of an SVD's time on 256 x 52)
        if seed.shape[1] > self.rank:
            self._seed_energy = float(stacked_top_energy(seed[None], self.rank)[0])
        else:
            self._seed_energy = float(np.einsum("ij,ij->", seed, seed))
        self.total = _seed_total(seed, total)

    @classmethod
    def from_energy(cls, seed_energy: float, rank: int, total: float) -> WeylBound:
        """A seed bound from the seed's top-r energy, computed elsewhere (e.g. batched)."""
        bound = cls.__new__(cls)
        bound.rank, bound._seed_energy, bound.total = check_rank(rank), float(seed_energy), float(total)
        return bound

    def lower_energy(self) -> float:
        return self._seed_energy

    def _propose(self, block: np.ndarray, norm2: float | None) -> float:
        return self.total + self._norm2(block, norm2)

    def _proposal_error(self, total: float) -> float:
        return error_from_energy(self._seed_energy, total)

    def _commit(self, total: float) -> None:
        self.total = total

    def add_norms(self, norms2: np.ndarray) -> None:
        """Add blocks known only by their squared norms (all this bound needs)."""
        self.total += float(np.asarray(norms2, dtype=np.float64).sum())  # np.sum without its dispatch


class ResidualBound(_Bound):
    """Incremental residual bound ("residuals").

    Keeps an orthonormal basis Q of everything added (the seed's full range, then each
    residual's range) and the multiset of credited squared singular values. The lower
    bound is the sum of the r largest credited values.

    Parameters
    ----------
    seed : ndarray, shape (m, n_seed)
    rank : int
    tol : float
        Relative threshold below which residual directions are dropped (and not credited).
    """

    def __init__(
        self, seed: np.ndarray, rank: int, *, tol: float = DEFAULT_TOL, total: float | None = None, svd=None
    ):
        self.rank = check_rank(rank)
        self.tol = check_tol(tol)
        seed = _as_float64(seed)
        self.total = _seed_total(seed, total)
        threshold = _keep_threshold(np.sqrt(self.total), self.tol)
        # a seed whose every direction is kept needs only an orthonormal basis of its range
        # and its singular values: a QR seed = W T and the values of T (the same span and
        # values as the SVD's, see _full_range_basis): 60% of an SVD on 256 x 52, 65% on 384 x 32
        factors = None
        if svd is None and _QR_RESIDUAL_SEED_WIDTH <= seed.shape[1] <= seed.shape[0]:
            factors = _full_range_qr(seed, threshold)
        if factors is not None:
            self.basis, s = np.ascontiguousarray(factors[0]), _singular_values(factors[1])
        else:
            u, s = _svd(seed) if svd is None else svd
            self.basis = np.ascontiguousarray(u[:, s > threshold])
        self._room = None  # row-major (m, capacity) buffer whose first columns are the basis
        self.credited = s * s  # an array: every proposal concatenates it (a list was converted each time)

    def lower_energy(self) -> float:
        return top_energy(self.credited, self.rank)

    def _propose(self, block: np.ndarray, norm2: float | None):
        norm2 = self._norm2(block, norm2)
        ext = extend_basis(self.basis, block, self.tol, norm2=norm2)
        # singular values of W^T A: the energy of A inside the new orthogonal piece
        s2 = _squared_singular_values(ext.new_coords) if ext.basis.shape[1] else np.zeros(0)
        return self.total + norm2, ext.basis, s2

    def _proposal_error(self, proposal) -> float:
        total, _, s2 = proposal
        return error_from_energy(top_energy(np.concatenate((self.credited, s2)), self.rank), total)

    def _commit(self, proposal) -> None:
        total, basis, s2 = proposal
        self.total = total
        if basis.shape[1]:
            self.basis = self._appended(basis)
            self.credited = np.concatenate((self.credited, s2))

    def accept_run(self, columns: np.ndarray, offsets: np.ndarray, norms2: np.ndarray,
                   max_error: float) -> tuple[int, bool]:
        """:meth:`try_add` of the blocks of ``columns`` (side by side, boundaries ``offsets``,
        squared norms ``norms2``) one after another until one is refused, batched.

        The residuals of all of them against Q go through one Householder QR, R = W T (the
        block Gram-Schmidt the one-by-one extensions make): block j's residual against Q and
        the blocks before it is W_j T_jj, so its credited values are the squared singular
        values of T_jj and its new basis W_j span the same as the one-by-one route's. That
        holds while every direction is kept: the run stops before a block whose T_jj
        comes within twice the dropping threshold (``decided`` False: the caller tests
        that block one by one). Returns how many blocks were added, and whether the next
        one was refused by the bound (True) or left undecided."""
        n_blocks = len(norms2)
        basis = self.basis
        rows, k = basis.shape
        if columns.shape[1] > rows - k:  # more columns than the residual space holds
            n_blocks = int(np.searchsorted(offsets, rows - k, side="right")) - 1
            columns = columns[:, : offsets[n_blocks]]
        if not n_blocks:
            return 0, False
        qr, tau, _, info = _lapack.dgeqrf(_residual(basis, columns))
        if info != 0:
            return 0, False
        widths = np.diff(offsets[: n_blocks + 1])
        credited, total, added, columns_added = self.credited, self.total, 0, 0
        decided = False
        for j in range(n_blocks):
            lo, hi = int(offsets[j]), int(offsets[j + 1])
            diagonal = qr[lo:hi, lo:hi]
            s = np.abs(diagonal[0, :1]) if widths[j] == 1 else _singular_values(diagonal * _upper(hi - lo))
            if s.size == 0 or s[-1] <= 2.0 * _keep_threshold(math.sqrt(float(norms2[j])), self.tol):
                break
            proposed = np.concatenate((credited, s * s))
            if error_from_energy(top_energy(proposed, self.rank), total + float(norms2[j])) > max_error:
                decided = True
                break
            credited, total, added, columns_added = proposed, total + float(norms2[j]), j + 1, hi
        if added:
            kept, _, _ = _lapack.dorgqr(qr[:, :columns_added], tau[:columns_added], overwrite_a=1)
            self.basis = self._appended(_orthogonal_to(basis, kept))  # roundoff grown by T's conditioning
            self.credited, self.total = credited, total
        return added, decided

    def _appended(self, columns: np.ndarray) -> np.ndarray:
        """The basis with ``columns`` appended, as a view of a buffer with room to grow.

        Copying the whole basis for every added block made growing a group of k blocks
        cost O(m k^2). The view is row-major like a fresh array, so the products taken
        with it give the same bits."""
        rows, k = self.basis.shape
        n = columns.shape[1]
        if self._room is None or self._room.shape[1] < k + n:
            room = np.empty((rows, max(2 * (k + n), 16)))
            room[:, :k] = self.basis
            self._room = room
        self._room[:, k : k + n] = columns
        return self._room[:, : k + n]


@functools.lru_cache(maxsize=64)
def _upper(n: int) -> np.ndarray:
    """The n x n upper-triangular mask of ones (``np.triu`` builds one per call)."""
    return np.triu(np.ones((n, n)))


class GramSketch(_Bound):
    """Truncated Gram sketch ("approximate"): G = Q diag(lam) Q^T with G <= M M^T.

    Parameters
    ----------
    seed : ndarray, shape (m, n_seed)
    rank : int
    oversampling : int
        The sketch keeps at most ``rank + oversampling`` directions.
    tol : float
        Relative threshold below which residual directions are dropped.

    Attributes
    ----------
    basis : ndarray, shape (m, k)
        Orthonormal sketch basis Q, k <= rank + oversampling.
    eigenvalues : ndarray, shape (k,)
        lam, descending.
    slack : float
        Upper bound on the Frobenius norm of all energy dropped so far; the certified lower
        bound is ``(max(0, sqrt(sum of top r lam) - slack))^2``, valid by the triangle
        inequality for the Ky Fan (2, r) norm sqrt(E_r(.)).
    """

    def __init__(
        self,
        seed: np.ndarray | None,
        rank: int,
        *,
        oversampling: int = 5,
        tol: float = DEFAULT_TOL,
        rows: int | None = None,
        total: float | None = None,
        svd=None,
    ):
        self.rank = check_rank(rank)
        self.oversampling = check_nonnegative_int("oversampling", oversampling)
        self.tol = check_tol(tol)
        self.slack = 0.0
        if seed is None:
            if rows is None:
                raise ValueError("an empty sketch needs the number of rows")
            self.basis, self.eigenvalues, self.total = np.zeros((rows, 0)), np.zeros(0), 0.0
            return
        seed = _as_float64(seed)
        self.total = _seed_total(seed, total)
        threshold = _keep_threshold(np.sqrt(self.total), self.tol)
        if svd is None and _QR_SEED_WIDTH <= seed.shape[1] <= seed.shape[0] and self._seed_from_qr(seed, threshold):
            return
        u, s = _svd(seed) if svd is None else svd
        k = min(int(np.count_nonzero(s > threshold)), self.capacity)
        self.basis = np.ascontiguousarray(u[:, :k])
        self.eigenvalues = s[:k] ** 2

    def _seed_from_qr(self, seed: np.ndarray, threshold: float) -> bool:
        """The seed's sketch from a Householder QR seed = W T and the eigenpairs of T T^T,
        when every direction is kept (see :func:`_full_range_qr`; False otherwise).

        The SVD route keeps U_k diag(s_k^2) U_k^T, the top k = min(n, capacity) pairs of
        seed seed^T = W (T T^T) W^T; with T T^T = V diag(lam) V^T these are W V_k and lam_k
        (lam = s^2 up to roundoff), and W V_k is orthonormal. About 80% of the SVD's time
        on 256 x 52."""
        factors = _full_range_qr(seed, threshold)
        if factors is None:
            return False
        basis, t = factors
        lam, vecs = _eigh(t @ t.T)
        k = min(lam.size, self.capacity)
        self.basis = basis @ vecs[:, ::-1][:, :k]
        self.eigenvalues = np.maximum(lam[::-1][:k], 0.0)
        return True

    @property
    def capacity(self) -> int:
        return self.rank + self.oversampling

    @classmethod
    def from_parts(cls, basis, eigenvalues, total, rank, *, oversampling=5, tol=DEFAULT_TOL, slack=0.0):
        """Rebuild a sketch from stored parts (e.g. a checkpoint)."""
        sketch = cls(None, rank, oversampling=oversampling, tol=tol, rows=np.shape(basis)[0])
        sketch.basis = np.asarray(basis, dtype=np.float64)
        sketch.eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        sketch.total, sketch.slack = float(total), float(slack)
        return sketch

    def _sketch_energy(self, eigenvalues: np.ndarray, slack: float) -> float:
        head = float(_add_reduce(eigenvalues[: self.rank]))  # kept descending; ndarray.sum minus its wrappers
        # math's sqrt and Python's ** give np.sqrt's and numpy's ** bits (libm's pow, which
        # is not always x * x), without numpy scalar calls
        return max(0.0, math.sqrt(head) - slack) ** 2

    def lower_energy(self) -> float:
        return self._sketch_energy(self.eigenvalues, self.slack)

    def _propose(self, block: np.ndarray, norm2: float | None, extra_total: float | None = None):
        added = self._norm2(block, norm2) if extra_total is None else extra_total
        ext = extend_basis(self.basis, block, self.tol, with_dropped=True, norm2=added if extra_total is None else None)
        k = self.basis.shape[1]
        coords = np.concatenate((ext.coords, ext.new_coords))  # [Y; B], coordinates of the kept part
        small = coords @ coords.T
        small.flat[: k * (small.shape[0] + 1) : small.shape[0] + 1] += self.eigenvalues
        lam, vecs = _eigh(small)
        keep = min(self.capacity, lam.size)
        lam, vecs = np.maximum(lam[::-1][:keep], 0.0), vecs[:, ::-1][:, :keep]
        # the new basis [Q W] V is formed on commit only: a rejected proposal never needs it
        return self.total + added, (ext.basis, vecs), lam, self.slack + ext.dropped

    def _proposal_error(self, proposal) -> float:
        total, _, lam, slack = proposal
        return error_from_energy(self._sketch_energy(lam, slack), total)

    def _commit(self, proposal) -> None:
        total, (extension, vecs), lam, slack = proposal
        self.basis = np.concatenate((self.basis, extension), axis=1) @ vecs if lam.size else self.basis[:, :0]
        self.total, self.eigenvalues, self.slack = total, lam, slack

    def fold(self, columns: np.ndarray, norm2: float) -> None:
        """Add ``columns`` (of squared norm ``norm2``) unconditionally, without the
        rank-revealing extension :meth:`add` makes (half of its time on 64 columns).

        With N = [Q L^1/2, P] (P the columns), G + P P^T = N N^T. The top k eigenvectors
        V of the small Gram N^T N give B = N V with B B^T <= N N^T (V orthonormal), and a
        Householder QR B = W T gives the new sketch B B^T = W (T T^T) W^T in orthonormal
        form: basis W U and eigenvalues those of T T^T = U diag(lam) U^T. Nothing is
        dropped (the slack is unchanged) and the sketch keeps the top k directions of
        G + P P^T up to roundoff, as the extension's fold does."""
        columns = _as_float64(columns)
        values, vectors = _eigh(_sketch_gram(self, columns))
        keep = min(self.capacity, int(np.count_nonzero(values > 0.0)))
        if keep > columns.shape[0]:  # no thin QR of the kept directions: the extension's route
            self.add(columns, norm2)
            return
        factor = np.concatenate((self.basis * np.sqrt(self.eigenvalues), columns), axis=1) @ vectors[:, ::-1][:, :keep]
        qr, tau, _, info = _lapack.dgeqrf(factor) if keep else (None, None, None, 0)
        if info != 0:
            self.add(columns, norm2)
            return
        self.total += float(norm2)
        if not keep:
            self.basis, self.eigenvalues = self.basis[:, :0], np.zeros(0)
            return
        t = np.triu(qr[:keep])
        basis, _, _ = _lapack.dorgqr(qr, tau, overwrite_a=1)
        lam, turn = _eigh(t @ t.T)
        self.basis = np.ascontiguousarray(basis @ turn[:, ::-1])
        self.eigenvalues = np.maximum(lam[::-1], 0.0)

    def merge(self, other: GramSketch) -> GramSketch:
        """Sketch of the union of two *disjoint* groups, touching no data.

        G_self + G_other <= M_1 M_1^T + M_2 M_2^T, so ``other`` is added as the block
        Q_2 diag(sqrt(lam_2)) and the result truncated; slacks add. O(m k^2).
        """
        if other.basis.shape[0] != self.basis.shape[0]:
            raise ValueError(f"cannot merge sketches with {self.basis.shape[0]} and {other.basis.shape[0]} rows")
        merged = self.copy()
        pseudo_block = other.basis * np.sqrt(other.eigenvalues)
        total, parts, lam, slack = merged._propose(pseudo_block, None, extra_total=other.total)
        merged._commit((total, parts, lam, slack + other.slack))
        return merged

    def copy(self) -> GramSketch:
        return GramSketch.from_parts(
            self.basis.copy(), self.eigenvalues.copy(), self.total, self.rank,
            oversampling=self.oversampling, tol=self.tol, slack=self.slack,
        )


def _inside_energies(basis: np.ndarray, columns: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """||basis^T A_i||_F^2 of every block A_i of ``columns`` (blocks side by side, boundaries
    ``offsets``, every block at least one column): one product for all of them."""
    inside = basis.T @ columns
    return np.add.reduceat(np.einsum("ij,ij->j", inside, inside), offsets[:-1])


# The exact Gram route's energies are credited less this fraction of the group's energy: the
# roundoff of the Gram sums (about n u for n columns) and of the Ritz basis's orthonormality
# is far below it, and it is far below any useful eps^2.
_GRAM_MARGIN = 1e-9


class _MarginCertified(_Bound):
    """A state whose certificate ``energy`` is exact up to roundoff, credited
    ``_GRAM_MARGIN`` of the group's energy less (:class:`ExactGram`, :class:`FactorSketch`)."""

    energy: float

    def __init__(self, seed: np.ndarray, rank: int, oversampling: int, total: float | None) -> None:
        self.rank, self.oversampling = check_rank(rank), check_nonnegative_int("oversampling", oversampling)
        self.total = _seed_total(seed, total)

    def lower_energy(self) -> float:
        return max(0.0, self.energy - _GRAM_MARGIN * self.total)

    def _sketch(self, basis: np.ndarray, eigenvalues: np.ndarray) -> GramSketch:
        """The group's :class:`GramSketch` from orthonormal ``basis`` and ``eigenvalues``,
        with the margin as slack ((sqrt(E) - sqrt(d))^2 <= E - d for d <= E)."""
        return GramSketch.from_parts(basis, eigenvalues, self.total, self.rank, oversampling=self.oversampling,
                                     slack=math.sqrt(_GRAM_MARGIN * self.total))


class ExactGram(_MarginCertified):
    """The greedy's "approximate" bound on blocks of few rows: the group's exact Gram matrix.

    Where the m x m Gram matrix G = M M^T is small next to the sketch's work per block (m
    at most a few times r + p + the block width), it is kept exactly (blocks are added by
    rank-k updates, batched), together with k = r + p orthonormal directions V of which the
    first r, W, certify: for any orthonormal W, E_r(M) >= tr(W^T M M^T W) (Ky Fan). A
    candidate A is accepted

    * by the *cheap test*, tr(W^T G W) + ||W^T A||_F^2 with W fixed (one small product);
    * else by the *Ritz test*: the top-r Ritz values of G + A A^T on span(V, A) (a QR and a
      (k + width)-sized eigen-solve), which also refresh V;
    * else by the *exact test*: the top r eigenvalues of G + A A^T, the best certificate
      there is, so a rejection means the group's exact rank-r error with A exceeds eps.

    Every certificate is exact up to roundoff, covered by crediting ``_GRAM_MARGIN`` of the
    group's energy less; so the group takes at least what the block-by-block sketch
    (:class:`GramSketch`, whose energy never exceeds the exact one) would at each step.

    Parameters
    ----------
    seed : ndarray, shape (m, n_seed)
    rank : int
    oversampling : int
    total : float, optional
        The seed's exact squared norm (computed when None).
    svd : tuple, optional
        The seed's ``(U, s)`` when the caller has it.
    """

    def __init__(self, seed: np.ndarray, rank: int, *, oversampling: int = 5, total: float | None = None, svd=None):
        seed = _as_float64(seed)
        super().__init__(seed, rank, oversampling, total)
        self.gram = _blas.dsyrk(1.0, seed, trans=0, lower=1)  # the lower triangle holds G
        u, sv = _svd(seed) if svd is None else svd
        self.basis = np.ascontiguousarray(u[:, : self.rank + self.oversampling])
        self.energy = float(_add_reduce(sv[: self.rank] ** 2))  # tr(W^T G W), W = basis[:, :r]
        self.pending: list[np.ndarray] = []  # accepted by the cheap test, not yet in G

    def gains(self, columns: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """||W^T A||_F^2 of each block of ``columns`` (blocks side by side), one product."""
        return _inside_energies(self.basis[:, : self.rank], columns, offsets)

    def cheap_run(self, gains: np.ndarray, norms2: np.ndarray, max_error: float) -> int:
        """How many of the blocks (in order) the cheap test accepts one after another."""
        energy = self.energy + np.cumsum(gains)
        total = self.total + np.cumsum(norms2)
        fails = energy - _GRAM_MARGIN * total < (1.0 - max_error * max_error) * total
        return int(np.argmax(fails)) if fails.any() else len(fails)

    def accept(self, blocks: list[np.ndarray], gains: np.ndarray, norms2: np.ndarray) -> None:
        """Add blocks the cheap test accepted (W unchanged): a list of blocks, or of runs of
        them side by side."""
        self.pending += blocks
        self.energy += float(gains.sum())
        self.total += float(norms2.sum())

    def _folded(self) -> np.ndarray:
        """G with the pending blocks added (one rank-k update per accepted run, read where
        the cheap test gathered it: no copy)."""
        for columns in self.pending:
            self.gram = _blas.dsyrk(1.0, columns, beta=1.0, c=self.gram, trans=0, lower=1, overwrite_c=1)
        self.pending = []
        return self.gram

    def try_solve(self, block: np.ndarray, max_error: float, norm2: float) -> bool:
        """The Ritz test, then the exact test, of ``block``; on False the state keeps G and V."""
        # G + A A^T in the lower triangle, which is all the eigen-solvers and dsymm read
        gram = _blas.dsyrk(1.0, block, beta=1.0, c=self._folded(), trans=0, lower=1)
        total = self.total + float(norm2)
        floor = (1.0 - max_error * max_error + _GRAM_MARGIN) * total
        rows, k = gram.shape[0], self.basis.shape[1]
        if k + block.shape[1] < rows:  # Ritz values on span(V, A)
            trial, _ = np.linalg.qr(np.concatenate((self.basis, block), axis=1))
            values, vectors = _eigh(trial.T @ _blas.dsymm(1.0, gram, trial, lower=1))
            if float(_add_reduce(values[-self.rank :])) >= floor:
                self._take(gram, total, trial @ vectors[:, ::-1][:, : self.rank + self.oversampling], values[::-1])
                return True
        values = _eigenvalues(gram)  # values only: most exact tests end a group
        if values is None or float(_add_reduce(values[-self.rank :])) < floor:
            return False
        values, vectors = _eigh(gram)
        self._take(gram, total, vectors[:, ::-1][:, : self.rank + self.oversampling], values[::-1])
        return True

    def _take(self, gram: np.ndarray, total: float, basis: np.ndarray, values: np.ndarray) -> None:
        self.gram, self.total = gram, total
        self.basis = np.ascontiguousarray(basis)
        self.energy = float(_add_reduce(np.maximum(values[: self.rank], 0.0)))

    def settled(self) -> GramSketch:
        """A :class:`GramSketch` of the group: G's top r + p eigenpairs (see :meth:`_sketch`)."""
        values, vectors = _eigh(self._folded())  # the lower triangle
        keep = min(self.rank + self.oversampling, values.size)
        return self._sketch(vectors[:, ::-1][:, :keep], np.maximum(values[::-1][:keep], 0.0))


class FactorSketch(_MarginCertified):
    """The greedy's "approximate" bound on wide blocks: the sketch as a factor.

    The sketch is kept as G = F F^T with F (m x k, k <= r + p) not orthonormal: for the
    group's factor and a candidate A side by side, N = [F, A], F' = N V_k with V_k the top
    k eigenvectors of the small Gram N^T N = [[F^T F, F^T A], [A^T F, A^T A]], whose top k
    eigenvalues lam are those of F' F'^T. Then F' F'^T = N V_k V_k^T N^T <= N N^T <= M M^T,
    so E_r(M) >= E_r(F' F'^T) = the top r of lam, and F'^T F' = diag(lam) stands for F'^T F'
    in the next Gram. The test of a candidate is one (k + width)-sized eigen-solve (values
    only where rejections are common): no rank-revealing extension of the block against an
    orthonormal basis (two thirds of :class:`GramSketch`'s proposal on 256 x 52 blocks) and
    nothing dropped, so it credits at least what the sketch does. The seed is treated the
    same way (N = the seed): a Gram eigen-solve instead of its QR or SVD, or its top k
    factor U_k S_k when its SVD is at hand (the residual order's).

    The Gram sums, the eigen-solver and diag(lam) in place of F^T F are exact up to
    roundoff of about (k + width) u ||M||_F^2, covered by crediting ``_GRAM_MARGIN`` of the
    group's energy less (as :class:`ExactGram`).

    Parameters
    ----------
    seed, rank, oversampling, total, svd
        As for :class:`ExactGram` (``svd``: the residual order's, when it has one).
    """

    def __init__(self, seed: np.ndarray, rank: int, *, oversampling: int = 5, total: float | None = None, svd=None):
        seed = _as_float64(seed)
        super().__init__(seed, rank, oversampling, total)
        self._unsolved = None  # a block accepted, not yet in the factor (see try_add)
        if svd is None:
            self._take(seed, _blas.dsyrk(1.0, seed, trans=1, lower=1))
            return
        u, sv = svd  # the seed's own top k factor U_k S_k: F F^T = U_k S_k^2 U_k^T <= seed seed^T
        keep = min(self.rank + self.oversampling, int(np.count_nonzero(sv > 0.0)))
        self.factor, self.eigenvalues = u[:, :keep] * sv[:keep], sv[:keep] ** 2
        self.energy = float(_add_reduce(self.eigenvalues[: self.rank]))

    def _gram(self, block: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
        """The lower triangle of N^T N, N = [F, A] (``own``: that of A^T A, if at hand)."""
        return _lower_gram(self.eigenvalues, block.T @ self.factor,
                           _blas.dsyrk(1.0, block, trans=1, lower=1) if own is None else own)

    def try_add(self, block: np.ndarray, max_error: float, norm2: float | None = None,
                values_first: bool = False, solve: bool = True) -> bool:
        """Add ``block`` if the group's certified error with it is at most ``max_error``.

        ``values_first``: refusals are likely; solve for eigenvalues alone first (a
        rejection then costs less than half the solve with vectors), after the inertia
        screen (:func:`_surely_short`).

        ``solve=False``: the next candidate is likely refused. On acceptance, the new
        factor is left unsolved (no eigenvectors) until it is needed; the next candidate A'
        is then first screened on the Gram of [F, A, A']: E_r(F' F'^T + A' A'^T) <=
        E_r(F F^T + A A^T + A' A'^T) since F' F'^T <= F F^T + A A^T, so a candidate refused
        there is refused by the factor F' too, and a group that ends at A' never solves for
        F'. Unless refusals are likely here too, A is first tested by the Ky Fan split bound
        E_r(F F^T + A A^T) >= E_(r-j)(F F^T) + E_j(A A^T) for every j (the span of both top
        parts has rank <= r), from F's eigenvalues and A's own (an eigen-solve of A^T A,
        half the joint one): in norm order a group's last candidate usually comes from
        another subspace, where the bound is nearly exact."""
        block = _as_float64(block)
        total = self.total + self._norm2(block, norm2)
        floor = (1.0 - max_error * max_error + _GRAM_MARGIN) * total
        own = _blas.dsyrk(1.0, block, trans=1, lower=1)
        if self._unsolved is not None:
            if _surely_short(self._unsolved_gram(block, own), self.rank, floor, _GRAM_MARGIN * total):
                return False
            self._solve()
        if not (values_first or solve):
            split = _split_energy(self.eigenvalues, _eigenvalues(own), self.rank)
            if split >= floor:
                self._unsolved, self.energy, self.total = (block, own), split, total
                return True
        gram = self._gram(block, own)
        if solve and not values_first:  # acceptance likely, and the factor wanted: one solve
            return self._take(np.concatenate((self.factor, block), axis=1), gram, total=total, floor=floor)
        if values_first and _surely_short(gram, self.rank, floor, _GRAM_MARGIN * total):
            return False
        values = _eigenvalues(gram)
        if values is None or float(_add_reduce(values[-self.rank :])) < floor:
            return False
        if solve:
            return self._take(np.concatenate((self.factor, block), axis=1), gram, total=total)
        self._unsolved = (block, own)
        self.energy, self.total = float(_add_reduce(np.maximum(values[-self.rank :], 0.0))), total
        return True

    def _unsolved_gram(self, block: np.ndarray, own: np.ndarray) -> np.ndarray:
        """The lower triangle of the Gram of [F, A, A'], A the unsolved block (its A^T A
        known), A' = ``block`` (``own``: A'^T A')."""
        pending, pending_own = self._unsolved
        both = np.concatenate((pending, block), axis=1)
        return _lower_gram(self.eigenvalues, both.T @ self.factor, _lower_gram(pending_own, block.T @ pending, own))

    def _solve(self) -> None:
        """The factor of an acceptance left unsolved (see :meth:`try_add`)."""
        if self._unsolved is not None:
            (block, own), self._unsolved = self._unsolved, None
            self._take(np.concatenate((self.factor, block), axis=1), self._gram(block, own))

    def add(self, block: np.ndarray, norm2: float | None = None) -> None:
        block = _as_float64(block)
        self._solve()
        self._take(np.concatenate((self.factor, block), axis=1), self._gram(block),
                   total=self.total + self._norm2(block, norm2))

    def _take(self, columns: np.ndarray, gram: np.ndarray, total: float | None = None, floor: float = -math.inf) -> bool:
        """F = ``columns`` V_k from the eigenpairs of ``gram`` (their lower triangle), if the
        top r eigenvalues reach ``floor``; returns whether they did."""
        values, vectors = _eigh(gram)
        values = np.maximum(values[::-1], 0.0)
        energy = float(_add_reduce(values[: self.rank]))
        if energy < floor:
            return False
        keep = min(self.rank + self.oversampling, int(np.count_nonzero(values)))
        self.factor = columns @ vectors[:, ::-1][:, :keep]
        self.eigenvalues, self.energy = values[:keep], energy
        if total is not None:
            self.total = total
        return True

    def settled(self) -> GramSketch:
        """A :class:`GramSketch` of the group: an orthonormal basis of F's range and F F^T's
        eigenvalues, from F's SVD (see :meth:`_sketch`)."""
        self._solve()
        u, s = _svd(self.factor) if self.factor.shape[1] else (self.factor, np.zeros(0))
        keep = int(np.count_nonzero(s > 0.0))
        return self._sketch(np.ascontiguousarray(u[:, :keep]), s[:keep] ** 2)


def _split_energy(values: np.ndarray, own: np.ndarray | None, rank: int) -> float:
    """max over j of E_(rank-j) of ``values`` + E_j of ``own`` (both eigenvalues of PSD
    matrices; ``values`` descending, ``own`` ascending as the solvers give them, or None:
    0). A lower bound on E_rank of the sum of the two matrices."""
    if own is None:
        return 0.0
    first = np.concatenate(([0.0], np.cumsum(values[:rank])))
    second = np.concatenate(([0.0], np.cumsum(own[::-1][:rank])))
    j = np.arange(min(rank, second.size - 1) + 1)
    return float(np.max(first[np.minimum(rank - j, first.size - 1)] + second[j]))


# The inertia screen (see _surely_short) looks for this many eigenvalues past the top r.
_SHORT_EXTRA = 4


def _surely_short(gram: np.ndarray, rank: int, floor: float, margin: float) -> bool:
    """Whether the top ``rank`` eigenvalues of ``gram`` (lower triangle) certainly sum to
    less than ``floor``, found from one symmetric indefinite factorization (a quarter of an
    eigenvalue solve on 77 x 77) instead of the spectrum; False means "unknown".

    With t the trace, E_r = t - (the eigenvalues past the top r), so E_r < floor when
    q of them exceed (t - floor) / q. Sylvester's law of inertia counts the eigenvalues
    above tau as the positive pivots of the LDL^T factorization of gram - tau I (each
    2 x 2 pivot holds one positive and one negative eigenvalue). ``margin`` raises tau
    above the factorization's roundoff, so the answer holds for the exact matrix."""
    n = gram.shape[0]
    if n <= rank:
        return False
    extra = min(_SHORT_EXTRA, n - rank)
    budget = float(np.trace(gram)) - floor
    if budget < 0.0:
        return True
    shifted = np.array(gram, order="F")
    shifted.flat[:: n + 1] -= budget / extra + margin
    factor, pivots, info = _lapack.dsytrf(shifted, lower=1, overwrite_a=1)
    if info < 0:
        return False
    paired = pivots < 0
    above = int(np.count_nonzero((np.diagonal(factor) > 0.0) & ~paired)) + int(np.count_nonzero(paired)) // 2
    return above >= rank + extra


# A block's energy inside a fixed basis (see LazySketch) is credited less this fraction of its
# whole energy: the roundoff of the product and of the basis's orthonormality, ~1e-14,
# is far below it, and it is far below any useful eps^2.
_GAIN_MARGIN = 1e-12


class LazySketch(_Bound):
    """The greedy's Gram sketch ("approximate"), solved only when cheap bounds fail.

    A :class:`GramSketch` (Q, lam, slack) of the blocks *folded* so far, and the blocks
    accepted since (*pending*, P). Two certified lower bounds on E_r of the group:

    * through the sketch's top-r basis U = Q[:, :r]: for any orthonormal U of r columns
      E_r(M) >= ||U^T M||_F^2 (Ky Fan), ||U^T M||_F^2 = ||U^T M_folded||_F^2 + ||U^T P||_F^2
      and ||U^T M_folded||_F >= sqrt(sum of the top r lam) - slack (as in
      :meth:`GramSketch.lower_energy`), so ``floor + gain`` =
      (sqrt(top r lam) - slack)^2 + sum over pending ||U^T A||_F^2 is certified: accepting
      a block by it (:meth:`cheap_run`) costs one small product;
    * ``exact``, the last *eigenvalue test* passed (:meth:`try_exact`): the sketch's factor
      rows and the pending blocks side by side, F = [Q lam^1/2, P, A], have
      F F^T = G + P P^T + A A^T <= M~ M~^T (M~ the group less what the sketch dropped,
      ||M - M~||_F <= slack), so E_r(M) >= (sqrt(E_r(F F^T)) - slack)^2, with E_r(F F^T)
      the top r eigenvalues of the small Gram F^T F (no extension, no eigenvectors). Adding
      blocks never lowers E_r, so it stays a bound as the group grows.

    ``lower_energy()`` is the larger. The eigenvalue test certifies at least what folding
    P and A into the sketch would (the fold keeps a compression of G + P P^T + A A^T and
    only adds slack), so folds are only made to refresh U and keep the pending blocks few
    (:meth:`settled`, one :meth:`GramSketch.fold`: an eigen-solve of the sketch's factor
    and all of them side by side, and a QR of the kept directions): the truncated sketch
    and its slack stay the bound's backbone.

    Parameters
    ----------
    sketch : GramSketch
        The seed's sketch; it is owned (and updated) by this object.
    """

    def __init__(self, sketch: GramSketch):
        self.sketch, self.rank, self.total = sketch, sketch.rank, sketch.total
        self.exact = 0.0
        self._reset_pending()

    def _reset_pending(self) -> None:
        sketch = self.sketch
        self.pending: list[np.ndarray] = []
        self.pending_columns = 0
        self.pending_norm2 = 0.0  # sum of the pending blocks' energies, credited or not
        self.head = sketch.basis[:, : self.rank]
        self.floor, self.gain = sketch.lower_energy(), 0.0

    def lower_energy(self) -> float:
        return max(self.floor + self.gain, self.exact)

    def gains(self, columns: np.ndarray, offsets: np.ndarray, norms2: np.ndarray) -> np.ndarray:
        """The certified energy ||U^T A||_F^2 (less the margin) of each block of ``columns``
        (blocks side by side, boundaries ``offsets``, energies ``norms2``), one product."""
        if not self.head.shape[1] or not columns.shape[1]:
            return np.zeros(len(norms2))
        return np.maximum(_inside_energies(self.head, columns, offsets) - _GAIN_MARGIN * norms2, 0.0)

    def cheap_run(self, gains: np.ndarray, norms2: np.ndarray, max_error: float) -> int:
        """How many of the blocks (in order) the bounds accept one after another without a
        solve: the first index whose running error bound exceeds ``max_error``, or all.

        The running sums are the ones :meth:`accept` forms, in the same order (same bits),
        and the error is :func:`error_from_energy`'s arithmetic."""
        energy = np.maximum(self.floor + np.cumsum(np.concatenate(([self.gain], gains)))[1:], self.exact)
        total = np.cumsum(np.concatenate(([self.total], norms2)))[1:]
        with np.errstate(divide="ignore", invalid="ignore"):
            error = np.where(total > 0.0, np.sqrt(np.maximum(0.0, 1.0 - energy / total)), 0.0)
        fails = error > max_error
        return int(np.argmax(fails)) if fails.any() else len(fails)

    def accept(self, blocks: list[np.ndarray], gains: np.ndarray, norms2: np.ndarray) -> None:
        """Add blocks that :meth:`cheap_run` accepted (their gains and energies), unsolved: a
        list of blocks, or of runs of them side by side."""
        self.pending += blocks
        self.pending_columns += sum(block.shape[1] for block in blocks)
        for g, n in zip(gains.tolist(), norms2.tolist()):  # sequential sums, as cheap_run's
            self.gain += g
            self.total += n
            self.pending_norm2 += n

    def _gain(self, block: np.ndarray, norm2: float) -> np.ndarray:
        return self.gains(block, np.array([0, block.shape[1]]), np.array([norm2]))

    def add(self, block: np.ndarray, norm2: float | None = None) -> None:
        """Add ``block`` unconditionally (pending, credited through U)."""
        block = _as_float64(block)
        norm2 = self._norm2(block, norm2)
        self.accept([block], self._gain(block, norm2), np.array([norm2]))

    def try_add(self, block: np.ndarray, max_error: float, norm2: float | None = None) -> bool:
        """The cheap test, then (if it fails) the eigenvalue test; on False the state is
        unchanged."""
        block = _as_float64(block)
        norm2 = self._norm2(block, norm2)
        gain = self._gain(block, norm2)
        if self.cheap_run(gain, np.array([norm2]), max_error):
            self.accept([block], gain, np.array([norm2]))
            return True
        return self.try_exact(block, max_error, norm2, float(gain[0]))

    def try_exact(self, block: np.ndarray, max_error: float, norm2: float, gain: float) -> bool:
        """Add ``block`` (pending; ``gain`` its energy inside U, from :meth:`gains`) if the
        eigenvalue test certifies the group with it; on False the state is unchanged."""
        columns = np.concatenate(self.pending + [block], axis=1) if self.pending else block
        energy, _ = _sketch_ceiling(self.sketch, columns)
        if energy is None:  # the eigenvalue solver failed: no certificate
            return False
        certified = max(0.0, math.sqrt(energy) - self.sketch.slack) ** 2
        if error_from_energy(certified, self.total + float(norm2)) > max_error:
            return False
        self.accept([block], np.array([gain]), np.array([float(norm2)]))
        self.exact = max(self.exact, certified)
        return True

    def settled(self) -> GramSketch:
        """The sketch with every pending block folded in (unconditionally): a
        :class:`GramSketch` of the whole group, for merges and checkpoints, and a fresh
        basis U for the cheap test."""
        if self.pending:
            self.sketch.fold(np.concatenate(self.pending, axis=1), self.pending_norm2)
            self.sketch.total = self.total
            self._reset_pending()
        return self.sketch


# Screens (see surely_exceeds) reject only when the cheap energy, raised by this fraction of
# its matrix's trace, still fails: far above the roundoff that separates the two solves.
_SCREEN_MARGIN = 1e-8


def surely_exceeds(bound, block: np.ndarray, max_error: float, norm2: float) -> bool:
    """Whether adding ``block`` certainly puts the bound's error above ``max_error``.

    True only where ``bound.try_add(block, max_error, norm2)`` would return False, found
    with eigenvalues alone, without the proposal's rank-revealing extension and
    eigenvectors (a fifth of its time on 256 x 52 blocks): a rejected proposal builds
    nothing that is kept. False means "unknown": the caller makes the proposal.

    Both bounds credit the energy of ``block`` inside a subspace of the span of the
    residual R = A - Q Q^T A, so they credit at most what the residual's whole span gives:

    * sketch: the proposal's eigenvalues are those of [[L, L^1/2 Y], [Y^T L^1/2, Y^T Y +
      B^T B]] (L the eigenvalues, Y = Q^T A, B = W^T A the extension's coordinates), and
      B^T B <= R^T R = A^T A - Y^T Y, so they are at most those of the Gram of
      [Q L^1/2, A]; the slack only grows;
    * residual bound: the credited values s(B)^2 are at most the eigenvalues of R^T R.

    (A :class:`LazySketch`'s eigenvalue test costs what this screen does: not screened.)
    """
    if isinstance(bound, GramSketch):
        energy, trace = _sketch_ceiling(bound, _as_float64(block))
        slack = bound.slack
    elif isinstance(bound, ResidualBound):
        energy, trace = _residual_ceiling(bound, _as_float64(block))
        slack = 0.0
    else:
        return False
    if energy is None:
        return False
    ceiling = max(0.0, math.sqrt(energy + _SCREEN_MARGIN * trace) - slack) ** 2
    return error_from_energy(ceiling, bound.total + float(norm2)) > max_error


def _eigenvalues(matrix: np.ndarray) -> np.ndarray | None:
    """Eigenvalues of a symmetric matrix (lower triangle), clipped at 0; None if the solver
    fails or the matrix holds NaN (the caller then makes the proposal, which raises or
    copes as it always did)."""
    with _quiet():  # numpy's gufunc without its wrapper (as _eigh): most screens are small
        values = _umath_linalg.eigvalsh_lo(matrix, signature="d->d")
    return None if values.size and values[0] != values[0] else np.maximum(values, 0.0)  # NaN: failed


def _lower_gram(leading: np.ndarray, cross: np.ndarray, trailing: np.ndarray) -> np.ndarray:
    """The lower triangle of the Gram of [X, Y] from its blocks: ``leading`` X^T X (its
    diagonal when 1-D, X^T X being diagonal), ``cross`` Y^T X and ``trailing`` Y^T Y (lower
    triangles suffice: the eigen-solvers and factorizations read no more)."""
    k, n = cross.shape[1], cross.shape[0]
    gram = np.zeros((k + n, k + n))
    if leading.ndim == 1:
        gram.flat[: k * (k + n + 1) : k + n + 1] = leading
    else:
        gram[:k, :k] = leading
    gram[k:, :k] = cross
    gram[k:, k:] = trailing
    return gram


def _sketch_gram(sketch: GramSketch, block: np.ndarray) -> np.ndarray:
    """The Gram of [Q L^1/2, A] (lower triangle; Q^T Q = I, so its leading block is L)."""
    lam = sketch.eigenvalues
    return _lower_gram(lam, (block.T @ sketch.basis) * np.sqrt(lam), block.T @ block)


def _sketch_ceiling(sketch: GramSketch, block: np.ndarray) -> tuple[float | None, float]:
    """Top-r energy of G + A A^T, from the Gram of [Q L^1/2, A] (lower triangle), and its trace."""
    gram = _sketch_gram(sketch, block)
    values = _eigenvalues(gram)
    return (None if values is None else float(values[-sketch.rank :].sum())), float(np.trace(gram))


def _residual_ceiling(bound: ResidualBound, block: np.ndarray) -> tuple[float | None, float]:
    """Top-r of the credited values and the eigenvalues of R^T R = A^T A - Y^T Y, and the
    total of both."""
    gram, coords = block.T @ block, bound.basis.T @ block
    values = _eigenvalues(gram - coords.T @ coords)
    trace = float(bound.credited.sum()) + float(np.trace(gram))
    return (None if values is None else top_energy(np.concatenate((bound.credited, values)), bound.rank)), trace


def make_bound(
    method: str,
    seed: np.ndarray,
    rank: int,
    *,
    oversampling: int = 5,
    tol: float = DEFAULT_TOL,
    total: float | None = None,
    svd: tuple[np.ndarray, np.ndarray] | None = None,
):
    """Build the bound state named by ``method`` ("max_norm", "residuals", "approximate").

    ``total`` overrides ||seed||_F^2 when the seed columns are a sketch of the real blocks.
    ``svd`` is the seed's (left singular vectors, singular values) from ``_svd`` when the
    caller already has them (the residual order needs them too); the seed bound, which
    needs no singular vectors, computes its own spectrum more cheaply.
    """
    if method == "max_norm":
        return WeylBound(seed, rank, total=total)
    if method == "residuals":
        return ResidualBound(seed, rank, tol=tol, total=total, svd=svd)
    if method == "approximate":
        return GramSketch(seed, rank, oversampling=oversampling, tol=tol, total=total, svd=svd)
    raise ValueError(f"unknown method {method!r}; expected one of 'max_norm', 'residuals', 'approximate'")
