"""Exact per-group metrics (M. Shamrai, arXiv 2601.11626; README, "Metrics" under
"The algorithms and their guarantee, in short").

* exact relative rank-r error of each group, from its full spectrum;
* the paper's effective compression ratio at fixed rank r:
  ``CR = m N / sum_C params(C)``, ``params(C) = m N_C`` for a single block, else
  ``min(r (m + N_C), m N_C)``;
* beyond the paper, the adaptive per-group rank r_C (smallest rank whose exact error is
  <= eps) and ``params(C) = min(r_C (m + N_C), m N_C)`` for every group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._checks import check_eps, check_rank
from .layout import as_layout
from .spectra import adaptive_rank, relative_error, squared_singular_values

__all__ = [
    "group_params",
    "group_spectra",
    "group_errors",
    "compression_ratio",
    "adaptive_ranks",
    "adaptive_compression_ratio",
    "ClusteringSummary",
    "summarize",
]


def group_spectra(blocks, clusters: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Squared singular values (descending) of every group's concatenation."""
    layout = as_layout(blocks)
    return [squared_singular_values(layout.gather(group)) for group in clusters]


def group_errors(blocks, clusters, rank: int, spectra: list[np.ndarray] | None = None) -> np.ndarray:
    """Exact relative rank-r error of every group."""
    rank = check_rank(rank)
    spectra = group_spectra(blocks, clusters) if spectra is None else spectra
    return np.array([relative_error(None, rank, s2) for s2 in spectra], dtype=np.float64)


def _shape(blocks) -> tuple[int, np.ndarray]:
    """(rows, block widths) of a collection; anything with ``rows`` and ``widths`` will do."""
    if hasattr(blocks, "rows") and hasattr(blocks, "widths"):
        return int(blocks.rows), np.asarray(blocks.widths)
    layout = as_layout(blocks)
    return layout.rows, layout.widths


def _group_columns(widths: np.ndarray, clusters) -> np.ndarray:
    return np.array([int(widths[list(group)].sum()) for group in clusters], dtype=np.int64)


def group_params(blocks, clusters, rank: int) -> np.ndarray:
    """Numbers each group costs at fixed rank r (the paper's): m N_C for a single block,
    else min(r (m + N_C), m N_C). ``blocks`` as for :func:`compression_ratio`."""
    (m, widths), rank = _shape(blocks), check_rank(rank)
    columns = _group_columns(widths, clusters)
    sizes = np.array([len(group) for group in clusters])
    return np.where(sizes == 1, m * columns, np.minimum(rank * (m + columns), m * columns))


def compression_ratio(blocks, clusters, rank: int) -> float:
    """The paper's effective compression ratio at fixed rank r.

    ``blocks`` may be the collection or any object with ``rows`` and ``widths``.
    """
    m, widths = _shape(blocks)
    return float(m * widths.sum() / group_params(blocks, clusters, rank).sum())


def adaptive_ranks(blocks, clusters, eps: float, spectra: list[np.ndarray] | None = None) -> np.ndarray:
    """Smallest rank per group whose exact relative error is <= eps."""
    eps = check_eps(eps)
    spectra = group_spectra(blocks, clusters) if spectra is None else spectra
    return np.array([adaptive_rank(s2, eps) for s2 in spectra], dtype=np.int64)


def adaptive_compression_ratio(blocks, clusters, ranks: np.ndarray) -> float:
    """Compression ratio with per-group ranks: ``params(C) = min(r_C (m + N_C), m N_C)``.

    ``blocks`` may be the collection or any object with ``rows`` and ``widths``.
    """
    m, widths = _shape(blocks)
    columns = _group_columns(widths, clusters)
    params = np.minimum(np.asarray(ranks) * (m + columns), m * columns)
    return float(m * widths.sum() / max(int(params.sum()), 1))


@dataclass(frozen=True)
class ClusteringSummary:
    """Exact metrics of a grouping.

    Attributes
    ----------
    n_groups, n_singletons : int
    errors : ndarray
        Exact relative rank-r error per group.
    ranks : ndarray
        Adaptive rank r_C per group.
    compression_ratio, compression_ratio_adaptive : float
    max_error : float
        Largest exact error over groups of two or more blocks (single blocks that no rank-r
        form fits are stored as they are, error 0).
    violations : int
        Groups of two or more blocks whose exact error exceeds eps (0 for certified
        clusterings; baselines can have many).
    """

    n_groups: int
    n_singletons: int
    errors: np.ndarray
    ranks: np.ndarray
    compression_ratio: float
    compression_ratio_adaptive: float
    max_error: float
    violations: int


def summarize(blocks, clusters, *, rank: int, eps: float) -> ClusteringSummary:
    """Exact metrics of ``clusters`` (a list of block-index lists) on ``blocks``."""
    layout = as_layout(blocks)
    rank, eps = check_rank(rank), check_eps(eps)
    spectra = group_spectra(layout, clusters)
    errors = group_errors(layout, clusters, rank, spectra)
    ranks = adaptive_ranks(layout, clusters, eps, spectra)
    multi = np.array([len(group) > 1 for group in clusters])
    grouped_errors = errors[multi]
    return ClusteringSummary(
        n_groups=len(clusters),
        n_singletons=int((~multi).sum()),
        errors=errors,
        ranks=ranks,
        compression_ratio=compression_ratio(layout, clusters, rank),
        compression_ratio_adaptive=adaptive_compression_ratio(layout, clusters, ranks),
        max_error=float(grouped_errors.max()) if grouped_errors.size else 0.0,
        violations=int(np.count_nonzero(grouped_errors > eps)),
    )
