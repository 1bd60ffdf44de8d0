"""Delta artifacts: an incremental run's artifact reads its base's groups from the base."""

from __future__ import annotations

import numpy as np
import pytest

import storage
from storage import CorruptedFileError


def _write_direct(root, name, label, groups, bases, coefficients, errors, base=None, base_map=None):
    """Write an artifact through the direct path: every chunk of the layout, in one call each."""
    writer = storage.create_artifact(root, name, label, groups=groups, base=base, base_map=base_map)
    ranks = [0 if b is None else b.shape[1] for b in bases]
    layout = writer.start_direct(ranks, 8)
    flat = np.zeros(int(layout.coef_offsets[-1]))
    for i, v in coefficients.items():
        flat[layout.coef_offsets[i] : layout.coef_offsets[i + 1]] = np.ravel(v)
    files = {}
    for c in range(-(-flat.size // layout.coefficient_chunk)):
        files.update(writer.write_coefficient_chunk(c, flat[c * layout.coefficient_chunk :][: layout.coefficient_chunk]))
    own = np.hstack([b for g, b in enumerate(bases) if b is not None and layout.basis_offsets[g + 1] > layout.basis_offsets[g]]
                    or [np.zeros((writer.rows, 0))])
    for c in range(-(-own.shape[1] // layout.basis_chunk)):
        files.update(writer.write_basis_chunk(c, own[:, c * layout.basis_chunk :][:, : layout.basis_chunk]))
    return writer.finish_direct(errors, files)


def _basis(rng, rows, rank):
    return np.linalg.qr(rng.standard_normal((rows, rank)))[0]


@pytest.fixture
def grown(root, rng):
    """A collection of 4 blocks with an artifact (2 groups), then 3 blocks appended."""
    u = [_basis(rng, 8, 2), _basis(rng, 8, 3)]
    blocks = [u[0] @ rng.standard_normal((2, 3)), u[1] @ rng.standard_normal((3, 2)),
              u[0] @ rng.standard_normal((2, 1)), u[1] @ rng.standard_normal((3, 4))]
    storage.ingest_blocks(root, "c", blocks)
    groups = [[0, 2], [1, 3]]
    coefs = {i: u[g].T @ blocks[i] for g, members in enumerate(groups) for i in members}
    first = _write_direct(root, "c", "first", groups, u, coefs, [0.0, 0.0])
    more = [u[1] @ rng.standard_normal((3, 2)), rng.standard_normal((8, 1)), rng.standard_normal((8, 2))]
    storage.ingest_blocks(root, "c", more, append=True)
    return first, u, blocks + more


def test_a_delta_reads_its_base_groups_from_the_base_and_adds_its_own(root, rng, grown):
    first, u, blocks = grown
    w = _basis(rng, 8, 1)
    groups = [[0, 2], [1, 3, 4], [5], [6]]  # block 4 joins group 1; 5 and 6 are new groups
    coefs = {4: u[1].T @ blocks[4], 5: w.T @ blocks[5], 6: blocks[6]}
    delta = _write_direct(root, "c", "second", groups, [u[0], u[1], w, None], coefs, [0.0, 0.0, 0.1, 0.0], base="first")
    assert delta.base is not None and delta.base.label == "first"
    assert delta.groups == groups and delta.n_blocks == 7
    for i in (0, 1, 2, 3, 4, 6):
        np.testing.assert_allclose(delta.decompress(i), blocks[i], atol=1e-12)
    np.testing.assert_allclose(delta.decompress(5), w @ (w.T @ blocks[5]), atol=1e-12)
    np.testing.assert_allclose(delta.decompress_range(1, 7), np.hstack([delta.decompress(i) for i in range(1, 7)]))
    # the base's numbers are not copied: the delta holds only the new blocks and new bases
    own = sum(f["nbytes"] for f in delta.manifest["files"].values())
    assert delta.nbytes_stored > first.nbytes_stored > 0 and own < delta.nbytes_stored
    bases, offsets = delta.all_bases()
    assert offsets.tolist() == [0, 2, 5, 6, 6]
    np.testing.assert_array_equal(bases, np.hstack([u[0], u[1], w]))
    delta.verify()
    again = storage.open_artifact(root, "c", "second", verify=True)
    np.testing.assert_array_equal(again.coefficients(4), delta.coefficients(4))


def test_a_delta_refuses_groups_that_do_not_extend_its_base(root, grown):
    with pytest.raises(ValueError, match="group 1 does not extend group 1"):
        storage.create_artifact(root, "c", "bad", groups=[[0, 2], [3, 1, 4], [5], [6]], base="first")
    with pytest.raises(ValueError, match="group 0 does not extend"):
        storage.create_artifact(root, "c", "bad", groups=[[0], [1, 3], [2, 4, 5, 6]], base="first")
    writer = storage.create_artifact(root, "c", "bad", groups=[[0, 2], [1, 3, 4], [5, 6]], base="first")
    with pytest.raises(ValueError, match="group 1 keeps its base artifact's basis, of rank 3, not 2"):
        writer.start_direct([2, 2, 1], 8)


def test_a_replaced_or_missing_base_is_named_not_read(root, rng, grown):
    first, u, blocks = grown
    coefs = {4: u[1].T @ blocks[4], 5: blocks[5], 6: blocks[6]}
    _write_direct(root, "c", "second", [[0, 2], [1, 3, 4], [5], [6]], [u[0], u[1], None, None], coefs,
                  [0.0] * 4, base="first")
    # another artifact published under the base's label
    storage.write_artifact(root, "c", "first", groups=[list(range(7))], bases=[None], coefficients=blocks,
                           errors=[0.0], overwrite=True)
    with pytest.raises(CorruptedFileError, match="builds on artifact 'first', which was replaced"):
        storage.open_artifact(root, "c", "second")


def test_a_delta_may_rewrite_base_groups_whole(root, rng, grown):
    first, u, blocks = grown
    # group 1 re-written with a new basis of rank 4 that also holds block 4; block 5 joins group 0
    # under its stored basis; block 6 is a new raw group
    w = np.linalg.qr(np.hstack([blocks[1], blocks[3], blocks[4]]))[0][:, :4]
    groups = [[0, 2, 5], [1, 3, 4], [6]]
    coefs = {5: u[0].T @ blocks[5], 1: w.T @ blocks[1], 3: w.T @ blocks[3], 4: w.T @ blocks[4], 6: blocks[6]}
    writer_bases = [u[0], w, None]
    delta = _write_direct(root, "c", "second", groups, writer_bases, coefs, [0.5, 0.1, 0.0], base="first",
                          base_map=[0, -1, -1])
    np.testing.assert_allclose(delta.basis(1), w)
    np.testing.assert_allclose(delta.basis(0), u[0])
    for i in (1, 3, 4):
        np.testing.assert_allclose(delta.decompress(i), w @ (w.T @ blocks[i]), atol=1e-12)
    np.testing.assert_allclose(delta.decompress(0), blocks[0], atol=1e-12)  # from the base
    whole = delta.decompress_range(0, 7)
    np.testing.assert_allclose(whole, np.hstack([delta.decompress(i) for i in range(7)]))
    bases, offsets = delta.all_bases()
    assert offsets.tolist() == [0, 2, 6, 6]
    np.testing.assert_array_equal(bases, np.hstack([u[0], w]))
    with pytest.raises(ValueError, match="a distinct group of base artifact"):
        storage.create_artifact(root, "c", "bad", groups=groups, base="first", base_map=[0, 0, -1])


def test_a_delta_may_drop_base_groups_and_renumber(root, rng, grown):
    first, u, blocks = grown
    # base group 0 ([0, 2]) is dropped: its blocks join new groups; base group 1 is kept as group 0
    w = np.linalg.qr(np.hstack([blocks[0], blocks[5]]))[0][:, :4]
    groups = [[1, 3, 4], [0, 5], [2, 6]]
    coefs = {4: u[1].T @ blocks[4], 0: w.T @ blocks[0], 5: w.T @ blocks[5], 2: blocks[2], 6: blocks[6]}
    delta = _write_direct(root, "c", "second", groups, [u[1], w, None], coefs, [0.0, 0.2, 0.0], base="first",
                          base_map=[1, -1, -1])
    assert delta.groups == groups
    np.testing.assert_allclose(delta.basis(0), u[1])
    for i in (1, 3, 4):  # the kept group: from the base, and block 4 written here
        np.testing.assert_allclose(delta.decompress(i), blocks[i], atol=1e-12)
    np.testing.assert_allclose(delta.decompress(0), w @ (w.T @ blocks[0]), atol=1e-12)
    np.testing.assert_allclose(delta.decompress(2), blocks[2], atol=1e-12)  # moved, stored raw here
    np.testing.assert_allclose(delta.decompress_range(0, 7), np.hstack([delta.decompress(i) for i in range(7)]))
    bases, offsets = delta.all_bases()
    assert offsets.tolist() == [0, 3, 7, 7]
    np.testing.assert_array_equal(bases, np.hstack([u[1], w]))
    with pytest.raises(ValueError, match="group 0 does not extend group 1"):
        storage.create_artifact(root, "c", "bad", groups=[[3, 1, 4], [0, 5], [2, 6]], base="first",
                                base_map=[1, -1, -1])
