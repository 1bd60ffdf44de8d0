"""The checkpoint schema of the group stages (local, merge rounds): groups and their Gram
sketches as a few flat arrays, so a stage is one small verified write and one read."""

from __future__ import annotations

import numpy as np

from ..bounds import GramSketch
from ..layout import offsets_of
from .plan import pack_groups, unpack_groups

__all__ = ["groups_to_arrays", "groups_from_arrays"]


def groups_to_arrays(groups: list[list[int]], sketches: list[GramSketch], rows: int) -> dict[str, np.ndarray]:
    """Arrays of a group stage: members, and per group the sketch basis, eigenvalues, exact
    total energy and slack."""
    flat, offsets = pack_groups(groups)
    return {
        "members": flat,
        "group_offsets": offsets,
        "bases": np.hstack([s.basis for s in sketches]) if sketches else np.zeros((rows, 0)),
        "basis_widths": np.array([s.basis.shape[1] for s in sketches], dtype=np.int64),
        "eigenvalues": np.concatenate([s.eigenvalues for s in sketches]) if sketches else np.zeros(0),
        "totals": np.array([s.total for s in sketches], dtype=np.float64),
        "slacks": np.array([s.slack for s in sketches], dtype=np.float64),
    }


def groups_from_arrays(arrays: dict, params: dict) -> tuple[list[list[int]], list[GramSketch]]:
    """Inverse of :func:`groups_to_arrays`; ``params`` gives rank, oversampling and tol."""
    groups = unpack_groups(arrays["members"], arrays["group_offsets"])
    starts = offsets_of(arrays["basis_widths"])
    sketches = [
        GramSketch.from_parts(
            arrays["bases"][:, starts[g] : starts[g + 1]],
            arrays["eigenvalues"][starts[g] : starts[g + 1]],
            arrays["totals"][g],
            params["rank"],
            oversampling=params["oversampling"],
            tol=params["tol"],
            slack=arrays["slacks"][g],
        )
        for g in range(len(groups))
    ]
    return groups, sketches
