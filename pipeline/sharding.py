"""Numerical kernels of the scalable (map/merge) clustering, free of Dask and storage.

The distributed driver (:mod:`pipeline.distributed`) calls these on workers or on the
client; each works on plain arrays in the column layout so it can be tested on its own.

* :func:`block_factors` - per block a factor F_i with F_i F_i^T <= A_i A_i^T of at most
  ``rank + oversampling`` columns (the block itself when it is that narrow, else its top
  singular directions). Clustering on factors with the exact block norms keeps every bound
  certified for the real blocks.
* :func:`anchor_scores` - energy of every block captured by each of a few anchor
  subspaces, one matrix product for all blocks and anchors.
* :func:`pack_shards` - routes blocks to anchors and packs them into shards of bounded size.
* :func:`merge_groups` - merges groups across shards through their Gram sketches, touching
  no data, while the merged certified bound stays <= eps.
* :func:`group_grams` / :func:`certify_gram` - exact per-group spectra from Gram matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bounds import GramSketch
from .layout import BlockLayout, column_index, offsets_of, segment_sums
from .spectra import adaptive_rank

__all__ = [
    "block_factors",
    "anchor_scores",
    "pack_shards",
    "group_sketch",
    "affinity_pairs",
    "merge_groups",
    "group_grams",
    "certify_gram",
    "GramCertificate",
]


def block_factors(data: np.ndarray, offsets: np.ndarray, width_cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block factors of at most ``width_cap`` columns, in the column layout.

    Blocks no wider than ``width_cap`` are kept as they are (F F^T = A A^T). Wider blocks
    become U_k S_k, their top-k singular directions, with k = min(width_cap, m); blocks of
    equal width are decomposed together with one batched SVD.

    Returns
    -------
    factors : ndarray, shape (m, sum k_i), float64
    factor_offsets : ndarray of int64, shape (K + 1,)
    """
    data = np.asarray(data, dtype=np.float64)
    widths = np.diff(offsets)
    k = np.minimum(widths, min(width_cap, data.shape[0]))
    factor_offsets = offsets_of(k)
    factors = np.empty((data.shape[0], int(factor_offsets[-1])))
    narrow = widths <= width_cap
    kept = np.flatnonzero(narrow)
    factors[:, column_index(factor_offsets, kept)] = data[:, column_index(offsets, kept)]
    wide = np.flatnonzero(~narrow)
    for width in np.unique(widths[wide]):
        same = wide[widths[wide] == width]
        stack = np.stack([data[:, offsets[i] : offsets[i + 1]] for i in same])
        u, s, _ = np.linalg.svd(stack, full_matrices=False)
        top = u[:, :, : k[same[0]]] * s[:, None, : k[same[0]]]
        for j, i in enumerate(same):
            factors[:, factor_offsets[i] : factor_offsets[i + 1]] = top[j]
    return factors, factor_offsets


def anchor_scores(anchors: np.ndarray, anchor_rank: int, factors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Energy of each block inside each anchor subspace.

    Parameters
    ----------
    anchors : ndarray, shape (m, n_anchors * anchor_rank)
        Orthonormal bases of the anchors side by side.
    factors, offsets : the blocks (or their factors) in column layout.

    Returns
    -------
    ndarray, shape (n_anchors, K): ||Q_a^T A_i||_F^2.
    """
    # one BLAS-3 product for every anchor and column; float32 is plenty for routing
    projected = anchors.T.astype(np.float32) @ factors.astype(np.float32)
    squared = (projected * projected).reshape(-1, anchor_rank, factors.shape[1]).sum(axis=1, dtype=np.float64)
    return segment_sums(squared, offsets)


def pack_shards(best_anchor: np.ndarray, shard_size: int) -> np.ndarray:
    """Shard index of every block: blocks of one anchor stay together, anchors are packed
    in order into shards of at most ``shard_size`` blocks, and an anchor with more blocks
    than that is cut into consecutive pieces."""
    order = np.lexsort((np.arange(best_anchor.size), best_anchor))
    shards = np.empty(best_anchor.size, dtype=np.int64)
    shard, filled = 0, 0
    for anchor in np.unique(best_anchor):
        members = order[best_anchor[order] == anchor]
        if filled and filled + members.size > shard_size:
            shard, filled = shard + 1, 0
        for start in range(0, members.size, shard_size):
            piece = members[start : start + shard_size]
            if filled and filled + piece.size > shard_size:
                shard, filled = shard + 1, 0
            shards[piece] = shard
            filled += piece.size
    return shards


def group_sketch(layout: BlockLayout, members, rank: int, oversampling: int, tol: float) -> GramSketch:
    """Gram sketch of a group built from its members' columns and exact norms."""
    members = list(members)
    sketch = GramSketch(
        layout.block(members[0]), rank, oversampling=oversampling, tol=tol, total=layout.norms2[members[0]]
    )
    for i in members[1:]:
        sketch.add(layout.block(i), layout.norms2[i])
    return sketch


def affinity_pairs(sketches: list[GramSketch], rank: int, neighbours: int, batch: int = 256) -> np.ndarray:
    """Candidate merges: for every group its ``neighbours`` most affine other groups.

    The affinity of (g, h) is the fraction of h's sketch energy inside g's top-r subspace,
    averaged with the reverse; computed with one matrix product per batch of groups.

    Returns
    -------
    ndarray of int64, shape (n_pairs, 2)
        Unordered pairs (g < h), most affine first, ties broken by (g, h).
    """
    n = len(sketches)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    heads = [s.basis[:, :rank] for s in sketches]
    head_offsets = offsets_of(np.array([h.shape[1] for h in heads], dtype=np.int64))
    weighted = np.hstack([s.basis * np.sqrt(s.eigenvalues) for s in sketches])
    weight_offsets = offsets_of(np.array([s.basis.shape[1] for s in sketches], dtype=np.int64))
    energy = np.array([max(float(s.eigenvalues.sum()), 1e-300) for s in sketches])
    captured = np.zeros((n, n))
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        cross = np.hstack(heads[start:stop]).T @ weighted
        rows = segment_sums((cross * cross).T, head_offsets[start : stop + 1] - head_offsets[start]).T
        captured[start:stop] = segment_sums(rows, weight_offsets)
    fraction = captured / energy[None, :]
    score = 0.5 * (fraction + fraction.T)
    np.fill_diagonal(score, -np.inf)
    k = min(neighbours, n - 1)
    nearest = np.argpartition(-score, k - 1, axis=1)[:, :k]
    g = np.repeat(np.arange(n), k)
    h = nearest.ravel()
    pairs = np.unique(np.stack([np.minimum(g, h), np.maximum(g, h)], axis=1), axis=0)
    values = score[pairs[:, 0], pairs[:, 1]]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0], -values))]


def merge_groups(
    groups: list[list[int]], sketches: list[GramSketch], *, rank: int, eps: float, neighbours: int = 8
) -> tuple[list[list[int]], list[GramSketch], int]:
    """One merge round: try candidate pairs, most affine first, and merge while the merged
    sketch's certified bound stays <= eps. A group may merge several times in a round.

    Returns the new groups and sketches (in order of their first member group) and the
    number of merges done.
    """
    parent = list(range(len(groups)))

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    members = {g: list(group) for g, group in enumerate(groups)}
    current = dict(enumerate(sketches))
    merges = 0
    for g, h in affinity_pairs(sketches, rank, neighbours):
        rg, rh = root(int(g)), root(int(h))
        if rg == rh:
            continue
        merged = current[rg].merge(current[rh])
        if merged.error_bound() > eps:
            continue
        keep, gone = min(rg, rh), max(rg, rh)
        parent[gone] = keep
        members[keep] = members[keep] + members.pop(gone)
        current[keep] = merged
        del current[gone]
        merges += 1
    order = sorted(members)
    return [members[g] for g in order], [current[g] for g in order], merges


def group_grams(data: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    """Sum of A_i A_i^T per group label over the blocks of one batch (float64)."""
    data = np.asarray(data, dtype=np.float64)
    grams = {}
    for label in np.unique(labels):
        x = data[:, column_index(offsets, np.flatnonzero(labels == label))]
        grams[int(label)] = x @ x.T
    return grams


@dataclass(frozen=True)
class GramCertificate:
    """Exact spectrum-based facts of one group.

    Attributes
    ----------
    error : float
        Exact relative rank-r error.
    adaptive_rank : int
        Smallest rank whose exact error is <= eps (with a 1e-9 relative safety margin on
        the energy, so that the basis computed from the same Gram meets eps when used).
    basis : ndarray, shape (m, adaptive_rank)
        Top eigenvectors of the Gram matrix: the optimal shared basis.
    """

    error: float
    adaptive_rank: int
    basis: np.ndarray


def certify_gram(gram: np.ndarray, rank: int, eps: float) -> GramCertificate:
    """Exact rank-r error, adaptive rank and optimal basis from a group's Gram matrix."""
    lam, vecs = np.linalg.eigh(gram)
    lam, vecs = np.clip(lam[::-1], 0.0, None), vecs[:, ::-1]
    total = float(lam.sum())
    if total <= 0.0:
        return GramCertificate(0.0, 0, vecs[:, :0])
    error = float(np.sqrt(float(lam[rank:].sum()) / total))
    r_c = adaptive_rank(lam, eps * np.sqrt(1.0 - 1e-9))
    if error <= eps:
        r_c = min(r_c, rank)
    return GramCertificate(error, r_c, np.ascontiguousarray(vecs[:, :r_c]))
