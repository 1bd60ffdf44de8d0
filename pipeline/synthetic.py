"""Synthetic collections with known structure, for tests, benchmarks and the demo."""

from __future__ import annotations

import numpy as np

from .layout import BlockLayout, as_layout

__all__ = ["union_of_subspaces"]


def union_of_subspaces(
    n_blocks: int,
    rows: int = 128,
    width: int = 4,
    *,
    blocks_per_subspace: int = 100,
    subspace_rank: int = 3,
    noise: float = 0.02,
    seed: int = 0,
    dtype=np.float64,
) -> tuple[BlockLayout, np.ndarray]:
    """Blocks drawn from a union of random low-dimensional subspaces plus Gaussian noise.

    Block i is ``U_g C_i + noise`` with ``U_g`` (rows x subspace_rank) orthonormal for its
    subspace g, ``C_i`` standard normal scaled by a per-block log-normal factor, and
    i.i.d. noise whose Frobenius norm is ``noise`` times the signal's on average.
    Blocks are shuffled so that subspace members are not adjacent.

    Returns
    -------
    layout : BlockLayout
        The collection in column layout (float64 arithmetic, values rounded to ``dtype``).
    subspace : ndarray of int
        The generating subspace of every block.
    """
    rng = np.random.default_rng(seed)
    n_subspaces = max(1, int(np.ceil(n_blocks / blocks_per_subspace)))
    bases = np.linalg.qr(rng.standard_normal((n_subspaces, rows, subspace_rank)))[0]
    subspace = rng.permutation(np.arange(n_blocks) % n_subspaces)
    coefficients = rng.standard_normal((n_blocks, subspace_rank, width))
    coefficients *= rng.lognormal(0.0, 0.5, size=(n_blocks, 1, 1))
    signal = np.einsum("kmr,krn->kmn", bases[subspace], coefficients)
    sigma = noise * np.sqrt(subspace_rank / rows) * np.linalg.norm(coefficients, axis=(1, 2), keepdims=True) / np.sqrt(
        subspace_rank * width
    )
    stack = (signal + sigma * rng.standard_normal(signal.shape)).astype(dtype)
    data = np.ascontiguousarray(stack.transpose(1, 0, 2).reshape(rows, n_blocks * width))
    offsets = np.arange(n_blocks + 1, dtype=np.int64) * width
    return as_layout(data, offsets), subspace
