"""Fault injection: every single-file corruption of a store is detected and named on read.

For each file of a collection, an artifact and a run (data/offsets/norms2 chunks, artifact
arrays, zarr.json files, manifests, run.json), flip a byte or delete the file, then do the
next read.  It must either raise an :class:`IntegrityError` naming the file, or (a byte
flip in metadata that changes nothing read, e.g. a larger array shape) give back exactly
the original numbers.  Chunk damage is always reported.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import zarr

from storage import (
    CheckpointError,
    IntegrityError,
    ingest_blocks,
    open_artifact,
    open_collection,
    open_run,
    write_artifact,
)
from storage.errors import CorruptedFileError, MissingChunkError


def _files(folder: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(dirpath, n), folder) for n in names]
    return sorted(out)


def _flip(path: str, pos: int, mask: int = 0x01) -> None:
    data = bytearray(open(path, "rb").read())
    data[pos % len(data)] ^= mask
    open(path, "wb").write(bytes(data))


def _positions(path: str) -> list[int]:
    n = os.path.getsize(path)
    if path.endswith(".json"):  # metadata: many positions, one bit each
        return sorted({*range(0, n, max(1, n // 12)), n - 1, n - 2})
    return sorted({0, n // 2, n - 1, n - 5})  # chunks: header, body, crc trailer


@pytest.fixture
def collection_store(tmp_path, rng):
    root = str(tmp_path / "pristine")
    blocks = [rng.standard_normal((6, w)) for w in (3, 5, 2, 7)]
    ingest_blocks(root, "c", blocks, chunk_columns=4, names=["a", "b", "c", "d"])
    return root, blocks


def _read_all_collection(root: str) -> list[np.ndarray]:
    coll = open_collection(root, "c")
    out = [coll.block(i) for i in range(coll.n_blocks)]
    data, _ = coll.blocks(range(coll.n_blocks))
    np.testing.assert_array_equal(data, np.concatenate(out, axis=1))
    return out


def _check_detected_or_same(read, expected, rel: str, what: str) -> None:
    try:
        got = read()
    except IntegrityError as exc:
        parts = rel.split("/")
        named = rel in str(exc) or (parts[-1] == "zarr.json" and "/".join(parts[-2:]) in str(exc)) or parts[-1] in str(exc)
        assert named, f"{what} of {rel}: error does not name the file: {exc}"
        return
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e, err_msg=f"{what} of {rel} gave different numbers silently")


def test_every_collection_file_corruption_is_detected(tmp_path, collection_store):
    pristine, blocks = collection_store
    files = _files(os.path.join(pristine, "c"))
    assert any("/c/" in f for f in files)
    work = str(tmp_path / "work")
    for rel in files:
        is_chunk = "/c/" in rel
        cases = [("delete", None)] + [("flip", p) for p in _positions(os.path.join(pristine, "c", rel))]
        for kind, pos in cases:
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(pristine, work)
            path = os.path.join(work, "c", rel)
            if kind == "delete":
                os.remove(path)
            else:
                _flip(path, pos)
            if is_chunk:  # chunk damage is always an error naming the chunk
                with pytest.raises(IntegrityError) as info:
                    _read_all_collection(work)
                assert rel in str(info.value), str(info.value)
                if kind == "delete":
                    assert isinstance(info.value, MissingChunkError)
            else:
                _check_detected_or_same(lambda: _read_all_collection(work), blocks, rel, f"{kind}@{pos}")


def test_data_chunk_error_names_blocks(root, rng):
    blocks = [rng.standard_normal((4, w)) for w in (3, 5)]
    ingest_blocks(root, "c", blocks, chunk_columns=4, names=["first", "second"])
    chunk = os.path.join(root, "c", "data", "c", "0", "1")
    _flip(chunk, 3)
    coll = open_collection(root, "c")
    np.testing.assert_array_equal(coll.block(0)[:, :3], blocks[0])  # chunk 0 is intact
    with pytest.raises(CorruptedFileError, match=r"data/c/0/1 is corrupted \(crc32c.*columns 4:8, block 1 \('second'\)"):
        coll.block(1)
    with pytest.raises(CorruptedFileError, match="data/c/0/1"):
        coll.verify()
    os.remove(chunk)
    with pytest.raises(MissingChunkError, match=r"data/c/0/1 is missing"):
        open_collection(root, "c").column_range(0, 8)


def test_zero_blocks_are_stored_not_filled(root):
    """write_empty_chunks: an all-zero chunk exists, so absence always means damage."""
    blocks = [np.zeros((3, 4)), np.ones((3, 2))]
    coll = ingest_blocks(root, "c", blocks, chunk_columns=2)
    assert os.path.exists(os.path.join(root, "c", "data", "c", "0", "0"))
    coll = coll.append_blocks([np.zeros((3, 3))])
    assert sorted(os.listdir(os.path.join(root, "c", "data", "c", "0"))) == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(coll.block(2), 0)
    assert coll.verify()["checksummed"]


def test_append_refuses_to_relaunder_a_damaged_tail_chunk(root, rng):
    coll = ingest_blocks(root, "c", [rng.standard_normal((3, 3))], chunk_columns=4)
    _flip(os.path.join(root, "c", "data", "c", "0", "0"), 2)
    with pytest.raises(CorruptedFileError, match="data/c/0/0"):
        coll.append_blocks([rng.standard_normal((3, 2))])


def test_verify_catches_a_wrong_but_valid_chunk(root, rng):
    blocks = [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))]
    ingest_blocks(root, "c", blocks, chunk_columns=4)
    g = zarr.open_group(os.path.join(root, "c"), mode="r+")  # a writer bypassing storage
    g["data"][:, 4:8] = 2 * blocks[1]
    with pytest.raises(CorruptedFileError, match=r"block 1 .*squared norm"):
        open_collection(root, "c").verify()


def test_legacy_store_without_checksums_still_opens(root, rng):
    """Schema-1 stores (no crc32c, unsealed record) open and read as before."""
    from zarr.codecs import BloscCodec

    block = rng.standard_normal((3, 5))
    g = zarr.open_group(os.path.join(root, "old"), mode="w")
    data = g.create_array("data", shape=(3, 5), chunks=(3, 4), dtype="f8", compressors=[BloscCodec(cname="zstd")], fill_value=0)
    data[...] = block
    g.create_array("offsets", shape=(2,), chunks=(8,), dtype="i8", fill_value=0)[...] = [0, 5]
    g.create_array("norms2", shape=(1,), chunks=(8,), dtype="f8", fill_value=0)[...] = [float((block**2).sum())]
    g.attrs["cmsvd"] = {"schema_version": 1, "kind": "collection", "rows": 3, "dtype": "float64", "n_blocks": 1,
                        "n_columns": 5, "names": ["x"], "state": "published"}
    coll = open_collection(root, "old")
    assert not coll.checksummed
    np.testing.assert_array_equal(coll.block(0), block)
    assert coll.verify() == {"blocks": 1, "columns": 5, "checksummed": False}
    coll = coll.append_blocks([block])
    np.testing.assert_array_equal(coll.block(1), block)


def test_memory_store_chunk_damage_is_named(mem_root, rng):
    import fsspec

    blocks = [rng.standard_normal((4, 3)), rng.standard_normal((4, 6))]
    ingest_blocks(mem_root, "c", blocks, chunk_columns=4)
    fs = fsspec.filesystem("memory")
    chunk = next(p for p in fs.find(f"{mem_root}/c") if p.endswith("/data/c/0/1"))
    raw = bytearray(fs.cat_file(chunk))
    raw[len(raw) // 2] ^= 0x10
    fs.pipe_file(chunk, bytes(raw))
    with pytest.raises(CorruptedFileError, match="data/c/0/1 is corrupted"):
        open_collection(mem_root, "c").block(1)
    fs.rm(chunk)
    with pytest.raises(MissingChunkError, match="data/c/0/1 is missing"):
        open_collection(mem_root, "c").to_dask().compute()


# ---- artifacts -----------------------------------------------------------------------------


@pytest.fixture
def artifact_store(tmp_path, rng):
    root = str(tmp_path / "pristine")
    m = 8
    blocks = [rng.standard_normal((m, w)) for w in (3, 4, 2, 5)]
    ingest_blocks(root, "c", blocks)
    groups = [[0, 2], [1], [3]]
    bases, coefs = [], [None] * 4
    for k, members in enumerate(groups):
        if k == 2:
            bases.append(None)
            coefs[3] = blocks[3]
            continue
        u = np.linalg.svd(np.concatenate([blocks[i] for i in members], axis=1), full_matrices=False)[0][:, :2]
        bases.append(u)
        for i in members:
            coefs[i] = u.T @ blocks[i]
    write_artifact(root, "c", "a", groups=groups, bases=bases, coefficients=coefs, errors=[0.1, 0.2, 0.0], params={"eps": 0.5})
    art = open_artifact(root, "c", "a")
    return root, [art.decompress(i) for i in range(4)]


def _read_all_artifact(root: str) -> list[np.ndarray]:
    art = open_artifact(root, "c", "a")
    return [art.decompress(i) for i in range(art.n_blocks)] + [art.errors, np.asarray(art.groups, dtype=object)]


@pytest.mark.slow  # flips bytes in every file of a whole artifact, one at a time
def test_every_artifact_file_corruption_is_detected(tmp_path, artifact_store):
    pristine, expected = artifact_store
    art_dir = os.path.join("artifacts", "c", "a")
    files = _files(os.path.join(pristine, art_dir))
    assert "manifest.json" in files and any("coefficients/c/" in f for f in files)
    work = str(tmp_path / "work")
    for rel in files:
        for kind, pos in [("delete", None)] + [("flip", p) for p in _positions(os.path.join(pristine, art_dir, rel))]:
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(pristine, work)
            path = os.path.join(work, art_dir, rel)
            if kind == "delete":
                os.remove(path)
            else:
                _flip(path, pos)
            if rel == "manifest.json" and kind == "delete":
                continue  # no manifest = no artifact (CollectionNotFoundError): the publish marker
            with pytest.raises(IntegrityError) as info:  # everything is hashed or checksummed
                _read_all_artifact(work)
            assert rel.split("/")[-1] in str(info.value) or rel in str(info.value), f"{kind}@{pos} {rel}: {info.value}"


def test_artifact_decompress_names_the_block(root, artifact_store):
    pristine, _ = artifact_store
    chunk = os.path.join(pristine, "artifacts", "c", "a", "coefficients", "c", "0")
    _flip(chunk, 7)
    art = open_artifact(pristine, "c", "a")
    with pytest.raises(CorruptedFileError, match=r"artifact 'a', coefficients of block 0: chunk .*coefficients/c/0 is corrupted"):
        art.decompress(0)
    with pytest.raises(IntegrityError, match="coefficients/c/0"):
        art.verify()


# ---- runs ----------------------------------------------------------------------------------


def test_run_files_corruption_is_detected(tmp_path, rng):
    root = str(tmp_path / "s")
    run = open_run(root, "c", "r1", {"eps": 0.1}, "fp")
    run.save_stage("scan", {"x": rng.standard_normal(5)}, {"seconds": 1.5})
    run_dir = os.path.join(root, "runs", "c", "r1")
    for rel in ("run.json", "scan/manifest.json", "scan/x.npy"):
        path = os.path.join(run_dir, rel)
        pristine = open(path, "rb").read()
        for pos in _positions(path):
            _flip(path, pos)
            with pytest.raises(IntegrityError) as info:
                r = open_run(root, "c", "r1", {"eps": 0.1}, "fp")
                r.stage_meta("scan") if r.is_complete("scan") else None
                r.load_stage("scan")
            assert rel.split("/")[-1] in str(info.value) or "'x'" in str(info.value), str(info.value)
            open(path, "wb").write(pristine)


def test_corrupted_run_json_is_exit_4_material(tmp_path):
    root = str(tmp_path / "s")
    open_run(root, "c", "r1", {"eps": 0.1}, "fp")
    path = os.path.join(root, "runs", "c", "r1", "run.json")
    open(path, "w").write('{"run_id": ')
    with pytest.raises(CorruptedFileError, match=r"runs/c/r1/run.json is corrupted \(not valid JSON"):
        open_run(root, "c", "r1", {"eps": 0.1}, "fp")
    record = {"run_id": "r1", "collection": "c", "params": {"eps": 0.2}, "params_fingerprint": "x", "input_fingerprint": "fp"}
    open(path, "w").write(json.dumps({**record, "sha256": "0" * 64}))
    with pytest.raises(CorruptedFileError, match="seal mismatch"):
        open_run(root, "c", "r1", {"eps": 0.1}, "fp")
    assert issubclass(CheckpointError, IntegrityError)


def test_memory_store_pointer_damage_is_named(mem_root, rng):
    import fsspec

    blocks = [rng.standard_normal((4, 3))]
    ingest_blocks(mem_root, "c", blocks)
    fs = fsspec.filesystem("memory")
    pointer = f"{mem_root}/c/current.json"
    good = fs.cat_file(pointer)
    for damaged in (good[: len(good) // 2], good.replace(b"v-", b"v_", 1), good[:-3] + bytes([good[-3] ^ 1]) + good[-2:]):
        fs.pipe_file(pointer, damaged)
        with pytest.raises(CorruptedFileError, match="c/current.json"):
            open_collection(mem_root, "c")
    fs.pipe_file(pointer, good)
    version = json.loads(good)["version"]
    fs.rm(f"{mem_root}/c/{version}/zarr.json")
    with pytest.raises(CorruptedFileError, match=f"{version}/zarr.json is missing"):
        open_collection(mem_root, "c")
