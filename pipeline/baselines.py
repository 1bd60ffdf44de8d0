"""Baseline groupings the paper compares against (no error guarantee)."""

from __future__ import annotations

import numpy as np
import scipy.cluster.vq

from ._checks import check_positive_int
from .greedy import ClusteringResult
from .layout import as_layout

__all__ = ["random_clustering", "kmeans_clustering"]


def _check_n_clusters(n_clusters: object, n_blocks: int) -> int:
    n = check_positive_int("n_clusters", n_clusters)
    if not 1 <= n <= n_blocks:
        raise ValueError(f"n_clusters must be between 1 and the number of blocks ({n_blocks}), got {n_clusters!r}")
    return n


def _result(labels: np.ndarray, params: dict) -> ClusteringResult:
    # renumber the labels by first appearance so group ids are dense and deterministic
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank_of = np.argsort(np.argsort(first))
    labels = rank_of[inverse].astype(np.int64)
    clusters = [np.flatnonzero(labels == g).tolist() for g in range(labels.max() + 1)]
    return ClusteringResult(clusters, labels, np.full(len(clusters), np.nan), params)


def random_clustering(n_blocks: int, n_clusters: int, *, seed: int = 0) -> ClusteringResult:
    """Random groups: a seeded shuffle, then blocks dealt round robin into ``n_clusters``.

    ``bounds`` are NaN: a baseline certifies nothing.
    """
    n_clusters = _check_n_clusters(n_clusters, n_blocks)
    order = np.random.default_rng(seed).permutation(n_blocks)
    labels = np.empty(n_blocks, dtype=np.int64)
    labels[order] = np.arange(n_blocks) % n_clusters
    return _result(labels, {"method": "random", "n_clusters": n_clusters, "seed": seed})


def kmeans_clustering(blocks, n_clusters: int, *, seed: int = 0, iterations: int = 20) -> ClusteringResult:
    """k-means (scipy's ``kmeans2``, k-means++ start) on the flattened blocks.

    Every block must have the same shape. Empty clusters are dropped. ``bounds`` are NaN.
    """
    layout = as_layout(blocks)
    widths = layout.widths
    if np.any(widths != widths[0]):
        odd = int(np.flatnonzero(widths != widths[0])[0])
        raise ValueError(f"block {odd}: k-means needs equal-shape blocks, width {widths[odd]} != {widths[0]}")
    n_clusters = _check_n_clusters(n_clusters, layout.n_blocks)
    k, m, n = layout.n_blocks, layout.rows, int(widths[0])
    features = layout.data.reshape(m, k, n).transpose(1, 0, 2).reshape(k, m * n)
    _, labels = scipy.cluster.vq.kmeans2(features, n_clusters, iter=iterations, minit="++", seed=seed)
    return _result(labels, {"method": "kmeans", "n_clusters": n_clusters, "seed": seed})
