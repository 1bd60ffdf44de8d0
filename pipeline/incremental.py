"""Incremental runs: blocks appended to a compressed collection join its existing groups.

A group stored with basis U (m x k) and squared residual R = sum_i ||A_i - U V_i||_F^2 over
total energy T has stored error sqrt(R / T). A new block A joins it *under the same
basis*: its coefficients V = U^T A are written, nothing already stored changes, and the
group's stored error becomes sqrt((R + ||A - U V||_F^2) / (T + ||A||_F^2)), computed
exactly from A alone. A block joins only while that stays <= eps, so the guarantee holds
for every group of the updated artifact on the stored numbers, and the group's exact
rank-r error (from a full SVD), which is at most its stored error, is <= eps too.

Candidates come from routing: each new block's strongest direction is scored against
every stored basis (one product, :func:`pipeline.sharding.anchor_fractions`), and the
best few groups of the block's magnitude band are offered the block (:func:`absorb`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ABSORB_MARGIN", "absorb", "top_candidates"]

#: A block joins a group only if R + r <= eps^2 (T + n) (1 - ABSORB_MARGIN): far above the
#: roundoff that separates the residual the decision saw from the one the writer measures
#: on the same numbers.
ABSORB_MARGIN = 1e-9

#: Passes over the candidate rounds, at most: a block joining with a relative residual
#: below eps^2 leaves its group more room, so a block turned away may fit a pass later.
OFFER_PASSES = 4


def top_candidates(shares: np.ndarray, eligible: np.ndarray, n_candidates: int) -> np.ndarray:
    """The ``n_candidates`` groups holding the largest share of each block's strongest
    direction, best first; -1 where fewer groups are eligible.

    Parameters
    ----------
    shares : ndarray, shape (G, K)
        Share of each block's direction inside each group's basis (in [0, 1]).
    eligible : ndarray of bool, shape (G, K)
        Which groups may take which block (same magnitude band, stored with a basis).
    n_candidates : int

    Returns
    -------
    ndarray of int64, shape (K, n_candidates)
        Ties go to the lower group id.
    """
    n_groups, n_blocks = shares.shape
    scored = np.where(eligible, shares.astype(np.float64), -1.0)
    order = np.argsort(-scored, axis=0, kind="stable")[:n_candidates].T  # (K, C)
    picked = np.take_along_axis(scored.T, order, axis=1)
    out = np.full((n_blocks, n_candidates), -1, dtype=np.int64)
    out[:, : order.shape[1]] = np.where(picked >= 0.0, order, -1)
    return out


def absorb(candidates: np.ndarray, residual2: np.ndarray, norms2: np.ndarray, group_residual2: np.ndarray,
           group_totals: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which group each new block joins (-1: none), deterministically.

    Round c offers every block not yet placed to its c-th candidate. A group takes the
    blocks offered to it in ascending relative residual (then block order) while its
    stored error stays <= eps with :data:`ABSORB_MARGIN`; later rounds see the budgets
    earlier rounds left. The rounds are repeated while they place blocks (at most
    :data:`OFFER_PASSES` times). Depends only on the inputs, never on how they were
    computed.

    Parameters
    ----------
    candidates : ndarray of int, shape (K, C)
        Candidate groups per block, best first (-1: none).
    residual2 : ndarray, shape (K, C)
        ||A - U V||_F^2 of each block against each candidate's stored basis, at the
        group's magnitude shift (as the group's totals).
    norms2 : ndarray, shape (K,)
        ||A||_F^2 of each block at that shift.
    group_residual2, group_totals : ndarray, shape (G,)
        Each group's stored squared residual and total energy before the update.
    eps : float

    Returns
    -------
    assigned : ndarray of int64, shape (K,)
    group_residual2, group_totals : ndarray, shape (G,)
        After the update.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    residual2 = np.asarray(residual2, dtype=np.float64)
    norms2 = np.asarray(norms2, dtype=np.float64)
    residual = np.array(group_residual2, dtype=np.float64)
    total = np.array(group_totals, dtype=np.float64)
    assigned = np.full(len(norms2), -1, dtype=np.int64)
    floor = eps * eps * (1.0 - ABSORB_MARGIN)
    relative = residual2 / np.where(norms2 > 0, norms2, 1.0)[:, None]
    for _ in range(OFFER_PASSES):
        placed = 0
        for c in range(candidates.shape[1]):
            offered = np.flatnonzero((assigned < 0) & (candidates[:, c] >= 0))
            # by group, then ascending relative residual, then block: one stable sort
            offered = offered[np.lexsort((offered, relative[offered, c], candidates[offered, c]))]
            for block in offered.tolist():
                g = int(candidates[block, c])
                r, t = residual[g] + residual2[block, c], total[g] + norms2[block]
                if r <= floor * t:
                    residual[g], total[g], assigned[block] = r, t, g
                    placed += 1
        if not placed:  # a block that fits better than eps^2 widens its group's room: offer again
            break
    return assigned, residual, total
