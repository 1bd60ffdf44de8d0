"""Worker tasks of an incremental run (:mod:`.update`): offering new blocks to the
parent's groups, and the greedy on the blocks no group took."""

from __future__ import annotations

import functools

import numpy as np

from .._threads import single_threaded_blas
from ..certify import group_coefficients
from ..greedy import greedy_groups
from ..incremental import top_candidates
from ..layout import BlockLayout, offsets_of
from ..magnitude import block_shifts, scale_blocks
from ..sharding import anchor_fractions, group_sketches, leading_directions, unit_columns
from .checkpoints import groups_to_arrays
from .tasks import Handle, _stage_groups, base_basis, base_bases, collection_of, read_batch, run_of, scaled_blocks

__all__ = ["offer_batch", "leftover_shard", "unit_directions", "near_copies"]


@functools.lru_cache(maxsize=4)
def _parent_bases(artifact: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parent artifact's bases side by side (float64) and offsets, of its groups stored
    with a basis only, and those groups' ids."""
    bases, offsets = base_bases(artifact)
    with_basis = np.flatnonzero(np.diff(offsets) > 0)
    widths = np.diff(offsets)[with_basis]
    return bases.astype(np.float64), offsets_of(widths), with_basis


def offer_batch(handle: Handle, artifact: tuple, first: int, stop: int, group_shifts: np.ndarray,
                n_candidates: int) -> dict:
    """Route the new blocks first..stop-1 to the parent's groups and measure what joining
    each candidate would cost.

    Every block's strongest direction is scored against every stored basis of its
    magnitude band in one product (:func:`pipeline.sharding.anchor_fractions`); for the
    ``n_candidates`` best groups, the block's squared residual against the stored basis,
    with coefficients rounded as the artifact stores them
    (:func:`pipeline.certify.group_coefficients`), at the group's shift. Returns the
    blocks' shifts, exact squared norms at their shifts, candidates (-1: none),
    residuals (inf where no candidate) and the share of each block's direction its best
    candidate holds."""
    data, offsets = read_batch(handle, first, stop)
    scaled, shifts, norms2 = scaled_blocks(handle, data, offsets, np.arange(first, stop))
    bases, basis_offsets, with_basis = _parent_bases(artifact)
    candidates = np.full((stop - first, n_candidates), -1, dtype=np.int64)
    residual2 = np.full((stop - first, n_candidates), np.inf)
    best_share = np.zeros(stop - first)
    if with_basis.size:
        with single_threaded_blas():
            shares = anchor_fractions(bases, basis_offsets, leading_directions(scaled, offsets))
        eligible = group_shifts[with_basis][:, None] == shifts[None, :]
        picked = top_candidates(shares, eligible, n_candidates)
        candidates = np.where(picked >= 0, with_basis[np.maximum(picked, 0)], -1)
        best_share = np.where(picked[:, 0] >= 0, shares[np.maximum(picked[:, 0], 0), np.arange(stop - first)], 0.0)
        for c in range(n_candidates):
            labels = candidates[:, c]
            present = np.unique(labels[labels >= 0])
            with single_threaded_blas():
                parts = group_coefficients(data, offsets, labels, {int(g): base_basis(artifact, int(g)) for g in present},
                                           group_shifts)
            for blocks, _, block_residual2 in parts.values():
                residual2[blocks, c] = block_residual2
    return {"first": first, "shifts": shifts, "norms2": norms2, "candidates": candidates, "residual2": residual2,
            "share": best_share.astype(np.float64)}


def leftover_shard(handle: Handle, token: str | None, params: dict, shard: int, ids: np.ndarray) -> dict:
    """The sequential greedy on blocks ``ids`` (sorted; new blocks no existing group took,
    and the parent's raw blocks pulled beside them), on their exact data at their shift
    (one magnitude band per shard). Their sketches are checkpointed as
    ``sketches-local-<shard>``, as the local stage of a full run does; returns what
    :func:`tasks.local_shard` returns."""
    stage = f"sketches-local-{shard:05d}"
    run = run_of(handle).require_lease(token)
    if run.is_complete(stage):  # a retried task: the same groups, already checkpointed
        groups, sketches = _stage_groups(handle, stage)
    else:
        data, offsets = _scaled_blocks(handle, ids)
        layout = BlockLayout(data, offsets, np.asarray(collection_of(handle).norms2[ids], dtype=np.float64))
        with single_threaded_blas():
            clusters, _, states = greedy_groups(layout, **params)
            sketches = group_sketches(layout, clusters, states, params["rank"], params["oversampling"], params["tol"])
        groups = [ids[g].tolist() for g in clusters]
        run.save_stage(stage, groups_to_arrays(groups, sketches, layout.rows))
    return {"groups": groups, "stage": stage, "totals": [s.total for s in sketches],
            "bounds": [s.error_bound() for s in sketches]}


def _scaled_blocks(handle: Handle, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocks ``ids`` side by side, each at its magnitude shift (float64), and their
    offsets; only the chunks holding them are read (``Collection.blocks``)."""
    data, offsets = collection_of(handle).blocks(np.asarray(ids).tolist())
    return scale_blocks(data, offsets, block_shifts(data, offsets)), offsets


def unit_directions(handle: Handle, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each of blocks ``ids``' strongest direction, of unit norm (m x K; a zero block gives
    a zero column), and the ids."""
    data, offsets = _scaled_blocks(handle, ids)
    with single_threaded_blas():
        return unit_columns(leading_directions(data, offsets)), np.asarray(ids)


def near_copies(handle: Handle, ids: np.ndarray, reference: tuple[np.ndarray, np.ndarray],
                floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Which of blocks ``ids`` have a near copy among ``reference`` (unit directions and
    ids, from :func:`unit_directions`): a reference direction holding at least ``floor`` of
    the block's strongest direction. Returns those blocks' ids and, for each, the id of the
    reference block holding most of it (ties: the first)."""
    units, ids = unit_directions(handle, ids)
    directions, reference_ids = reference
    with single_threaded_blas():
        shares = np.square(directions.T @ units)  # (references, blocks)
    best = np.argmax(shares, axis=0) if shares.size else np.zeros(len(ids), dtype=np.int64)
    near = shares[best, np.arange(len(ids))] >= floor if shares.size else np.zeros(len(ids), dtype=bool)
    return ids[near], reference_ids[best[near]]
