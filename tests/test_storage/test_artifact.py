"""Compressed artifacts: exact reconstruction from stored factors, streaming writer, integrity."""

from __future__ import annotations

import os

import numpy as np
import pytest

from storage import (
    CollectionNotFoundError,
    IntegrityError,
    create_artifact,
    ingest_blocks,
    open_artifact,
    open_artifact_writer,
    write_artifact,
)


def factorise(blocks, groups, r):
    """Per group truncated SVD: bases per group, coefficients per block, exact errors."""
    bases, coefs, errors, ranks = [], [None] * len(blocks), [], []
    for members in groups:
        m = np.concatenate([blocks[i] for i in members], axis=1).astype(np.float64)
        u, s, _ = np.linalg.svd(m, full_matrices=False)
        k = min(r, len(s))
        basis = u[:, :k]
        bases.append(basis)
        for i in members:
            coefs[i] = basis.T @ blocks[i]
        errors.append(float(np.sqrt(np.sum(s[k:] ** 2) / np.sum(s**2))))
        ranks.append(k)
    return bases, coefs, errors, ranks


@pytest.fixture
def setup(root, rng):
    m = 12
    basis = np.linalg.qr(rng.standard_normal((m, 3)))[0]
    widths = [4, 2, 7, 3, 5, 1]
    blocks = [basis @ rng.standard_normal((3, w)) + 1e-3 * rng.standard_normal((m, w)) for w in widths]
    coll = ingest_blocks(root, "c", blocks)
    groups = [[4, 0, 2], [1, 5], [3]]
    return coll, blocks, groups


def test_write_open_decompress(root, setup):
    coll, blocks, groups = setup
    bases, coefs, errors, ranks = factorise(blocks, groups, 3)
    art = write_artifact(root, "c", "eps0.1", groups=groups, bases=bases, coefficients=coefs, errors=errors, ranks=ranks, params={"eps": 0.1})
    art = open_artifact(root, "c", "eps0.1", verify=True)
    assert art.n_blocks == 6 and art.groups == groups
    assert art.labels.tolist() == [0, 1, 0, 2, 0, 1]
    np.testing.assert_array_equal(art.errors, errors)
    assert art.ranks.tolist() == ranks and art.params == {"eps": 0.1}
    for i, b in enumerate(blocks):
        g = art.labels[i]
        np.testing.assert_array_equal(art.decompress(i), bases[g] @ coefs[i])
        np.testing.assert_array_equal(art.coefficients(i), coefs[i])
        assert np.linalg.norm(art.decompress(i) - b) <= errors[g] * np.sqrt(sum(coll.norms2[groups[g]])) + 1e-12
    assert art.input_nbytes == coll.nbytes_stored > 0 and art.nbytes_stored > 0
    assert art.input_raw_nbytes == 12 * 22 * 8
    # coefficients: one flat ragged array in block order
    assert art._group["coefficients"].shape == (sum(3 * w for w in coll.widths),)
    with pytest.raises(IndexError):
        art.decompress(6)


def test_packing_through_a_small_buffer_keeps_every_block(root, setup, monkeypatch):
    """Finalize packs coefficients in runs of blocks that fit its buffer (bounded client
    memory); a buffer smaller than one block's coefficients still packs every block."""
    import storage._artifact_writer

    coll, blocks, groups = setup
    bases, coefs, errors, ranks = factorise(blocks, groups, 3)
    monkeypatch.setattr(storage._artifact_writer, "_PACK_BYTES", 3 * 8 * 4)  # about one narrow block
    write_artifact(root, "c", "small-buffer", groups=groups, bases=bases, coefficients=coefs, errors=errors, ranks=ranks)
    art = open_artifact(root, "c", "small-buffer", verify=True)
    for i in range(len(blocks)):
        np.testing.assert_array_equal(art.coefficients(i), coefs[i])


def test_streaming_writer_from_reopened_handles(root, setup, rng):
    _, blocks, groups = setup
    bases, coefs, errors, ranks = factorise(blocks, groups, 2)
    w = create_artifact(root, "c", "stream", groups=groups, params={"r": 2}, dtype=np.float32)
    for g in (2, 0):  # any order, any process
        open_artifact_writer(root, "c", "stream").write_group(g, bases[g], np.concatenate([coefs[i] for i in groups[g]], axis=1))
    assert w.missing_groups() == [1]
    with pytest.raises(ValueError, match="not written"):
        w.finalize(errors)
    # group 1 stored raw (uncompressed): its coefficients are the blocks
    w.write_group(1, None, [blocks[i] for i in groups[1]])
    art = w.finalize(errors)
    assert art.dtype == np.float32 and art.kinds.tolist() == [0, 1, 0]
    assert art.ranks.tolist() == [2, 0, 2]
    np.testing.assert_array_equal(art.decompress(5), blocks[5].astype(np.float32))
    np.testing.assert_allclose(art.decompress(0), bases[0] @ coefs[0], rtol=1e-5, atol=1e-5)
    assert not os.path.exists(os.path.join(root, "artifacts", "c", ".staging", "stream"))


def test_bad_inputs_rejected(root, setup):
    _, blocks, groups = setup
    bases, coefs, errors, ranks = factorise(blocks, groups, 3)
    with pytest.raises(ValueError, match="in no group"):
        create_artifact(root, "c", "x", groups=[[0, 1], [2]])
    with pytest.raises(ValueError, match="more than one group"):
        create_artifact(root, "c", "x", groups=[[0, 1, 2, 3, 4, 5], [2]])
    w = create_artifact(root, "c", "x", groups=groups)
    with pytest.raises(ValueError, match="not orthonormal"):
        w.write_group(0, bases[0] * 2, [coefs[i] for i in groups[0]])
    with pytest.raises(ValueError, match=r"group 0, block 4: coefficients shape \(3, 1\), expected \(3, 5\)"):
        w.write_group(0, bases[0], [coefs[i][:, :1] for i in groups[0]])
    w.abort()
    with pytest.raises(CollectionNotFoundError):
        open_artifact(root, "c", "x")


def test_corruption_detected(root, setup):
    _, blocks, groups = setup
    bases, coefs, errors, ranks = factorise(blocks, groups, 3)
    write_artifact(root, "c", "a", groups=groups, bases=bases, coefficients=coefs, errors=errors)
    d = os.path.join(root, "artifacts", "c", "a", "coefficients", "c", "0")
    raw = bytearray(open(d, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(d, "wb").write(bytes(raw))
    with pytest.raises(IntegrityError, match="coefficients/c/0 is corrupted"):
        open_artifact(root, "c", "a").verify()
    with pytest.raises(IntegrityError):
        open_artifact(root, "c", "a", verify=True)


def test_failed_finalize_publishes_nothing(root, setup, monkeypatch):
    _, blocks, groups = setup
    bases, coefs, errors, _ = factorise(blocks, groups, 3)
    import storage.artifact as artifact

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(artifact.ArtifactWriter, "_pack_coefficients", boom)
    with pytest.raises(RuntimeError):
        write_artifact(root, "c", "a", groups=groups, bases=bases, coefficients=coefs, errors=errors)
    with pytest.raises(CollectionNotFoundError):
        open_artifact(root, "c", "a")


def test_groups_written_together_share_one_part(root, setup):
    """write_groups puts several groups in one part (three files, not three per group);
    a group written again in another part is taken once; a damaged part is named."""
    from storage import CorruptedFileError

    _, blocks, groups = setup
    bases, coefs, errors, ranks = factorise(blocks, groups, 2)
    w = create_artifact(root, "c", "bundled", groups=groups)
    entries = {g: (bases[g], [coefs[i] for i in groups[g]]) for g in (0, 2)}
    w.write_groups(entries)
    parts = os.path.join(root, "artifacts", "c", ".staging", "bundled", "parts")
    assert len(os.listdir(parts)) == 3 and w.missing_groups() == [1]
    w.write_groups({1: (None, [blocks[i] for i in groups[1]]), 2: entries[2]})  # group 2 twice
    assert w.missing_groups() == []
    art = w.finalize(errors)
    assert art.kinds.tolist() == [0, 1, 0]
    for i in range(len(blocks)):
        expected = blocks[i] if i in groups[1] else coefs[i]
        np.testing.assert_array_equal(art.coefficients(i), expected)

    w = create_artifact(root, "c", "damaged", groups=groups)
    w.write_groups({g: (bases[g], [coefs[i] for i in groups[g]]) for g in range(len(groups))})
    parts = os.path.join(root, "artifacts", "c", ".staging", "damaged", "parts")
    (coef_file,) = [f for f in os.listdir(parts) if f.endswith(".coef.npy")]
    with open(os.path.join(parts, coef_file), "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CorruptedFileError, match=coef_file):
        w.finalize(errors)


def test_direct_packing_by_chunks_in_any_order(root, setup):
    """start_direct / write_*_chunk / finish_direct: chunk writers (any process, any order)
    fill the packed layout; all-zero chunks are written too, a missing chunk is refused,
    and the result reads back exactly and verifies."""
    _, blocks, groups = setup
    bases, coefs, errors, _ = factorise(blocks, groups, 2)
    ranks = [2, 0, 2]  # group 1 stored as it is
    w = create_artifact(root, "c", "direct", groups=groups)
    layout = w.start_direct(ranks, coefficient_chunk=16)
    flat = np.zeros(int(layout.coef_offsets[-1]))
    for i, b in enumerate(blocks):
        value = np.zeros_like(b) if i in groups[1] else coefs[i]  # group 1: all-zero coefficients
        flat[layout.coef_offsets[i] : layout.coef_offsets[i + 1]] = np.ravel(value)
    side = np.hstack([bases[g] for g in range(3) if ranks[g]])
    files = {}
    n_chunks = -(-flat.size // 16)
    for c in reversed(range(n_chunks)):
        files.update(open_artifact_writer(root, "c", "direct").write_coefficient_chunk(c, flat[c * 16 : (c + 1) * 16]))
    with pytest.raises(ValueError, match="not written"):
        w.finish_direct(errors, files)
    files.update(w.write_basis_chunk(0, side))
    art = w.finish_direct(errors, files)
    art = open_artifact(root, "c", "direct", verify=True)
    assert art.kinds.tolist() == [0, 1, 0] and art.ranks.tolist() == ranks
    np.testing.assert_array_equal(art.errors, errors)
    for i in range(len(blocks)):
        expected = np.zeros_like(blocks[i]) if i in groups[1] else coefs[i]
        np.testing.assert_array_equal(art.coefficients(i), expected)
