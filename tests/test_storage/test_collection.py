"""Collections: round trips, gathers, append, atomicity under injected failures, validation."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storage
from storage import (
    BlockValidationError,
    CollectionExistsError,
    CollectionNotFoundError,
    EmptyInputError,
    InvalidNameError,
    create_collection,
    ingest_blocks,
    open_collection,
)


class Boom(RuntimeError):
    pass


def failing(blocks, k):
    """Yield k blocks, then raise (an interrupted source)."""
    for i, b in enumerate(blocks):
        if i == k:
            raise Boom(f"source died after {k} blocks")
        yield b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_exact_values_and_dtype(root, make_blocks, dtype):
    blocks = make_blocks(7, [3, 1, 9, 4, 12, 2, 5], dtype)
    coll = ingest_blocks(root, "c", blocks, names=[f"b{i}" for i in range(7)], chunk_columns=5)
    assert coll.dtype == np.dtype(dtype) and coll.rows == 7 and coll.n_blocks == 7
    assert coll.names == [f"b{i}" for i in range(7)]
    np.testing.assert_array_equal(coll.widths, [3, 1, 9, 4, 12, 2, 5])
    assert coll.offsets[0] == 0 and coll.offsets[-1] == coll.n_columns == 36
    for i, b in enumerate(blocks):
        got = coll.block(i)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, b)
    expected = [np.sum(b.astype(np.float64) ** 2) for b in blocks]
    np.testing.assert_allclose(coll.norms2, expected, rtol=1e-12)
    assert coll.norms2.dtype == np.float64
    np.testing.assert_array_equal(coll.column_range(0, 36), np.concatenate(blocks, axis=1))


def test_blocks_gather_in_given_order_with_repeats(root, make_blocks):
    blocks = make_blocks(4, [2, 7, 1, 3, 8, 5], np.float32)
    coll = ingest_blocks(root, "c", blocks, chunk_columns=4)
    order = [4, 0, 4, 2, 5]
    data, offs = coll.blocks(order)
    assert data.shape == (4, sum(blocks[i].shape[1] for i in order))
    for j, i in enumerate(order):
        np.testing.assert_array_equal(data[:, offs[j] : offs[j + 1]], blocks[i])
    empty, eoffs = coll.blocks([])
    assert empty.shape == (4, 0) and eoffs.tolist() == [0]


def test_blocks_reads_each_chunk_once(root, make_blocks, monkeypatch):
    blocks = make_blocks(3, [1] * 40)
    coll = ingest_blocks(root, "c", blocks, chunk_columns=8)
    reads = []
    real = coll._data

    class Spy:
        def __getitem__(self, key):
            reads.append(key)
            return real[key]

    monkeypatch.setattr(coll, "_data", Spy())
    data, _ = coll.blocks(list(range(39, -1, -1)))
    assert len(reads) == 1  # 5 consecutive chunks fetched in one read, not 40 reads
    np.testing.assert_array_equal(data[:, 0], blocks[39][:, 0])


def test_to_dask_chunks_match_zarr(root, make_blocks):
    blocks = make_blocks(6, [5, 5, 5, 4], np.float32)
    coll = ingest_blocks(root, "c", blocks, chunk_columns=8)
    d = coll.to_dask()
    assert d.shape == (6, 19)
    assert d.chunks == ((6,), (8, 8, 3))
    np.testing.assert_array_equal(d.compute(), np.concatenate(blocks, axis=1))


def test_default_chunks_split_rows_only_for_tall_blocks():
    assert storage.default_chunks(512, np.float32) == (512, 8192)
    rows, cols = storage.default_chunks(10**6, np.float64)
    assert rows < 10**6 and cols >= 64 and rows * cols * 8 <= 16 * 2**20


def test_tall_blocks_chunked_by_rows(root, make_blocks):
    blocks = make_blocks(50, [3, 6, 2])
    coll = ingest_blocks(root, "c", blocks, chunk_rows=16, chunk_columns=4)
    assert coll.chunks == (16, 4)
    for i, b in enumerate(blocks):
        np.testing.assert_array_equal(coll.block(i), b)


def test_bad_index_names_it(root, make_blocks):
    coll = ingest_blocks(root, "c", make_blocks(2, [1, 2]))
    with pytest.raises(IndexError, match="block index 2"):
        coll.block(2)
    with pytest.raises(IndexError, match="-1"):
        coll.blocks([0, -1])


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_url_schemes(tmp_path, mem_root, make_blocks, scheme):
    url = f"file://{tmp_path}/s" if scheme == "file" else mem_root
    blocks = make_blocks(3, [2, 4])
    ingest_blocks(url, "c", blocks)
    coll = open_collection(url, "c")
    np.testing.assert_array_equal(coll.block(1), blocks[1])
    assert coll.nbytes_stored > 0
    assert storage.list_collections(url) == ["c"]


def test_fingerprint_changes_with_content(root, make_blocks):
    blocks = make_blocks(3, [2, 4])
    a = ingest_blocks(root, "a", blocks)
    b = ingest_blocks(root, "b", blocks)
    assert a.fingerprint() == b.fingerprint()
    changed = [blocks[0], blocks[1] * 2]
    c = ingest_blocks(root, "c", changed)
    assert c.fingerprint() != a.fingerprint()


def test_create_existing_needs_overwrite(root, make_blocks):
    ingest_blocks(root, "c", make_blocks(3, [2]))
    with pytest.raises(CollectionExistsError):
        ingest_blocks(root, "c", make_blocks(3, [2]))
    new = make_blocks(3, [5])
    coll = ingest_blocks(root, "c", new, overwrite=True)
    assert coll.n_blocks == 1
    np.testing.assert_array_equal(coll.block(0), new[0])


# ---- atomicity -------------------------------------------------------------


def staging_leftovers(root):
    staging = os.path.join(root, ".staging")
    return os.listdir(staging) if os.path.isdir(staging) else []


def test_interrupted_ingest_leaves_nothing_visible(root, make_blocks):
    blocks = make_blocks(4, [3] * 10)
    with pytest.raises(Boom):
        ingest_blocks(root, "c", failing(blocks, 6), chunk_columns=4)
    with pytest.raises(CollectionNotFoundError):
        open_collection(root, "c")
    assert staging_leftovers(root) == []
    assert not os.path.exists(os.path.join(root, "c"))


def test_failed_ingest_keeps_previous_collection(root, make_blocks):
    old = make_blocks(4, [2, 3])
    ingest_blocks(root, "c", old)
    bad = make_blocks(4, [3] * 5)
    bad[3][1, 1] = np.nan
    with pytest.raises(BlockValidationError, match=r"block 3 \('x3'\): contains NaN"):
        ingest_blocks(root, "c", bad, names=[f"x{i}" for i in range(5)], overwrite=True)
    coll = open_collection(root, "c")
    assert coll.n_blocks == 2
    np.testing.assert_array_equal(coll.block(1), old[1])


def test_writer_context_manager_discards_on_error(root, make_blocks):
    with pytest.raises(Boom):
        with create_collection(root, "c", 4, np.float32) as w:
            w.append(make_blocks(4, [3], np.float32)[0])
            raise Boom
    assert staging_leftovers(root) == []
    with pytest.raises(CollectionNotFoundError):
        open_collection(root, "c")


def test_append_round_trip(root, make_blocks):
    first = make_blocks(5, [3, 6, 2], np.float32)
    coll = ingest_blocks(root, "c", first, chunk_columns=4)  # 11 columns: last chunk partial
    more = make_blocks(5, [5, 1, 7], np.float32)
    coll2 = coll.append_blocks(more, names=["m0", "m1", "m2"])
    assert coll2.n_blocks == 6 and coll2.n_columns == 24
    assert coll2.names[-3:] == ["m0", "m1", "m2"]
    for i, b in enumerate(first + more):
        np.testing.assert_array_equal(coll2.block(i), b)
    np.testing.assert_allclose(coll2.norms2[3:], [np.sum(b.astype(np.float64) ** 2) for b in more])
    assert coll2.to_dask().shape == (5, 24)


@pytest.mark.parametrize("fail_at", [0, 2])
def test_failed_append_leaves_collection_untouched(root, make_blocks, fail_at):
    first = make_blocks(5, [3, 6, 2])
    coll = ingest_blocks(root, "c", first, chunk_columns=4)
    fp = coll.fingerprint()
    with pytest.raises(Boom):
        coll.append_blocks(failing(make_blocks(5, [5, 9, 7, 1]), fail_at))
    after = open_collection(root, "c")
    assert after.fingerprint() == fp and after.n_blocks == 3 and after.n_columns == 11
    for i, b in enumerate(first):
        np.testing.assert_array_equal(after.block(i), b)
    assert after.to_dask().shape == (5, 11)
    # and the collection still accepts a good append afterwards
    good = make_blocks(5, [2])
    again = after.append_blocks(good)
    np.testing.assert_array_equal(again.block(3), good[0])
    np.testing.assert_array_equal(again.block(2), first[2])


def test_crash_before_commit_record_is_invisible(root, make_blocks, monkeypatch):
    """Simulate a crash between writing the data/offsets and the final metadata write."""
    first = make_blocks(5, [3, 6])
    coll = ingest_blocks(root, "c", first, chunk_columns=4)
    fp = coll.fingerprint()
    w = coll.appender()
    w.append(make_blocks(5, [4])[0])
    monkeypatch.setattr(w, "_commit_record", lambda: (_ for _ in ()).throw(Boom("killed")))
    with pytest.raises(Boom):
        w.publish()
    after = open_collection(root, "c")
    assert after.fingerprint() == fp
    for i, b in enumerate(first):
        np.testing.assert_array_equal(after.block(i), b)


def test_poisoned_writer_refuses_publish(root, make_blocks):
    w = create_collection(root, "c", 3, np.float64)
    w.append(make_blocks(3, [2])[0])
    with pytest.raises(BlockValidationError):
        w.append(np.zeros((4, 2)))
    with pytest.raises(RuntimeError, match="failed"):
        w.publish()
    w.discard()
    assert staging_leftovers(root) == []


# ---- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((3, 2), np.inf), r"block 1 \('b1'\): contains Inf"),
        (np.ones((4, 2)), r"block 1 \('b1'\): has 4 rows, the collection has 3"),
        (np.ones((3, 0)), r"block 1 \('b1'\): has no columns"),
        (np.array([["a", "b"]] * 3), r"block 1 \('b1'\): non-numeric dtype"),
        (np.ones((3, 2), dtype=bool), r"block 1 \('b1'\): non-numeric dtype bool"),
        (np.ones((3, 2), dtype=np.complex128), r"block 1 \('b1'\): complex dtype complex128 needs stack_complex"),
        (np.ones((3, 2, 1)), r"block 1 \('b1'\): expected a 2-D array"),
    ],
)
def test_validation_errors_name_the_block(root, bad, message):
    with pytest.raises(BlockValidationError, match=message) as info:
        ingest_blocks(root, "c", [np.ones((3, 2)), bad], names=["b0", "b1"])
    assert info.value.index == 1 and info.value.name == "b1"
    with pytest.raises(CollectionNotFoundError):
        open_collection(root, "c")


def test_lossy_dtype_rejected(root):
    with pytest.raises(BlockValidationError, match="float64 cannot be stored losslessly in a float32"):
        ingest_blocks(root, "c", [np.ones((3, 2), np.float32), np.ones((3, 2))])


def test_integer_blocks_become_float64(root):
    coll = ingest_blocks(root, "c", [np.arange(6).reshape(3, 2)])
    assert coll.dtype == np.float64
    np.testing.assert_array_equal(coll.block(0), np.arange(6).reshape(3, 2))


def test_duplicate_names_rejected(root):
    with pytest.raises(BlockValidationError, match=r"block 2 \('a'\): duplicate block name"):
        ingest_blocks(root, "c", [np.ones((2, 1))] * 3, names=["a", "b", "a"])


def test_empty_input_rejected(root):
    with pytest.raises(EmptyInputError):
        ingest_blocks(root, "c", [])
    with pytest.raises(EmptyInputError):
        create_collection(root, "c", 3).publish()
    assert staging_leftovers(root) == []


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "runs", "x" * 200, "a..b", "/abs"])
def test_unsafe_collection_names(root, name):
    with pytest.raises(InvalidNameError):
        ingest_blocks(root, name, [np.ones((2, 2))])
    with pytest.raises(InvalidNameError):
        open_collection(root, name)


def test_complex_stacked_when_asked(root):
    z = np.array([[1 + 2j, 3 - 1j], [0.5j, 2.0]], dtype=np.complex64)
    coll = ingest_blocks(root, "c", [z], stack_complex=True)
    assert coll.rows == 4 and coll.dtype == np.float32
    np.testing.assert_array_equal(coll.block(0), np.vstack([z.real, z.imag]))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    widths=st.lists(st.integers(1, 9), min_size=1, max_size=12),
    chunk=st.integers(1, 10),
    split=st.integers(0, 12),
)
def test_property_stream_and_append_equal_concatenation(mem_root, widths, chunk, split):
    rng = np.random.default_rng(len(widths) * 100 + chunk)
    blocks = [rng.standard_normal((3, w)) for w in widths]
    split = min(split, len(blocks) - 1) + 1
    name = f"p{uuid.uuid4().hex}"
    coll = ingest_blocks(mem_root, name, blocks[:split], chunk_columns=chunk)
    if split < len(blocks):
        coll = coll.append_blocks(blocks[split:])
    np.testing.assert_array_equal(coll.column_range(0, coll.n_columns), np.concatenate(blocks, axis=1))
    data, offs = coll.blocks(range(len(blocks))[::-1])
    np.testing.assert_array_equal(data, np.concatenate(blocks[::-1], axis=1))


def test_object_store_publish_interrupted_before_pointer(mem_root, make_blocks, monkeypatch):
    """memory:// publishes like S3 (version prefix, pointer last): a crash before the
    pointer write leaves objects under the name but no visible collection, and a retry
    succeeds and removes the abandoned version."""
    import fsspec

    fs = fsspec.filesystem("memory")
    real_pipe = type(fs).pipe_file

    def pipe_file(self, path, value, *a, **k):
        if str(path).endswith("/c/current.json"):
            raise Boom("killed before the pointer")
        return real_pipe(self, path, value, *a, **k)

    monkeypatch.setattr(type(fs), "pipe_file", pipe_file)
    blocks = make_blocks(3, [2, 5])
    with pytest.raises(Boom):
        ingest_blocks(mem_root, "c", blocks, chunk_columns=2)
    with pytest.raises(CollectionNotFoundError):  # nothing is visible
        open_collection(mem_root, "c")
    monkeypatch.setattr(type(fs), "pipe_file", real_pipe)
    coll = ingest_blocks(mem_root, "c", blocks, chunk_columns=2)
    np.testing.assert_array_equal(coll.block(1), blocks[1])
    versions = [p for p in fs.ls(f"{mem_root}/c", detail=False) if p.rsplit("/", 1)[-1].startswith("v-")]
    assert len(versions) == 1
