"""The stage plan: map batches over the column layout, group ranges and packed group lists.
Pure index arithmetic, no data and no Dask."""

from __future__ import annotations

import numpy as np

from ..layout import offsets_of

__all__ = ["batch_bounds", "group_ranges", "pack_groups", "unpack_groups", "labels_of"]


def batch_bounds(offsets: np.ndarray, chunk_columns: int, bytes_per_column: int, batch_bytes: int) -> np.ndarray:
    """Block boundaries of map batches: about ``batch_bytes`` each, cut at the first block
    boundary after a multiple of the chunk width so that few chunks are read twice."""
    n_columns = int(offsets[-1])
    columns = max(1, batch_bytes // max(bytes_per_column, 1))
    per_batch = max(1, columns // chunk_columns * chunk_columns if columns >= chunk_columns else columns)
    targets = np.arange(per_batch, n_columns, per_batch)
    cuts = np.searchsorted(offsets, targets, side="left")
    return np.unique(np.concatenate([[0], cuts, [len(offsets) - 1]])).astype(np.int64)


def group_ranges(per_group_bytes: np.ndarray, budget: int, max_groups: int | None = None) -> np.ndarray:
    """Range index of every group: consecutive groups packed into ranges of about ``budget``
    bytes and at most ``max_groups`` groups (a group larger than the budget gets a range of
    its own)."""
    ranges = np.empty(len(per_group_bytes), dtype=np.int64)
    current, filled, count = 0, 0, 0
    for g, nbytes in enumerate(per_group_bytes):
        if count and (filled + nbytes > budget or (max_groups is not None and count >= max_groups)):
            current, filled, count = current + 1, 0, 0
        ranges[g] = current
        filled += int(nbytes)
        count += 1
    return ranges


def pack_groups(groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Groups as one flat member array plus offsets (the checkpoint form)."""
    flat = np.fromiter((b for g in groups for b in g), dtype=np.int64)
    return flat, offsets_of(np.array([len(g) for g in groups], dtype=np.int64))


def unpack_groups(flat: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [flat[offsets[g] : offsets[g + 1]].tolist() for g in range(len(offsets) - 1)]


def labels_of(groups: list[list[int]], n_blocks: int) -> np.ndarray:
    """Group index of every block (-1 for blocks in no group)."""
    labels = np.full(n_blocks, -1, dtype=np.int64)
    flat, offsets = pack_groups(groups)
    labels[flat] = np.repeat(np.arange(len(groups), dtype=np.int64), np.diff(offsets))
    return labels
