"""s3:// against a real S3-compatible server (moto in server mode on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import uuid

import numpy as np
import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from storage import (  # noqa: E402
    BlockValidationError,
    CheckpointError,
    CollectionNotFoundError,
    ingest_blocks,
    ingest_npy_stack,
    open_artifact,
    open_collection,
    open_run,
    write_artifact,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3(s3_endpoint):
    import s3fs

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    bucket = f"cmsvd-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**opts).mkdir(bucket)
    return f"s3://{bucket}/data", opts


def test_collection_round_trip_and_append(s3, rng):
    url, opts = s3
    blocks = [rng.standard_normal((6, w)).astype(np.float32) for w in (3, 5, 2, 7)]
    coll = ingest_blocks(url, "c", blocks, chunk_columns=4, storage_options=opts)
    coll = open_collection(url, "c", storage_options=opts)
    assert coll.dtype == np.float32 and coll.n_blocks == 4
    for i, b in enumerate(blocks):
        np.testing.assert_array_equal(coll.block(i), b)
    data, _ = coll.blocks([3, 0])
    np.testing.assert_array_equal(data, np.concatenate([blocks[3], blocks[0]], axis=1))
    np.testing.assert_array_equal(coll.to_dask().compute(), np.concatenate(blocks, axis=1))
    assert coll.nbytes_stored > 0
    more = [rng.standard_normal((6, 3)).astype(np.float32)]
    coll = coll.append_blocks(more)
    np.testing.assert_array_equal(coll.block(4), more[0])
    np.testing.assert_array_equal(coll.block(3), blocks[3])


def test_failures_leave_nothing_visible(s3, rng):
    url, opts = s3
    blocks = [rng.standard_normal((4, 3)) for _ in range(4)]
    blocks[2][0, 0] = np.inf
    with pytest.raises(BlockValidationError, match="block 2"):
        ingest_blocks(url, "c", blocks, storage_options=opts)
    with pytest.raises(CollectionNotFoundError):
        open_collection(url, "c", storage_options=opts)
    good = ingest_blocks(url, "c", blocks[:2], storage_options=opts)
    fp = good.fingerprint()
    with pytest.raises(BlockValidationError):
        good.append_blocks(blocks[1:])  # the Inf block lands at index 3 of the collection
    assert open_collection(url, "c", storage_options=opts).fingerprint() == fp


def test_endpoint_from_environment(s3, rng, tmp_path, monkeypatch):
    url, opts = s3
    monkeypatch.setenv("CMSVD_S3_ENDPOINT", opts["client_kwargs"]["endpoint_url"])
    stack = rng.standard_normal((3, 4, 2))
    np.save(tmp_path / "s.npy", stack)
    coll = ingest_npy_stack(url, "env", tmp_path / "s.npy")
    np.testing.assert_array_equal(open_collection(url, "env").block(2), stack[2])
    assert coll.n_blocks == 3


def test_runs_and_artifacts(s3, rng, s3_endpoint):
    import s3fs

    url, opts = s3
    blocks = [rng.standard_normal((5, w)) for w in (2, 3)]
    coll = ingest_blocks(url, "c", blocks, storage_options=opts)
    run = open_run(url, "c", "r1", {"eps": 0.1}, coll.fingerprint(), storage_options=opts)
    run.save_stage("scan", {"x": np.arange(4.0)}, {"k": 1})
    loaded, meta = run.load_stage("scan")
    np.testing.assert_array_equal(loaded["x"], np.arange(4.0))
    assert meta == {"k": 1}
    fs = s3fs.S3FileSystem(**opts)
    path = url[5:] + "/runs/c/r1/scan/x.npy"
    raw = bytearray(fs.cat_file(path))
    raw[-1] ^= 0x10
    fs.pipe_file(path, bytes(raw))
    with pytest.raises(CheckpointError, match="'x': sha256 mismatch"):
        run.load_stage("scan")

    m = np.concatenate(blocks, axis=1)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    basis = u[:, :2]
    coefs = [basis.T @ b for b in blocks]
    write_artifact(url, "c", "a", groups=[[0, 1]], bases=[basis], coefficients=coefs, errors=[0.1], storage_options=opts)
    art = open_artifact(url, "c", "a", verify=True, storage_options=opts)
    np.testing.assert_allclose(art.decompress(1), basis @ coefs[1])
    assert art.nbytes_stored > 0 and art.input_nbytes == coll.nbytes_stored
