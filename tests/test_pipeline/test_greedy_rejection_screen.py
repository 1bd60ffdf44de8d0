"""The eigenvalue screen before a proposal (bounds.surely_exceeds) never rejects a block the
proposal would accept, so the greedy's groups, bounds and states do not depend on it."""

import numpy as np
import pytest

from pipeline import greedy
from pipeline.bounds import GramSketch, ResidualBound, surely_exceeds
from pipeline.greedy import _greedy, check_params
from pipeline.synthetic import union_of_subspaces

from .helpers import awkward_collection


@pytest.mark.parametrize("cls", [GramSketch, ResidualBound])
@pytest.mark.parametrize("seed", range(6))
def test_a_screened_rejection_is_a_rejection(cls, seed):
    blocks = [b.astype(np.float64) for b in awkward_collection(seed, 24, 40, 10)]
    rng = np.random.default_rng(seed)
    screened = 0
    for _ in range(30):
        members = rng.choice(len(blocks), size=int(rng.integers(2, 6)), replace=False)
        bound = cls(blocks[members[0]], int(rng.integers(1, 8)))
        for i in members[1:-1]:
            bound.add(blocks[i])
        block = blocks[members[-1]]
        norm2 = float(np.sum(block * block))
        for eps in (0.01, 0.1, 0.3, 0.6):
            if surely_exceeds(bound, block, eps, norm2):
                screened += 1
                assert not bound.try_add(block, eps, norm2)
    assert screened  # the screen rejects something


def test_the_screen_passes_what_the_proposal_accepts_with_tight_eps():
    # a block inside the sketch's span, at eps just above the resulting error: no rejection
    rng = np.random.default_rng(1)
    basis = rng.standard_normal((30, 3))
    sketch = GramSketch(basis @ rng.standard_normal((3, 8)), 2)
    block = basis @ rng.standard_normal((3, 8))
    copy = sketch.copy()
    assert copy.try_add(block, 1.0, None)
    eps = copy.error_bound() * (1 + 1e-12)
    assert not surely_exceeds(sketch, block, eps, float(np.sum(block * block)))


@pytest.mark.parametrize("method", ["approximate", "residuals"])
@pytest.mark.parametrize("order", ["norm", "residual"])
def test_greedy_is_the_same_without_the_screen(method, order, monkeypatch):
    layout, _ = union_of_subspaces(160, rows=48, width=12, blocks_per_subspace=20, subspace_rank=4, noise=0.03,
                                   seed=8)
    # block by block (the lazy sketch's eigenvalue test is not screened)
    params = dict(check_params(10, 0.06, method, order, 10, 5, 1e-12), lazy=False, gram=False, factor=False)
    calls = []
    monkeypatch.setattr(greedy, "surely_exceeds", lambda *a: calls.append(surely_exceeds(*a)) or calls[-1])
    screened = _greedy(layout, **params)
    assert calls and (any(calls) or order == "residual")  # in norm order it rejected proposals
    monkeypatch.setattr(greedy, "surely_exceeds", lambda *a: False)
    plain = _greedy(layout, **params)
    assert screened[0] == plain[0]
    np.testing.assert_array_equal(screened[1], plain[1])
    for a, b in zip(screened[2], plain[2]):
        assert a.lower_energy() == b.lower_energy() and a.total == b.total
