"""The paper's bound-tightness experiment: certified bounds against the exact error.

For group sizes ``sizes`` and ``trials`` random groups of each size, computes the exact
rank-r error of the group and every certified bound (max_norm; residuals and approximate,
each with both candidate orders). Rows are plain dicts, ready for CSV or plotting.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ._checks import check_nonnegative_int, check_rank
from .bounds import DEFAULT_TOL
from .greedy import group_bound
from .layout import as_layout
from .spectra import relative_error

__all__ = ["error_estimation_study", "STUDY_COLUMNS"]

_BOUNDS = (
    ("max_norm", "max_norm", "norm"),
    ("residuals_norm", "residuals", "norm"),
    ("residuals_residual", "residuals", "residual"),
    ("approximate_norm", "approximate", "norm"),
    ("approximate_residual", "approximate", "residual"),
)
STUDY_COLUMNS = ("size", "trial", "exact") + tuple(name for name, _, _ in _BOUNDS)


def error_estimation_study(
    blocks,
    *,
    rank: int,
    sizes: Iterable[int],
    trials: int = 10,
    oversampling: int = 5,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
) -> list[dict]:
    """Exact error and every certified bound for random groups of the given sizes.

    Parameters
    ----------
    blocks : collection accepted by :func:`pipeline.as_layout`
    rank : int
    sizes : iterable of int
        Group sizes (number of blocks), e.g. ``range(a, b + 1, step)``.
    trials : int
        Random groups per size (drawn without replacement within a group).
    seed : int
        Seed of the random generator; the study is deterministic for a given seed.

    Returns
    -------
    list of dict
        One row per group with keys :data:`STUDY_COLUMNS`.
    """
    layout = as_layout(blocks)
    rank = check_rank(rank)
    trials = check_nonnegative_int("trials", trials)
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        size = int(size)
        if not 1 <= size <= layout.n_blocks:
            raise ValueError(f"group size {size} is outside 1..{layout.n_blocks} (the number of blocks)")
        for trial in range(trials):
            members = rng.choice(layout.n_blocks, size=size, replace=False)
            row = {"size": size, "trial": trial, "exact": relative_error(layout.gather(members), rank)}
            for name, method, order in _BOUNDS:
                row[name] = group_bound(
                    layout, members, rank=rank, method=method, order=order, oversampling=oversampling, tol=tol
                )
            rows.append(row)
    return rows
