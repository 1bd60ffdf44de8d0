"""Overwrite under fault injection: a kill at every mutating filesystem call leaves the old
version or the new one visible, whole; a later writer removes what the kill left behind.

"Kill" = from the k-th mutating call on, every mutating call raises (the process died):
for k = 0, 1, 2, ... until the overwrite completes.  On memory:// the calls are the
filesystem methods; on the moto S3 server they are the S3 requests themselves.
"""

from __future__ import annotations

import contextlib
import uuid

import fsspec
import numpy as np
import pytest

from storage import (
    CollectionExistsError,
    ingest_blocks,
    open_artifact,
    open_collection,
    write_artifact,
)


class Killed(Exception):
    """Injected: the writer died here."""


class Injector:
    """Counts mutating calls; from call number ``kill_at`` on, each one raises."""

    def __init__(self) -> None:
        self.kill_at: int | None = None
        self.count = 0

    def hit(self, what: str) -> None:
        if self.kill_at is None:
            return
        self.count += 1
        if self.count > self.kill_at:
            raise Killed(f"killed at mutating call {self.count} ({what})")

    @contextlib.contextmanager
    def armed(self, kill_at: int):
        self.kill_at, self.count = kill_at, 0
        try:
            yield self
        finally:
            self.kill_at = None


_MEMORY_MUTATORS = ("pipe_file", "rm_file", "rm", "rmdir", "cp_file", "copy", "mv", "mkdir", "makedirs", "touch")


@pytest.fixture
def memory_injector(monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    inj = Injector()
    for name in _MEMORY_MUTATORS:
        real = getattr(MemoryFileSystem, name)

        def wrapper(self, *a, _real=real, _name=name, **k):
            inj.hit(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(MemoryFileSystem, name, wrapper)
    real_open = MemoryFileSystem._open

    def _open(self, path, mode="rb", *a, **k):
        if any(c in mode for c in "wax"):
            inj.hit(f"open({mode})")
        return real_open(self, path, mode, *a, **k)

    monkeypatch.setattr(MemoryFileSystem, "_open", _open)
    return inj


def _read_all(url: str, opts: dict | None) -> np.ndarray:
    coll = open_collection(url, "c", storage_options=opts)
    return np.concatenate([coll.block(i) for i in range(coll.n_blocks)], axis=1)


def _versions(fs, path: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[-1].startswith("v-"))


def _overwrite_under_kills(new_root, inject: Injector, opts: dict | None, rng, fs) -> int:
    old = [rng.standard_normal((4, w)) for w in (2,)]
    new = [rng.standard_normal((4, w)) for w in (3, 1)]
    old_all, new_all = np.concatenate(old, axis=1), np.concatenate(new, axis=1)
    k = 0
    while True:
        url = new_root()
        ingest_blocks(url, "c", old, chunk_columns=2, storage_options=opts)
        with inject.armed(k):
            try:
                ingest_blocks(url, "c", new, chunk_columns=2, overwrite=True, storage_options=opts)
                done = True
            except Killed:
                done = False
        got = _read_all(url, opts)  # the old version or the new one, whole
        assert got.shape in (old_all.shape, new_all.shape), k
        if got.shape == old_all.shape:
            np.testing.assert_array_equal(got, old_all, err_msg=f"kill at {k}")
        else:
            np.testing.assert_array_equal(got, new_all, err_msg=f"kill at {k}")
        if done:
            break
        # a later writer cleans up what the killed one left
        ingest_blocks(url, "c", old, chunk_columns=2, overwrite=True, storage_options=opts)
        np.testing.assert_array_equal(_read_all(url, opts), old_all)
        path = fsspec.core.url_to_fs(url, **(opts or {}))[1]
        assert len(_versions(fs, f"{path}/c")) == 1, (k, _versions(fs, f"{path}/c"))
        k += 1
    assert k > 5  # the overwrite did go through many mutating calls
    return k


def test_collection_overwrite_survives_a_kill_anywhere_memory(mem_root, memory_injector, rng):
    fs = fsspec.filesystem("memory")
    n = iter(range(10**6))
    _overwrite_under_kills(lambda: f"{mem_root}/r{next(n)}", memory_injector, None, rng, fs)


def test_first_publish_races_are_refused(mem_root, rng):
    blocks = [rng.standard_normal((3, 2))]
    ingest_blocks(mem_root, "c", blocks)
    with pytest.raises(CollectionExistsError):
        ingest_blocks(mem_root, "c", blocks)
    np.testing.assert_array_equal(_read_all(mem_root, None), blocks[0])


def _artifact_inputs(rng, m=6, widths=(3, 2, 4)):
    blocks = [rng.standard_normal((m, w)) for w in widths]
    u = np.linalg.qr(rng.standard_normal((m, 2)))[0]
    return blocks, dict(groups=[[0, 1, 2]], bases=[u], coefficients=[u.T @ b for b in blocks], errors=[0.5])


@pytest.mark.slow  # one overwrite per mutating call (hundreds)
def test_artifact_overwrite_survives_a_kill_anywhere_memory(mem_root, memory_injector, rng):
    blocks, first = _artifact_inputs(rng)
    u2 = np.linalg.qr(rng.standard_normal((6, 3)))[0]
    second = dict(groups=[[0], [1, 2]], bases=[None, u2], coefficients=[blocks[0], u2.T @ blocks[1], u2.T @ blocks[2]],
                  errors=[0.0, 0.25])
    fs = fsspec.filesystem("memory")
    url = f"{mem_root}/r"
    ingest_blocks(url, "c", blocks)
    write_artifact(url, "c", "a", **first)
    k = 0
    while True:  # each round starts from `first` published: at first, then as the cleanup left it
        with memory_injector.armed(k):
            try:
                write_artifact(url, "c", "a", overwrite=True, **second)
                done = True
            except Killed:
                done = False
        art = open_artifact(url, "c", "a", verify=True)
        want = second if art.n_groups == 2 else first
        assert art.groups == want["groups"], k
        for i in range(3):
            g = art.labels[i]
            expected = want["coefficients"][i] if want["bases"][g] is None else want["bases"][g] @ want["coefficients"][i]
            np.testing.assert_allclose(art.decompress(i), expected, err_msg=f"kill at {k}")
        if done:
            break
        write_artifact(url, "c", "a", overwrite=True, **first)
        assert len(_versions(fs, f"{url.split('://', 1)[1]}/artifacts/c/a")) == 1
        k += 1
    assert k > 5


def test_local_overwrite_swaps_atomically(root, rng, monkeypatch):
    import storage._publish as publish

    old = [rng.standard_normal((3, 2))]
    ingest_blocks(root, "c", old)
    new = [rng.standard_normal((3, 5))]
    ingest_blocks(root, "c", new, overwrite=True)
    np.testing.assert_array_equal(_read_all(root, None), new[0])

    def boom(a, b):
        raise Killed("killed at the swap")

    monkeypatch.setattr(publish, "_rename_exchange", boom)
    with pytest.raises(Killed):
        ingest_blocks(root, "c", old, overwrite=True)
    np.testing.assert_array_equal(_read_all(root, None), new[0])


def test_stale_staging_is_swept(root, rng, monkeypatch):
    import os

    import storage._publish as publish

    blocks = [rng.standard_normal((3, 2))]
    monkeypatch.setattr(publish, "STALE_AFTER_S", -1.0)  # everything counts as stale
    stale = os.path.join(root, ".staging", "c-20200101T000000-0123456789ab")
    os.makedirs(os.path.join(stale, "data"))
    ingest_blocks(root, "d", blocks)
    assert not os.path.exists(stale)


# ---- the same on a real S3 API (moto server) ------------------------------------------------

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
from test_s3 import s3_endpoint  # noqa: E402,F401  (module-scoped server fixture)

_S3_MUTATING = {"PutObject", "DeleteObject", "DeleteObjects", "CopyObject", "UploadPart",
                "CreateMultipartUpload", "CompleteMultipartUpload", "UploadPartCopy"}


@pytest.fixture
def s3_injector(monkeypatch):
    inj = Injector()
    real = s3fs.S3FileSystem._call_s3

    async def _call_s3(self, method, *a, **k):
        name = method if isinstance(method, str) else getattr(method, "__name__", str(method))
        camel = "".join(p.capitalize() for p in name.split("_"))
        if camel in _S3_MUTATING:
            inj.hit(camel)
        return await real(self, method, *a, **k)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", _call_s3)
    return inj


def test_collection_overwrite_survives_a_kill_anywhere_s3(s3_endpoint, s3_injector, rng):  # noqa: F811
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    bucket = f"cmsvd-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir(bucket)
    n = iter(range(10**6))
    _overwrite_under_kills(lambda: f"s3://{bucket}/r{next(n)}", s3_injector, opts, rng, fs)


def test_s3_pointer_is_created_with_if_none_match(s3_endpoint, rng):  # noqa: F811
    from storage._location import resolve
    from storage._publish import write_exclusive

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    bucket = f"cmsvd-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**opts).mkdir(bucket)
    loc = resolve(f"s3://{bucket}/x", opts)
    write_exclusive(loc, b"1", "lease.json")
    with pytest.raises(FileExistsError):
        write_exclusive(loc, b"2", "lease.json")
    assert loc.read_bytes("lease.json") == b"1"
