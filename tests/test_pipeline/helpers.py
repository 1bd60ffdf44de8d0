"""Shared test helpers: random collections with the awkward cases the bounds must survive."""

import numpy as np


def exact_error(blocks, members, rank):
    """Exact relative rank-r error from a full SVD (the reference every bound is held to)."""
    matrix = np.hstack([np.asarray(blocks[i], dtype=np.float64) for i in members])
    largest = float(np.max(np.abs(matrix), initial=0.0))
    if largest > 0:  # by a power of two (exact), so s^2 neither under- nor overflows
        matrix = np.ldexp(matrix, -int(np.frexp(largest)[1]))
    s = np.linalg.svd(matrix, compute_uv=False)
    total = float(np.sum(s * s))
    return 0.0 if total == 0 else float(np.sqrt(np.sum(s[rank:] ** 2) / total))


# Bounds are compared with the exact error through the energies: L <= E_r (1 + 1e-9),
# i.e. bound^2 >= exact^2 - 1e-9 (1 - exact^2). A relative test on the error itself would
# be meaningless for tiny errors, where 1 - L/||M||^2 cancels.
ENERGY_REL_TOL = 1e-9


def bound_is_valid(bound, exact):
    return bound * bound >= exact * exact - ENERGY_REL_TOL * (1.0 - exact * exact)


def awkward_collection(seed, rows, n_blocks, max_width, rank_hint=3):
    """Blocks that are Gaussian, low-rank, zero, duplicated, scaled, single-column or wide,
    in float32 or float64."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rows, max(1, rank_hint)))
    blocks = []
    for i in range(n_blocks):
        width = int(rng.integers(1, max_width + 1))
        kind = rng.integers(0, 6)
        if kind == 0 or not blocks:
            block = rng.standard_normal((rows, width))
        elif kind == 1:  # rank-deficient, shared subspace
            block = basis @ rng.standard_normal((basis.shape[1], width))
        elif kind == 2:
            block = np.zeros((rows, width))
        elif kind == 3:  # exact duplicate
            block = blocks[int(rng.integers(0, len(blocks)))].copy()
        elif kind == 4:  # tiny or huge scale
            block = rng.standard_normal((rows, width)) * 10.0 ** rng.integers(-6, 7)
        else:  # near-subspace with small noise
            block = basis @ rng.standard_normal((basis.shape[1], width)) + 1e-3 * rng.standard_normal((rows, width))
        dtype = np.float32 if rng.integers(0, 2) else np.float64
        blocks.append(block.astype(dtype))
    return blocks


def assert_groups_certified(layout, clusters, bounds, rank, eps):
    """Every bound valid against the exact error (full SVD), every group of several blocks
    within eps."""
    blocks = [layout.block(i) for i in range(layout.n_blocks)]
    for group, bound in zip(clusters, bounds):
        exact = exact_error(blocks, group, rank)
        assert bound_is_valid(bound, exact), (group, bound, exact)
        if len(group) > 1:
            assert bound_is_valid(eps, exact), (group, exact)


def assert_certified_with_sketches(layout, clusters, bounds, states, rank, eps):
    """Every block in one group; every bound valid against the exact error; every group of
    several blocks within eps, with a settled sketch (orthonormal basis, exact total) whose
    own bound is valid."""
    from pipeline.bounds import GramSketch

    blocks = [layout.block(i) for i in range(layout.n_blocks)]
    assert sorted(b for g in clusters for b in g) == list(range(layout.n_blocks))
    for group, bound, state in zip(clusters, bounds, states):
        exact = exact_error(blocks, group, rank)
        assert bound_is_valid(bound, exact), (group, bound, exact)
        if len(group) > 1:
            assert bound_is_valid(eps, exact)
            assert isinstance(state, GramSketch)
            assert bound_is_valid(state.error_bound(), exact)
            np.testing.assert_allclose(state.basis.T @ state.basis, np.eye(state.basis.shape[1]), atol=1e-10)
            total = float(layout.norms2[group].sum())
            assert abs(state.total - total) <= 1e-12 * abs(total)


def recorded_results(monkeypatch, cls, name: str) -> list:
    """The results of every call of method ``name`` of ``cls`` from now on (the method still
    runs): which route a run took, and what it decided."""
    calls = []
    original = getattr(cls, name)
    monkeypatch.setattr(cls, name, lambda self, *a, **k: calls.append(original(self, *a, **k)) or calls[-1])
    return calls
