"""Numerical kernels of the scalable (map/merge) clustering, free of Dask and storage.

The distributed driver (:mod:`pipeline.distributed`) calls these on workers or on the
client; each works on plain arrays in the column layout so it can be tested on its own.

* :func:`block_factors` - per block a factor F_i with F_i F_i^T <= A_i A_i^T of at most
  ``rank + oversampling`` columns (the block itself when it is that narrow, else its top
  singular directions). Clustering on factors with the exact block norms keeps every bound
  certified for the real blocks.
* :func:`anchor_fractions` - share of every block's strongest direction inside each of a
  few anchor subspaces, one matrix product for all blocks and anchors.
* :func:`pack_shards` - routes blocks to anchors and packs them into shards of bounded size.
* :func:`merge_groups` - merges the groups of one bucket through their Gram sketches, touching
  no data, while the merged certified bound stays <= eps.
* :func:`group_anchor_keys` / :func:`merge_buckets` - merge candidates without comparing
  all pairs of groups: groups whose blocks vote for the same anchor share a bucket.
* :func:`round_factors` - float32 factors with a measured rounding slack (half the I/O).

The exact certification and coefficient kernels that both modes end with live in
:mod:`pipeline.certify` (re-exported here for the distributed driver).
"""

from __future__ import annotations

import math

import numpy as np

from .bounds import GramSketch
from .certify import (
    GramCertificate,
    certify_gram,
    certify_partial,
    combine_partials,
    gram_partials,
    group_coefficients,
    partial_gram,
)
from .layout import BlockLayout, column_index, offsets_of, segment_sums, take_columns
from .magnitude import rescale

__all__ = [
    "block_factors",
    "pack_shards",
    "anchor_basis",
    "leading_directions",
    "group_sketch",
    "group_sketches",
    "affinity_pairs",
    "merge_groups",
    "best_two_anchors",
    "anchor_fractions",
    "group_anchor_keys",
    "merge_buckets",
    "round_factors",
    "unround_factors",
    "gram_partials",
    "combine_partials",
    "partial_gram",
    "certify_partial",
    "group_coefficients",
    "certify_gram",
    "GramCertificate",
]


# float32 unit roundoff: rounding a value to nearest float32 perturbs it by at most this
# fraction (normal range); the drop is measured exactly below, so subnormals are covered too
FLOAT32_ROUNDOFF = 2.0**-24


# relative bound on what float64 roundoff can add to a factor computed as A V with V from
# an eigen-solve (orthonormality and product errors, both ~ width * 2^-53); carried as slack
_FACTOR_ROUNDOFF = 1e-12


def block_factors(data: np.ndarray, offsets: np.ndarray, width_cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-block factors of at most ``width_cap`` columns, in the column layout.

    Blocks no wider than ``min(width_cap, m)`` are kept as they are (F F^T = A A^T). A wider
    block becomes F = A V_k with V_k the top-k eigenvectors of A^T A, k = min(width_cap, m):
    F F^T = A V_k V_k^T A^T <= A A^T, and F = U_k S_k up to roundoff. Blocks of equal width
    go through one batched product, eigen-solve and product (cheaper than an SVD each).

    Returns
    -------
    factors : ndarray, shape (m, sum k_i), float64
    factor_offsets : ndarray of int64, shape (K + 1,)
    slack : ndarray of float64, shape (K,)
        Bound on the Frobenius norm by which roundoff may have moved each factor from one
        with F F^T <= A A^T (0 for blocks kept as they are).
    """
    data = np.asarray(data, dtype=np.float64)
    rows = data.shape[0]
    widths = np.diff(offsets)
    cap = min(width_cap, rows)
    k = np.minimum(widths, cap)
    factor_offsets = offsets_of(k)
    slack = np.zeros(len(widths))
    if np.all(widths <= cap):
        return data, factor_offsets, slack  # nothing to factor: the layout is unchanged
    if np.all(widths == widths[0]):  # one width, all wide: views, no gather
        top, slack[:] = _top_factors(data.reshape(rows, len(widths), int(widths[0])).transpose(1, 0, 2), cap)
        return top.transpose(1, 0, 2).reshape(rows, -1), factor_offsets, slack
    factors = np.empty((rows, int(factor_offsets[-1])))
    narrow = widths <= cap
    kept = np.flatnonzero(narrow)
    factors[:, column_index(factor_offsets, kept)] = take_columns(data, offsets, kept)
    wide = np.flatnonzero(~narrow)
    for width in np.unique(widths[wide]):
        same = wide[widths[wide] == width]
        stack = take_columns(data, offsets, same).reshape(rows, len(same), width).transpose(1, 0, 2)
        top, slack[same] = _top_factors(stack, cap)
        factors[:, column_index(factor_offsets, same)] = top.transpose(1, 0, 2).reshape(rows, -1)
    return factors, factor_offsets, slack


def _top_factors(stack: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A_b Q_b for a stack of equal blocks (blocks, m, n), Q_b (n x k) orthonormal and
    spanning A_b's top right singular vectors, and each one's roundoff slack.

    F = A Q with orthonormal Q keeps F F^T <= A A^T whatever Q is. Q comes from the
    smaller Gram matrix: the n x n one (its top eigenvectors) when n <= m, else the
    m x m one (Q = orth(A^T U_k)): a block as wide as a whole embedding (m = 384,
    n = 30,522) never forms an n x n matrix."""
    blocks, m, n = stack.shape
    if n <= m:
        gram, _, vecs = _right_directions(stack)
        top = np.matmul(stack, vecs[:, :, :k])  # (blocks, m, k)
    else:
        gram = np.matmul(stack, stack.transpose(0, 2, 1))  # (blocks, m, m)
        _, vecs = np.linalg.eigh(gram)
        spanned = np.matmul(stack.transpose(0, 2, 1), vecs[:, :, ::-1][:, :, : min(k, m)])  # (blocks, n, k')
        q, _ = np.linalg.qr(spanned)
        top = np.zeros((blocks, m, k))
        top[:, :, : q.shape[2]] = np.matmul(stack, q)  # rank <= m: any further columns stay 0
    norms = np.sqrt(np.trace(gram, axis1=1, axis2=2).clip(0.0))
    return top, _FACTOR_ROUNDOFF * n * norms


def _right_directions(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a stack of equal blocks (blocks, m, n): the n x n Gram matrices, their eigenvalues
    and eigenvectors, strongest first (one batched eigen-solve)."""
    gram = np.matmul(stack.transpose(0, 2, 1), stack)
    values, vectors = np.linalg.eigh(gram)
    return gram, values[:, ::-1], vectors[:, :, ::-1]


def round_factors(factors: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factors stored as float32 with a power-of-two scale per block, and what rounding lost.

    Each block is scaled by 2^-e (e the exponent of its largest entry, exact and
    reversible) so that any finite float64 block fits float32's range, then rounded.

    Returns
    -------
    scaled : ndarray of float32, same shape as ``factors``
    exponents : ndarray of int64, shape (K,)
        Block i is recovered as ``scaled_i * 2**exponents[i]`` (see :func:`unround_factors`).
    dropped : ndarray of float64, shape (K,)
        An upper bound on ||F_i - recovered F_i||_F, to be carried as sketch slack.
    """
    exponents, column_exponents = _peak_exponents(factors, offsets)
    exact = rescale(factors, -column_exponents[None, :])
    scaled = exact.astype(np.float32)
    # measured in the scaled space, where squares neither underflow nor overflow; the
    # float64 evaluation is itself rounded, which a relative margin covers
    error = scaled.astype(np.float64) - exact
    dropped = np.ldexp(np.sqrt(segment_sums(np.einsum("ij,ij->j", error, error), offsets)) * (1.0 + 1e-6), exponents)
    return scaled, exponents, dropped


def _peak_exponents(factors: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block, and repeated per column, the binary exponent of its largest entry (0 if
    none): ``2^-e F_i`` has entries below 1 in magnitude, in float32's range."""
    widths = np.diff(offsets)
    peak = np.zeros(len(widths))
    nonempty = widths > 0
    if factors.size:
        peak[nonempty] = np.maximum.reduceat(np.abs(factors).max(axis=0), offsets[:-1][nonempty])
    exponents = np.where(peak > 0, np.frexp(peak)[1], 0).astype(np.int64)
    return exponents, np.repeat(exponents, widths)


def unround_factors(scaled: np.ndarray, exponents: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Float64 factors from :func:`round_factors`' output (exact)."""
    return rescale(scaled, np.repeat(np.asarray(exponents, dtype=np.int64), np.diff(offsets))[None, :])


def anchor_basis(basis: np.ndarray, eigenvalues: np.ndarray, rank: int, relative: float = 1e-2) -> np.ndarray:
    """The part of a sample group's sketch that serves as an anchor: its leading directions
    (at most ``rank``) whose sketch eigenvalue is at least ``relative`` times the largest.

    Weaker directions carry mostly noise, which every subspace shares; leaving them out
    makes routing several times cheaper without changing where a block's energy lies."""
    lam = np.asarray(eigenvalues[:rank])
    if lam.size == 0 or lam[0] <= 0.0:
        return basis[:, :0]
    return basis[:, : int(np.count_nonzero(lam >= relative * lam[0]))]


def dominant_factors(factors: np.ndarray, offsets: np.ndarray, share: float, which: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The blocks ``which`` (a mask) reduced to their fewest strongest directions (F V_t)
    holding at least ``share`` of their factor's energy; the other blocks as they are.
    Returns the factors and their offsets.

    Meant for blocks factored to r + p columns (wider than that): their factors carry as
    many columns whatever their true rank, and the weakest hold noise. The partition's
    sample greedy on the dominant parts finds anchor subspaces that route better (K = 8,192
    blocks of 256 x 64 around rank-4 subspaces: 385 instead of 497 groups, and a sample
    greedy 3-6x cheaper). Blocks of equal width go through one batched eigen-solve."""
    rows = factors.shape[0]
    widths = np.diff(offsets)
    kept_widths = widths.copy()
    reduced: list[tuple[np.ndarray, np.ndarray]] = []
    for width in np.unique(widths[which]):
        same = np.flatnonzero(which & (widths == width))
        stack = take_columns(factors, offsets, same).reshape(rows, len(same), int(width)).transpose(1, 0, 2)
        _, values, vectors = _right_directions(stack)
        energy = np.cumsum(np.clip(values, 0.0, None), axis=1)
        kept_widths[same] = 1 + np.sum(energy[:, :-1] < share * energy[:, -1:], axis=1)
        reduced.append((same, np.matmul(stack, vectors)))
    out_offsets = offsets_of(kept_widths)
    out = np.empty((rows, int(out_offsets[-1])))
    rest = np.flatnonzero(~which)
    out[:, column_index(out_offsets, rest)] = take_columns(factors, offsets, rest)
    for same, directions in reduced:
        for t in np.unique(kept_widths[same]):
            pick = kept_widths[same] == t
            out[:, column_index(out_offsets, same[pick])] = directions[pick, :, :t].transpose(1, 0, 2).reshape(rows, -1)
    return out, out_offsets


def leading_directions(factors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each block's strongest direction scaled by its singular value, s_1 u_1 (m x K): its
    one-column factor. One column per block is enough to route it: it lies in the block's
    dominant subspace."""
    return block_factors(factors, offsets, 1)[0]


def unit_columns(directions: np.ndarray) -> np.ndarray:
    """``directions`` with every column scaled to unit norm (float64; a zero column stays zero)."""
    norms = np.sqrt(np.einsum("ij,ij->j", directions, directions))
    return np.divide(directions, norms, out=np.zeros_like(directions, dtype=np.float64), where=norms > 0)


# directions per product in anchor_fractions: the (anchor columns x this) float32 product
# stays in cache for the squares and sums that follow (3.7x faster than one product over a
# batch of 8,192 directions against 4,214 anchor columns; the same values)
_FRACTION_COLUMNS = 256


def anchor_fractions(anchors: np.ndarray, anchor_offsets: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Share of each direction's energy inside each anchor subspace, in [0, 1].

    ``directions`` (m x K, e.g. :func:`leading_directions`) are normalised first (a zero
    column scores 0 everywhere), so the shares compare across blocks: a block whose best
    share is small lies in a subspace that no anchor represents. Float32 products (plenty
    for routing) of every anchor column with a few hundred directions at a time. Returns
    (n_anchors, K) float32."""
    heads = anchors.T.astype(np.float32)
    units = unit_columns(directions).astype(np.float32)
    shares = np.empty((len(anchor_offsets) - 1, units.shape[1]), dtype=np.float32)
    for start in range(0, units.shape[1], _FRACTION_COLUMNS):
        part = slice(start, start + _FRACTION_COLUMNS)
        projected = heads @ units[:, part]
        np.square(projected, out=projected)
        shares[:, part] = np.add.reduceat(projected, anchor_offsets[:-1], axis=0)
    return shares


def best_two_anchors(captured: np.ndarray) -> np.ndarray:
    """The two anchors capturing most of each block's energy, best first.

    ``captured`` is (n_anchors, K) from :func:`anchor_fractions`; ties go to the lower anchor
    id. With a single anchor both columns name it. Returns int64 (K, 2)."""
    n_anchors = captured.shape[0]
    best = np.argmax(captured, axis=0)
    if n_anchors == 1:
        return np.stack([best, best], axis=1).astype(np.int64)
    masked = captured.copy()
    masked[best, np.arange(captured.shape[1])] = -np.inf
    return np.stack([best, np.argmax(masked, axis=0)], axis=1).astype(np.int64)


def pack_shards(best_anchor: np.ndarray, shard_size: int, within: tuple[np.ndarray, ...] = ()) -> np.ndarray:
    """Shard index of every block: blocks of one anchor stay together, and anchors are packed
    in order into shards of about equal size (an anchor with more blocks than that size is
    cut into consecutive pieces), so shards are balanced and no shard exceeds the target by
    more than one piece.

    Inside an anchor, blocks are ordered by the keys ``within`` (first key first), then by
    index: with a block's second-best anchor and its share there as keys, blocks that lie
    close together (near-copies, such as a weight column and the same column of a later
    checkpoint) are adjacent and land in the same piece when a large anchor is cut, where
    block order would put a collection's first and appended halves in different shards.

    The number of shards is the power of two at or above K / shard_size: shards then
    spread evenly over 2, 4, 8, ... workers (three shards on two workers would make one
    of them wait through a second shard), and the count still depends on K alone, so the
    groups do not depend on the number of workers."""
    n_blocks = best_anchor.size
    n_shards = min(1 << max(0, int(-(-n_blocks // shard_size)) - 1).bit_length(), max(n_blocks, 1))
    target = -(-n_blocks // n_shards)
    order = np.lexsort((np.arange(n_blocks), *reversed(within), best_anchor))
    cuts = np.flatnonzero(np.diff(best_anchor[order])) + 1
    shards = np.empty(n_blocks, dtype=np.int64)
    shard, filled = 0, 0
    for members in np.split(order, cuts):
        for start in range(0, members.size, target):
            piece = members[start : start + target]
            if filled and filled + piece.size > target + target // 8:
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


def group_sketches(layout: BlockLayout, groups, states, rank: int, oversampling: int, tol: float) -> list[GramSketch]:
    """A Gram sketch per group from the greedy's final states: the state itself when it is
    one, else (Weyl or residual bounds, patience singletons) built from the members."""
    return [state if isinstance(state, GramSketch) else group_sketch(layout, group, rank, oversampling, tol)
            for group, state in zip(groups, states)]


def affinity_pairs(sketches: list[GramSketch], rank: int, neighbours: int, batch: int = 256) -> np.ndarray:
    """Candidate merges: for every group its ``neighbours`` most affine other groups.

    The affinity of (g, h) is the fraction of h's sketch energy inside g's top-r subspace,
    averaged with the reverse; computed with one float32 matrix product per batch of groups
    (it only orders candidates: every merge is still certified in float64).

    Returns
    -------
    ndarray of int64, shape (n_pairs, 2)
        Unordered pairs (g < h), most affine first, ties broken by (g, h).
    """
    n = len(sketches)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    heads = [s.basis[:, :rank].astype(np.float32) for s in sketches]
    head_offsets = offsets_of(np.array([h.shape[1] for h in heads], dtype=np.int64))
    energy = np.array([max(float(s.eigenvalues.sum()), 1e-300) for s in sketches])
    # each sketch's columns scaled to unit energy: the product is float32-safe at any magnitude
    weighted = np.hstack([s.basis * np.sqrt(s.eigenvalues / e) for s, e in zip(sketches, energy)]).astype(np.float32)
    weight_offsets = offsets_of(np.array([s.basis.shape[1] for s in sketches], dtype=np.int64))
    captured = np.zeros((n, n))
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        cross = np.hstack(heads[start:stop]).T @ weighted
        rows = segment_sums((cross * cross).T.astype(np.float64), head_offsets[start : stop + 1] - head_offsets[start]).T
        captured[start:stop] = segment_sums(rows, weight_offsets)
    score = 0.5 * (captured + captured.T)  # captured[g, h]: the fraction of h's energy in g's head
    np.fill_diagonal(score, -np.inf)
    k = min(neighbours, n - 1)
    nearest = np.argpartition(-score, k - 1, axis=1)[:, :k]
    g = np.repeat(np.arange(n), k)
    h = nearest.ravel()
    pairs = np.unique(np.stack([np.minimum(g, h), np.maximum(g, h)], axis=1), axis=0)
    values = score[pairs[:, 0], pairs[:, 1]]
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0], -values))]


def group_anchor_keys(labels: np.ndarray, block_anchors: np.ndarray, norms2: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group the two anchors its blocks' energy votes for most (best first).

    Every block votes its squared norm for its best anchor and half of it for its second
    best. Sorting the (group, anchor) votes costs O(K log K); no pair of groups is compared.

    Returns
    -------
    ndarray of int64, shape (n_groups, 2)
        A group whose blocks name a single anchor gets it twice.
    """
    keep = labels >= 0
    group = np.concatenate([labels[keep], labels[keep]])
    anchor = np.concatenate([block_anchors[keep, 0], block_anchors[keep, 1]])
    weight = np.concatenate([norms2[keep], 0.5 * norms2[keep]]) + 1e-300  # zero blocks still vote
    n_anchors = int(anchor.max(initial=0)) + 1
    codes, inverse = np.unique(group * n_anchors + anchor, return_inverse=True)
    votes = np.bincount(inverse, weights=weight)
    vote_group, vote_anchor = codes // n_anchors, codes % n_anchors
    order = np.lexsort((vote_anchor, -votes, vote_group))  # per group: most votes first
    vote_group, vote_anchor = vote_group[order], vote_anchor[order]
    first = np.searchsorted(vote_group, np.arange(n_groups), side="left")
    last = np.searchsorted(vote_group, np.arange(n_groups), side="right")
    keys = np.zeros((n_groups, 2), dtype=np.int64)
    present = last > first
    keys[present, 0] = vote_anchor[first[present]]
    second = np.minimum(first + 1, np.maximum(last - 1, 0))
    keys[present, 1] = np.where(last[present] - first[present] > 1, vote_anchor[second[present]], keys[present, 0])
    return keys


def merge_buckets(keys: np.ndarray, energies: np.ndarray, cap: int) -> list[np.ndarray]:
    """Disjoint buckets of groups that may merge: groups sharing a key, strongest first,
    cut into pieces of at most ``cap`` groups so every bucket's work is bounded.

    Buckets of one group are left out (nothing to merge). Deterministic in the inputs.
    """
    order = np.lexsort((np.arange(len(keys)), -energies, keys))
    sorted_keys = keys[order]
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    buckets = []
    for members in np.split(order, cuts):
        for start in range(0, len(members), cap):
            piece = members[start : start + cap]
            if len(piece) > 1:
                buckets.append(piece)
    return buckets


def _merge_cannot_certify(sketches: list[GramSketch], pairs: np.ndarray, rank: int, eps: float) -> np.ndarray:
    """Pairs whose merge is certain to fail, found without merging.

    E_r(G_1 + G_2) <= E_r(G_1) + E_r(G_2) (Ky Fan), so the merged sketch can certify at
    most (sqrt(head_1 + head_2) - slack_1 - slack_2)^2 of the exact total."""
    heads = np.array([float(np.sum(s.eigenvalues[:rank])) for s in sketches])
    totals = np.array([s.total for s in sketches])
    slacks = np.array([s.slack for s in sketches])
    g, h = pairs[:, 0], pairs[:, 1]
    return _below_eps(heads[g] + heads[h], slacks[g] + slacks[h], totals[g] + totals[h], eps)


def _below_eps(head, slack, total, eps: float):
    """Whether at most (sqrt(head) - slack)^2 of ``total`` can never certify eps (with a
    relative margin, so rounding never rejects a merge that would certify)."""
    return np.maximum(np.sqrt(head) - slack, 0.0) ** 2 < (1.0 - eps * eps) * total * (1.0 - 1e-12)


def _union_head_bound(la: np.ndarray, lb: np.ndarray, cross: np.ndarray, rank: int) -> float:
    """Upper bound on the top-``rank`` eigenvalue sum of [[diag(la), X], [X^T, diag(lb)]]
    without an eigen-solve: the ``rank`` largest of la and lb plus sqrt(rank) ||X||_F
    (see :func:`_union_cannot_certify`), with a relative margin for rounding."""
    diagonal = np.concatenate([la, lb])
    top = diagonal if diagonal.size <= rank else np.partition(diagonal, diagonal.size - rank)[-rank:]
    return (float(np.sum(np.clip(top, 0.0, None))) + math.sqrt(rank) * float(np.linalg.norm(cross))) * (1.0 + 1e-12)


def _union_cannot_certify(a: GramSketch, b: GramSketch, rank: int, eps: float) -> bool:
    """Whether merging two sketches is certain to fail, from the exact spectrum of G_a + G_b.

    Its non-zero eigenvalues are those of [[L_a, S_a C S_b], [S_b C^T S_a, L_b]] with
    C = Q_a^T Q_b and S = L^(1/2): a (k_a + k_b)-sized eigenvalue problem with no SVD. The
    merged sketch holds the compression P (G_a + G_b) P, whose top energy is no larger, and
    at least both slacks, so this bound never rejects a merge that would certify.

    The eigen-solve is skipped when a cheaper bound already rejects: that matrix is
    D + E with D = diag(L_a, L_b) and E = [[0, X], [X^T, 0]], X = S_a C S_b, whose
    eigenvalues are +-sigma_i(X); by Ky Fan its top-r sum is at most the r largest of
    L_a and L_b together plus sum_{i<=r} sigma_i(X) <= sqrt(r) ||X||_F. Groups that share
    little (nearly orthogonal heads, such as unrelated weight columns) end there."""
    sa, sb = np.sqrt(a.eigenvalues), np.sqrt(b.eigenvalues)
    cross = (sa[:, None] * (a.basis.T @ b.basis)) * sb[None, :]
    if _below_eps(_union_head_bound(a.eigenvalues, b.eigenvalues, cross, rank), a.slack + b.slack, a.total + b.total, eps):
        return True
    small = np.block([[np.diag(a.eigenvalues), cross], [cross.T, np.diag(b.eigenvalues)]])
    lam = np.linalg.eigvalsh(small)
    head = float(np.sum(np.clip(lam[::-1][:rank], 0.0, None))) * (1.0 + 1e-12)
    return bool(_below_eps(head, a.slack + b.slack, a.total + b.total, eps))


def merge_groups(
    groups: list[list[int]], sketches: list[GramSketch], *, rank: int, eps: float, neighbours: int = 8
) -> tuple[list[list[int]], list[GramSketch], int]:
    """Merge the groups of one bucket: candidate pairs most affine first, merged while the
    merged sketch's certified bound stays <= eps. A group may merge several times.

    Meant for a bounded bucket (see :func:`merge_buckets`): the affinity compares all its
    pairs. Returns the new groups and sketches (in order of their first member group) and
    the number of merges done.
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
    pairs = affinity_pairs(sketches, rank, neighbours)
    if len(pairs):
        pairs = pairs[~_merge_cannot_certify(sketches, pairs, rank, eps)]
    for g, h in pairs:
        rg, rh = root(int(g)), root(int(h))
        if rg == rh:
            continue
        if _union_cannot_certify(current[rg], current[rh], rank, eps):
            continue  # cheap and exact-spectrum test first: most candidate pairs end here
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
