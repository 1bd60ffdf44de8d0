"""Exact certification and compression kernels, free of Dask and storage.

Both modes end with these: the distributed stages (:mod:`pipeline.distributed`) on
workers, batch by batch, and the in-memory compressor of the sequential mode
(:mod:`pipeline.distributed.compress`).

* :func:`projected_partials` / :func:`combine_projected` / :func:`certify_projected` -
  the Rayleigh-Ritz route: each group's data projected on the orthonormal basis Q of its
  clustering sketch (k = r + p columns), its k x k Gram and exact energy summed over
  batches in a fixed order; the best rank-r basis inside span(Q) and its exact error;
* :func:`gram_partials` / :func:`combine_partials` / :func:`certify_partial` /
  :func:`certify_gram` - exact per-group spectra from Gram matrices (or, for groups of few
  columns, the columns themselves) summed over batches in a fixed order;
* :func:`group_coefficients` - the compressed coefficients of a batch against group
  bases, with the residual of what is stored (rounded to the data's dtype).

Groups are taken at their magnitude shift (:mod:`pipeline.magnitude`) when one is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from .layout import offsets_of, segment_sums, take_columns
from .magnitude import rescale
from .spectra import adaptive_rank

__all__ = [
    "projected_partials",
    "combine_projected",
    "certify_projected",
    "gram_partials",
    "combine_partials",
    "partial_gram",
    "gram",
    "certify_partial",
    "certify_gram",
    "group_coefficients",
    "GramCertificate",
]


def _blocks_by_label(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(label, its block positions in order) for every label >= 0, from one stable sort."""
    order = np.argsort(labels, kind="stable")
    order = order[labels[order] >= 0]
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return [(int(labels[part[0]]), part) for part in np.split(order, cuts) if part.size]


def _at_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """``2^-shift x``: a group's columns at its magnitude shift (``x`` itself when 0)."""
    return x if shift == 0 else rescale(x, -shift)


def _shift_of(group_shifts: np.ndarray | None, label: int) -> int:
    return 0 if group_shifts is None else int(group_shifts[label])


def projected_partials(
    data: np.ndarray, offsets: np.ndarray, labels: np.ndarray, bases: dict, group_shifts: np.ndarray | None = None
) -> dict[int, tuple[np.ndarray, float]]:
    """Per group label (>= 0) present in a batch: (P P^T, ||X||_F^2) with X the group's
    columns (at its shift, float64) and P = Q^T X, Q = ``bases[label]`` (m x k, orthonormal
    columns). k x k numbers per group, however many columns: these partials cost the
    network almost nothing. Add them up with :func:`combine_projected`."""
    out = {}
    for label, blocks in _blocks_by_label(labels):
        x = _at_shift(take_columns(data, offsets, blocks).astype(np.float64), _shift_of(group_shifts, label))
        p = np.asarray(bases[label], dtype=np.float64).T @ x
        out[label] = (p @ p.T, float(np.einsum("ij,ij->", x, x)))
    return out


def combine_projected(left: dict, right: dict) -> dict:
    """Sum two :func:`projected_partials` results group by group, ``left`` first (callers
    fix the order: it is part of the bits). Neither input is modified."""
    out = dict(left)
    for label, (h, total) in right.items():
        if label in out:
            out[label] = (out[label][0] + h, out[label][1] + total)
        else:
            out[label] = (h, total)
    return out


def certify_projected(part: tuple[np.ndarray, float], basis: np.ndarray, rank: int,
                      eps: float) -> GramCertificate | None:
    """Rayleigh-Ritz certificate of one group from its summed projected partial, or None
    when it cannot certify eps.

    With H = Q^T M M^T Q (k x k) and theta its eigenvalues, descending, the basis
    W_j = Q V_j (V_j: the top j eigenvectors of H) is the best rank-j basis inside
    span(Q), and its error is exactly ``||M||^2 - sum(theta[:j])``: an upper bound on the
    exact rank-j error, equal to it when span(Q) holds the group's top-j left singular
    subspace. Q being the basis of the group's clustering sketch, whose certified bound
    is <= eps, W_r meets eps in exact arithmetic; when roundoff, or a sketch that holds
    too little, says otherwise the result is None and the caller certifies the group from
    its Gram (:func:`certify_partial`).

    The error is ``total - head`` as for :func:`certify_gram`, with absolute error about
    ``k * eps_mach * ||M||^2``, and the adaptive rank keeps the same 1e-9 relative margin
    on the energy.
    """
    h, total = part
    basis = np.asarray(basis, dtype=np.float64)
    if total <= 0.0:
        return GramCertificate(0.0, 0, np.zeros((basis.shape[0], 0)))
    theta, vecs = np.linalg.eigh(h)
    theta, vecs = np.clip(theta[::-1], 0.0, None), vecs[:, ::-1]
    error, r_c = _error_and_rank(theta, total, rank, eps)
    if r_c is None:
        return None
    return GramCertificate(error, r_c, np.ascontiguousarray(basis @ vecs[:, :r_c]))


def _error_and_rank(values: np.ndarray, total: float, rank: int, eps: float) -> tuple[float, int | None]:
    """From the top eigenvalues of a group's Gram (descending, clipped at 0) and its total
    energy: the relative error at rank ``min(rank, len(values))``, ``total - head`` with
    absolute error about ``rank * eps_mach * total``; and the smallest rank whose left-out
    energy meets eps with a 1e-9 relative margin on the energy, so that the basis computed
    from the same numbers meets eps when used (None: no rank up to that one does)."""
    tails = np.concatenate([[total], total - np.cumsum(values[:rank])])
    meets = np.flatnonzero(tails <= eps * eps * (1.0 - 1e-9) * total)
    return float(np.sqrt(max(tails[-1], 0.0) / total)), (int(meets[0]) if meets.size else None)


def gram_partials(
    data: np.ndarray, offsets: np.ndarray, labels: np.ndarray, group_shifts: np.ndarray | None = None
) -> dict[int, tuple[str, np.ndarray]]:
    """Per group label (>= 0) its share of the Gram matrix M_C M_C^T in one batch.

    With ``group_shifts`` (per label, :mod:`pipeline.magnitude`) a group's columns are
    taken at its shift, ``2^-S M_C``, in every batch alike, so the sums never under- or
    overflow and the certified relative error is that of the group.

    A group's columns stay as they are (``("cols", X)`` in the data's dtype) while they
    take fewer bytes than an m x m float64 Gram; beyond, they give ``("upper", U)``, the
    upper triangle of X X^T in float64 (lower triangle zero). So a batch's partials never
    take more bytes than its data, however many groups it touches: they cross the network
    to the worker that sums them. Add them up with :func:`combine_partials`, finish with
    :func:`partial_gram` or :func:`certify_partial`.
    """
    out = {}
    for label, blocks in _blocks_by_label(labels):
        x = _at_shift(take_columns(data, offsets, blocks), _shift_of(group_shifts, label))
        out[label] = ("cols", x) if _cheaper_as_columns(x.shape[0], x.shape[1], x.dtype) else ("upper", _syrk(x))
    return out


def _cheaper_as_columns(rows: int, columns: int, dtype) -> bool:
    """Whether ``columns`` columns take fewer bytes than a float64 Gram of order ``rows``."""
    return columns * np.dtype(dtype).itemsize < 8 * rows


def _syrk(x: np.ndarray, onto: np.ndarray | None = None) -> np.ndarray:
    """Upper triangle of X X^T in float64 through BLAS syrk (half the flops of a product),
    added in place to ``onto`` (Fortran-ordered float64) when given."""
    # BLAS wants column-major input: X^T of a row-major X is column-major, so syrk forms
    # (X^T)^T X^T without the transposing copy f2py would make of X (3x faster)
    x = np.asarray(x, dtype=np.float64)
    a, trans = (x, 0) if x.flags.f_contiguous and not x.flags.c_contiguous else (np.ascontiguousarray(x).T, 1)
    if onto is None:
        return scipy.linalg.blas.dsyrk(1.0, a, trans=trans)
    return scipy.linalg.blas.dsyrk(1.0, a, trans=trans, beta=1.0, c=onto, overwrite_c=1)


def gram(x: np.ndarray) -> np.ndarray:
    """X X^T in float64 through BLAS syrk, symmetric."""
    return _symmetric(_syrk(x))


def _symmetric(upper: np.ndarray) -> np.ndarray:
    return np.triu(upper) + np.triu(upper, 1).T


def partial_gram(part: tuple[str, np.ndarray]) -> np.ndarray:
    """The symmetric Gram matrix of a partial."""
    kind, value = part
    return _symmetric(value) if kind == "upper" else gram(value)


def combine_partials(left: dict, right: dict) -> dict:
    """Sum two partials group by group, ``left`` first: the order is part of the result's
    bits, so callers fix it (the driver adds batches in index order). Neither input is
    modified; a group's Gram is updated in place in a fresh copy, by syrk."""
    out = dict(left)
    for label, (kind_b, b) in right.items():
        if label not in out:
            out[label] = (kind_b, b)
            continue
        kind_a, a = out[label]
        if kind_a == kind_b == "cols" and _cheaper_as_columns(a.shape[0], a.shape[1] + b.shape[1], a.dtype):
            out[label] = ("cols", np.hstack([a, b]))
            continue
        upper = np.array(a, dtype=np.float64, order="F") if kind_a == "upper" else np.asfortranarray(_syrk(a))
        if kind_b == "cols":
            upper = _syrk(b, onto=upper)
        else:
            upper += b
        out[label] = ("upper", upper)
    return out


def group_coefficients(
    data: np.ndarray, offsets: np.ndarray, labels: np.ndarray, bases: dict, group_shifts: np.ndarray | None = None
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Coefficients of every labelled block of a batch against its group's basis.

    Per group present, one product over all its blocks: V = U_g^T [A_i ...] and each
    block's squared residual ||A_i - U_g V_i||_F^2 with U_g and V rounded to the data's
    dtype, as stored (or the blocks themselves and 0 when ``bases[g]`` is None: stored as
    they are). Returns, per group, its block positions (in order), V with the blocks'
    columns side by side, and the blocks' squared residuals.

    With ``group_shifts`` (per label) the residual is computed on ``2^-S A_i`` and is
    that of the scaled group (relative errors are unchanged); V is returned unscaled.
    """
    stored = data.dtype if np.issubdtype(data.dtype, np.floating) else np.dtype(np.float64)
    out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for g, blocks in _blocks_by_label(labels):
        sub_offsets = offsets_of(offsets[blocks + 1] - offsets[blocks])
        x = take_columns(data, offsets, blocks)
        basis = bases[int(g)]
        if basis is None:
            out[int(g)] = (blocks, x, np.zeros(len(blocks)))
            continue
        # basis and coefficients as the artifact stores them (the data's dtype), so the
        # residual is that of the stored reconstruction, not of a float64 ideal
        shift = _shift_of(group_shifts, int(g))
        basis = np.asarray(basis).astype(stored).astype(np.float64)
        x = _at_shift(x.astype(np.float64), shift)
        coef = (basis.T @ x).astype(stored)
        residual = x - basis @ coef.astype(np.float64)
        residual2 = segment_sums(np.einsum("ij,ij->j", residual, residual), sub_offsets)
        out[int(g)] = (blocks, _at_shift(coef, -shift).astype(stored, copy=False), residual2)
    return out


@dataclass(frozen=True)
class GramCertificate:
    """Exact spectrum-based facts of one group.

    Attributes
    ----------
    error : float
        Relative rank-r error: exact (:func:`certify_gram`, :func:`certify_partial`), or
        that of the returned basis's span at rank r (:func:`certify_projected`).
    adaptive_rank : int
        Smallest rank whose exact error is <= eps (with a 1e-9 relative safety margin on
        the energy, so that the basis computed from the same Gram meets eps when used);
        0 when even rank r does not meet eps.
    basis : ndarray, shape (m, adaptive_rank)
        Top eigenvectors of the Gram matrix: the optimal shared basis.
    """

    error: float
    adaptive_rank: int
    basis: np.ndarray


def certify_partial(part: tuple[str, np.ndarray], rank: int, eps: float) -> GramCertificate:
    """:func:`certify_gram` of a summed partial; a group with fewer columns than m/2 is
    certified from the thin SVD of its columns instead (same spectrum, cheaper, and more
    accurate than the Gram route)."""
    kind, value = part
    rows = value.shape[0]
    if kind == "upper" or 2 * value.shape[1] >= rows:
        return certify_gram(partial_gram(part), rank, eps)
    u, s, _ = np.linalg.svd(value, full_matrices=False)
    s2 = s * s
    total = float(s2.sum())
    if total <= 0.0:
        return GramCertificate(0.0, 0, np.zeros((rows, 0)))
    error = float(np.sqrt(float(s2[rank:].sum()) / total))  # tail summed directly: no cancellation
    if error > eps:
        return GramCertificate(error, 0, np.zeros((rows, 0)))
    r_c = min(adaptive_rank(s2, eps * np.sqrt(1.0 - 1e-9)), rank)
    return GramCertificate(error, r_c, np.ascontiguousarray(u[:, :r_c]))


def certify_gram(gram: np.ndarray, rank: int, eps: float) -> GramCertificate:
    """Exact rank-r error, adaptive rank and optimal basis from a group's Gram matrix.

    Only the top ``rank`` eigenpairs are computed (LAPACK ``syevr``); the total energy is
    the trace, so the tail is ``trace - head`` with absolute error about ``rank * eps_mach
    * ||G||``, as for a full eigendecomposition. When the error exceeds eps the adaptive
    rank is reported as 0 with no basis: such a group is split (or, a single block,
    stored as it is).
    """
    rows = gram.shape[0]
    total = float(np.trace(gram))
    if total <= 0.0:
        return GramCertificate(0.0, 0, np.zeros((rows, 0)))
    k = min(rank, rows)
    lam, vecs = scipy.linalg.eigh(gram, subset_by_index=[rows - k, rows - 1], driver="evr", check_finite=False)
    lam, vecs = np.clip(lam[::-1], 0.0, None), vecs[:, ::-1]
    error, r_c = _error_and_rank(lam, total, k, eps)
    if error > eps:
        return GramCertificate(error, 0, np.zeros((rows, 0)))
    r_c = k if r_c is None else r_c
    return GramCertificate(error, r_c, np.ascontiguousarray(vecs[:, :r_c]))
