"""Exact spectral quantities: top-r energy and the relative rank-r error.

    err_r(M)^2 = sum_{j>r} s_j(M)^2 / ||M||_F^2

All computations run in float64. For a zero matrix the error is defined as 0 (it is
reproduced exactly at any rank).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

__all__ = [
    "adaptive_rank",
    "error_from_energy",
    "relative_error",
    "squared_singular_values",
    "stacked_top_energy",
    "top_energy",
]

# A Gram matrix is used when the matrix is much wider than tall: eigvalsh(M M^T) costs
# O(m^2 N) instead of the SVD's O(m N min(m, N)) and the squared spectrum is all we need.
_GRAM_ASPECT = 4


def squared_singular_values(matrix: np.ndarray) -> np.ndarray:
    """Squared singular values of ``matrix``, descending, computed in float64.

    Uses the SVD, or the eigenvalues of the Gram matrix ``M M^T`` when ``M`` is more than
    four times wider than tall. The Gram route has absolute error about
    ``machine eps * ||M||_F^2`` per eigenvalue, which is far below any useful eps.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.size == 0:
        return np.zeros(0)
    rows, cols = m.shape
    if cols > _GRAM_ASPECT * rows:
        s2 = scipy.linalg.eigh(m @ m.T, eigvals_only=True, check_finite=False)[::-1]
        return np.clip(s2, 0.0, None)
    s = scipy.linalg.svd(m, compute_uv=False, check_finite=False, lapack_driver="gesdd")
    return s * s


def stacked_top_energy(stack: np.ndarray, rank: int) -> np.ndarray:
    """Top-``rank`` energy E_r of every matrix of a stack (B, m, n), in one batched call.

    A matrix of at most ``rank`` columns keeps all its energy (its squared Frobenius norm).
    Wider ones use the eigenvalues of their Gram matrices ``A^T A`` (n x n) when they are
    at least twice as tall as wide, else their singular values; the Gram route's absolute
    error, about machine eps * ||A||_F^2, is far below any useful eps.
    """
    stack = np.asarray(stack, dtype=np.float64)
    count, rows, cols = stack.shape
    if cols <= rank or rows == 0:
        return np.einsum("bij,bij->b", stack, stack)
    return np.sort(stacked_squared_singular_values(stack, wide_gram=False), axis=1)[:, -rank:].sum(axis=1)


def stacked_squared_singular_values(stack: np.ndarray, wide_gram: bool = True) -> np.ndarray:
    """Squared singular values of every matrix of a stack (B, m, n), one row each, in no
    particular order, in one batched call: the eigenvalues of the Gram matrices ``A^T A``
    when the matrices are at least twice as tall as wide, of ``A A^T`` when they are more
    than four times wider than tall (as :func:`squared_singular_values`; ``wide_gram=False``
    keeps the SVD there), else a batched SVD."""
    stack = np.asarray(stack, dtype=np.float64)
    rows, cols = stack.shape[1:]
    if rows >= 2 * cols:
        return np.clip(np.linalg.eigvalsh(np.matmul(stack.transpose(0, 2, 1), stack)), 0.0, None)
    if wide_gram and cols > _GRAM_ASPECT * rows:
        return np.clip(np.linalg.eigvalsh(np.matmul(stack, stack.transpose(0, 2, 1))), 0.0, None)
    return np.linalg.svd(stack, compute_uv=False) ** 2


def stacked_adaptive_ranks(s2: np.ndarray, eps: float) -> np.ndarray:
    """:func:`adaptive_rank` of every row of ``s2`` (squared singular values), at once."""
    s2 = -np.sort(-np.asarray(s2, dtype=np.float64), axis=1)
    total = s2.sum(axis=1)
    tails = np.concatenate([np.cumsum(s2[:, ::-1], axis=1)[:, ::-1], np.zeros((len(s2), 1))], axis=1)
    ranks = np.argmax(tails <= (eps * eps) * total[:, None], axis=1)
    return np.where(total > 0.0, ranks, 0).astype(np.int64)


def top_energy(s2: np.ndarray, rank: int) -> float:
    """Sum of the ``rank`` largest values of ``s2`` (squared singular values)."""
    s2 = np.asarray(s2, dtype=np.float64)
    if s2.size <= rank:
        return float(s2.sum())
    return float(np.partition(s2, s2.size - rank)[s2.size - rank :].sum())


def error_from_energy(lower_energy: float, total: float) -> float:
    """Certified error ``sqrt(1 - L / total)`` from a lower bound ``L`` on the top energy."""
    if total <= 0.0:
        return 0.0
    return math.sqrt(max(0.0, 1.0 - lower_energy / total))  # np.sqrt's value, without a ufunc call


def relative_error(matrix: np.ndarray, rank: int, s2: np.ndarray | None = None) -> float:
    """Exact relative rank-``rank`` error of ``matrix`` from its full spectrum.

    The tail sum is formed directly (not as ``1 - head``) to avoid cancellation when the
    error is small.
    """
    if s2 is None:
        s2 = squared_singular_values(matrix)
    total = float(np.sum(s2))
    if total <= 0.0:
        return 0.0
    tail = float(np.sum(np.sort(s2)[::-1][rank:]))
    return float(np.sqrt(max(0.0, tail) / total))


def adaptive_rank(s2: np.ndarray, eps: float) -> int:
    """Smallest rank whose exact relative error is at most ``eps`` (0 for a zero matrix)."""
    s2 = np.sort(np.asarray(s2, dtype=np.float64))[::-1]
    total = float(s2.sum())
    if total <= 0.0:
        return 0
    # tails[k] = sum_{j >= k} s2[j] = error energy at rank k
    tails = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])
    return int(np.flatnonzero(tails <= (eps * eps) * total)[0])
