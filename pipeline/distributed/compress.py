"""Certify and compress a grouping: the rules both modes share, and the in-process compressor.

The distributed driver (:class:`~pipeline.distributed.run.ClusteringRun`) certifies and
compresses on Dask workers, batch by batch. The sequential mode, which already holds the
whole collection in memory as a :class:`~pipeline.layout.BlockLayout`, calls
:func:`compress_in_memory`. Both use the same kernels of :mod:`pipeline.certify`
(:func:`~pipeline.certify.certify_partial` for the exact error, adaptive rank and basis;
:func:`~pipeline.certify.group_coefficients` for coefficients rounded as stored) and the
same two rules here:

* :func:`certify_with_splits`: a group whose exact error is above eps (possible only
  through floating point, the bounds being certified) is split in halves and certified
  again, so no group is ever stored above eps;
* :func:`storage_plan`: a group is stored at its adaptive rank when that is smaller than
  its raw columns, otherwise as it is (rank 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .._threads import single_threaded_blas
from ..certify import certify_partial, group_coefficients
from ..layout import BlockLayout, offsets_of
from ..magnitude import group_norms2, rescale

__all__ = ["CompressedGroups", "certify_with_splits", "storage_plan", "compress_in_memory"]

Certified = tuple[float, int, np.ndarray]  # exact error, adaptive rank, basis (m x adaptive rank)


def certify_with_splits(
    groups: list[list[int]], certify: Callable[[list[list[int]]], Sequence[Certified]], eps: float
) -> tuple[list[list[int]], list[Certified], list[bool], int]:
    """Certify ``groups`` with ``certify`` (groups -> one result each), splitting any group
    of several blocks whose exact error is above ``eps`` into halves until none is.

    Returns the final groups (split ones keep their index for the first half, second
    halves are appended), their results, whether each was split, and the number of splits.
    """
    groups = [list(g) for g in groups]
    split = [False] * len(groups)
    results: dict[int, Certified] = {}
    pending = list(range(len(groups)))
    splits = 0
    while pending:
        certified = certify([groups[g] for g in pending])
        retry = []
        for g, result in zip(pending, certified):
            if result[0] > eps and len(groups[g]) > 1:
                half = len(groups[g]) // 2
                groups.append(groups[g][half:])
                groups[g] = groups[g][:half]
                split[g] = True
                split.append(True)
                retry += [g, len(groups) - 1]
                splits += 1
            else:
                results[g] = result
        pending = retry
    return groups, [results[g] for g in range(len(groups))], split, splits


def storage_plan(
    groups: list[list[int]], errors: np.ndarray, adaptive_ranks: np.ndarray, widths: np.ndarray, rows: int, eps: float
) -> np.ndarray:
    """Which groups are stored compressed, at their adaptive rank r_C: those whose rank-r_C
    form is smaller than their raw columns and that meet eps (or have several blocks, whose
    certificate then does). The others are stored as they are. An all-zero group is
    compressed at rank 0."""
    compressed = np.zeros(len(groups), dtype=bool)
    for g, group in enumerate(groups):
        columns = int(widths[group].sum())
        fits = errors[g] <= eps or len(group) > 1
        compressed[g] = bool(fits and int(adaptive_ranks[g]) * (rows + columns) < rows * columns)
    return compressed


@dataclass
class CompressedGroups:
    """What :func:`compress_in_memory` stored.

    Attributes
    ----------
    groups : list of list of int
        The groups as stored (a group split by :func:`certify_with_splits` is two).
    errors : ndarray
        Exact rank-r relative error of each group.
    adaptive_ranks : ndarray of int64
        Smallest rank meeting eps per group (0: none <= r does).
    stored_ranks : ndarray of int64
        Rank each group is stored at (0: stored as it is, or an all-zero group).
    stored_errors : ndarray
        Realised relative error of what is stored (basis and coefficients rounded to the
        collection's dtype; 0 for raw groups).
    split : ndarray of bool
        Whether each group is half of a group split because its exact error was above
        eps (first halves keep the original index, second halves come after the others).
    splits : int
        How many splits that took.
    seconds : float
    artifact : storage.Artifact
    """

    groups: list[list[int]]
    errors: np.ndarray
    adaptive_ranks: np.ndarray
    stored_ranks: np.ndarray
    stored_errors: np.ndarray
    split: np.ndarray
    splits: int
    seconds: float
    artifact: object


def _certify_in_memory(layout: BlockLayout, rank: int, eps: float) -> Callable[[list[list[int]]], list[Certified]]:
    def certify(groups: list[list[int]]) -> list[Certified]:
        out = []
        for group in groups:
            # its columns at the group's magnitude shift (errors are relative): the SVD
            # of few columns or the Gram route, as certify_partial chooses for any partial
            cert = certify_partial(("cols", layout.gather(group)), rank, eps)
            out.append((cert.error, cert.adaptive_rank, cert.basis))
        return out

    return certify


def compress_in_memory(
    collection,
    layout: BlockLayout,
    groups: list[list[int]],
    *,
    rank: int,
    eps: float,
    label: str,
    params: dict,
    progress: Callable[[str, int, int], None] | None = None,
) -> CompressedGroups:
    """Certify ``groups`` of a collection held in memory and write its artifact ``label``.

    Parameters
    ----------
    collection : storage.Collection
        The stored collection (its dtype, block widths and, for blocks of extreme
        magnitude stored as they are, their original values).
    layout : BlockLayout
        The same collection in memory (:func:`pipeline.as_layout` of its data).
    groups : list of list of int
        The grouping, e.g. :func:`pipeline.cluster`'s clusters.
    rank, eps : int, float
        The run's target rank and threshold.
    label : str
        Artifact label (an existing artifact with it is replaced atomically).
    params : dict
        Recorded in the artifact.
    progress : callable(stage, done, total), optional

    Returns
    -------
    CompressedGroups
    """
    from .tasks import import_storage

    storage = import_storage()
    start = time.perf_counter()
    report = progress or (lambda stage, done, total: None)
    with single_threaded_blas():
        groups, certified, split, splits = certify_with_splits(groups, _certify_in_memory(layout, rank, eps), eps)
    errors = np.array([c[0] for c in certified], dtype=np.float64)
    adaptive = np.array([c[1] for c in certified], dtype=np.int64)
    compressed = storage_plan(groups, errors, adaptive, np.asarray(collection.widths), int(collection.rows), eps)
    stored_ranks = np.where(compressed, adaptive, 0)
    shifts = layout.block_shifts()
    totals = group_norms2(layout.norms2, shifts, groups)
    dtype = np.dtype(collection.dtype)
    writer = storage.create_artifact(collection.url, collection.name, label, groups=groups, params=params,
                                     overwrite=True, storage_options=collection.storage_options)
    stored_errors = np.zeros(len(groups))

    def entries():
        """(group, basis or None, coefficients) one group after the other, with its stored error."""
        for g, group in enumerate(groups):
            shift = layout.group_shift(group)
            if not compressed[g]:  # as it is: the stored values themselves when scaled
                yield g, None, layout.gather(group).astype(dtype) if shift == 0 else collection.blocks(group)[0]
            else:
                data = rescale(layout.gather(group), shift).astype(dtype, copy=False)
                widths = np.diff(layout.offsets)[group]
                basis = certified[g][2][:, : stored_ranks[g]]
                with single_threaded_blas():
                    _, coef, residual2 = group_coefficients(data, offsets_of(widths), np.zeros(len(group), dtype=np.int64),
                                                            {0: basis}, np.array([shift]))[0]
                residual2 = sum(residual2.tolist())  # in block order, as the distributed path
                stored_errors[g] = math.sqrt(residual2 / totals[g]) if totals[g] > 0 else 0.0
                yield g, basis, coef
            report("compress", g + 1, len(groups))

    try:
        writer.write_all(entries())
        artifact = writer.finalize(stored_errors.tolist(), stored_ranks.tolist())
    except BaseException:
        writer.abort()
        raise
    return CompressedGroups(groups, errors, adaptive, stored_ranks, stored_errors, np.array(split, dtype=bool),
                            splits, time.perf_counter() - start, artifact)
