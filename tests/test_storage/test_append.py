"""Appending blocks to a collection: atomic, versioned, existing indices untouched."""

from __future__ import annotations

import numpy as np
import pytest

import storage
from storage import BlockValidationError, CollectionNotFoundError


@pytest.fixture
def base(root, rng):
    blocks = [rng.standard_normal((6, w)) for w in (2, 3, 1)]
    return storage.ingest_blocks(root, "c", blocks), blocks


def test_append_adds_blocks_after_the_existing_ones_and_records_a_version(root, rng, base):
    coll, blocks = base
    assert coll.version == 1 and coll.appends == []
    more = [rng.standard_normal((6, w)) for w in (4, 2)]
    grown = storage.ingest_blocks(root, "c", more, append=True, provenance={"format": "npy", "source": "day2.npy"})
    assert grown.version == 2 and grown.n_blocks == 5
    (entry,) = grown.appends
    assert entry["version"] == 2 and entry["first_block"] == 3 and entry["n_blocks"] == 2
    assert entry["source"] == "day2.npy"
    for i, b in enumerate(blocks + more):  # old indices unchanged, new ones after them
        np.testing.assert_array_equal(grown.block(i), b)
    assert grown.names[3:] == ["block-3", "block-4"]
    again = storage.ingest_blocks(root, "c", [more[0]], names=["x"], append=True, name_prefix="day3/")
    assert again.version == 3 and again.names[-1] == "day3/x" and len(again.appends) == 2


@pytest.mark.parametrize("bad, match", [
    (lambda rng: [rng.standard_normal((6, 2)), np.full((6, 2), np.inf)], "block 4 .*Inf"),
    (lambda rng: [rng.standard_normal((5, 2))], "block 3 .*5 rows, the collection has 6"),
])
def test_a_failed_append_leaves_the_collection_as_it_was(root, rng, base, bad, match):
    coll, blocks = base
    before = coll.fingerprint()
    with pytest.raises(BlockValidationError, match=match):
        storage.ingest_blocks(root, "c", bad(rng), append=True)
    after = storage.open_collection(root, "c")
    assert after.fingerprint() == before and after.version == 1 and after.n_blocks == 3
    for i, b in enumerate(blocks):
        np.testing.assert_array_equal(after.block(i), b)
    grown = storage.ingest_blocks(root, "c", [rng.standard_normal((6, 2))], append=True)  # still appendable
    assert grown.version == 2 and grown.n_blocks == 4


def test_append_refuses_what_it_cannot_add(root, rng, base):
    with pytest.raises(CollectionNotFoundError):
        storage.ingest_blocks(root, "missing", [rng.standard_normal((6, 2))], append=True)
    with pytest.raises(ValueError, match="float32 blocks to collection 'c': it stores float64"):
        storage.ingest_blocks(root, "c", [rng.standard_normal((6, 2))], append=True, dtype=np.float32)
    with pytest.raises(ValueError, match="exclude"):
        storage.ingest_blocks(root, "c", [rng.standard_normal((6, 2))], append=True, overwrite=True)
    with pytest.raises(BlockValidationError, match="duplicate"):
        storage.ingest_blocks(root, "c", [rng.standard_normal((6, 2))], names=["block-0"], append=True)
    assert storage.open_collection(root, "c").version == 1
