"""The checkpoint schema of the group stages (local, merge rounds).

Sketches are written where they are made: each local task and each merge task that
merges checkpoints its new Gram sketches as a *sketch stage* (``sketches-...``, a few flat
arrays: :func:`groups_to_arrays`). A group stage holds the groups, and per group where
its sketch is (stage and index) with the two numbers the driver needs, the exact total
energy and the certified bound (:class:`GroupSketches`): sketches never pass through the
client."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bounds import GramSketch
from ..layout import offsets_of
from .plan import pack_groups, unpack_groups

__all__ = ["groups_to_arrays", "groups_from_arrays", "GroupSketches", "group_stage_arrays", "group_stage_of"]


@dataclass
class GroupSketches:
    """Where each group's sketch is stored, and its exact total energy and certified bound.

    Attributes
    ----------
    stages : list of str
        Per group, the sketch stage holding its sketch.
    index : ndarray of int64
        Per group, its position in that stage.
    totals, bounds : ndarray of float64
        Per group, the sketch's exact total energy and certified error bound.
    """

    stages: list[str]
    index: np.ndarray
    totals: np.ndarray
    bounds: np.ndarray

    @classmethod
    def of(cls, entries: list[tuple[str, int, float, float]]) -> "GroupSketches":
        """From one (stage, index, total, bound) per group."""
        return cls([e[0] for e in entries], np.array([e[1] for e in entries], dtype=np.int64),
                   np.array([e[2] for e in entries], dtype=np.float64), np.array([e[3] for e in entries], dtype=np.float64))

    def refs(self, groups) -> list[tuple[str, int]]:
        """(stage, index) of the given groups, the form tasks take."""
        return [(self.stages[int(g)], int(self.index[g])) for g in groups]


def group_stage_arrays(groups: list[list[int]], sketches: GroupSketches) -> dict[str, np.ndarray]:
    """Arrays of a group stage (see the module docstring)."""
    flat, offsets = pack_groups(groups)
    names = sorted(set(sketches.stages))
    number = {name: i for i, name in enumerate(names)}
    return {
        "members": flat,
        "group_offsets": offsets,
        "sketch_stages": np.array(names, dtype=str),
        "sketch_stage": np.array([number[n] for n in sketches.stages], dtype=np.int64),
        "sketch_index": np.asarray(sketches.index, dtype=np.int64),
        "totals": np.asarray(sketches.totals, dtype=np.float64),
        "bounds": np.asarray(sketches.bounds, dtype=np.float64),
    }


def group_stage_of(arrays: dict) -> tuple[list[list[int]], GroupSketches]:
    """Inverse of :func:`group_stage_arrays`."""
    names = [str(n) for n in arrays["sketch_stages"]]
    stages = [names[int(i)] for i in arrays["sketch_stage"]]
    return unpack_groups(arrays["members"], arrays["group_offsets"]), GroupSketches(
        stages, np.asarray(arrays["sketch_index"]), np.asarray(arrays["totals"]), np.asarray(arrays["bounds"]))


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
