"""Damaged metadata and store access problems through the CLI: exit 4 naming the file,
and a clear sentence (not "missing") for disk full / read-only / permission errors."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from flows.cli import EXIT_CORRUPT, EXIT_MISSING, _classify, main
from storage import ingest_blocks, open_run, write_artifact


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store(tmp_path, rng) -> str:
    url = str(tmp_path / "store")
    blocks = [rng.standard_normal((6, w)) for w in (3, 4, 2)]
    coll = ingest_blocks(url, "small", blocks)
    u = np.linalg.qr(rng.standard_normal((6, 2)))[0]
    write_artifact(url, "small", "ok", groups=[[0, 1, 2]], bases=[u], coefficients=[u.T @ b for b in blocks],
                   errors=[0.5], params={"eps": 0.9})
    open_run(url, "small", "ok", {"eps": 0.9}, coll.fingerprint())
    return url


@pytest.mark.parametrize("rel", [
    "small/zarr.json",
    "small/data/zarr.json",
    "artifacts/small/ok/manifest.json",
    "artifacts/small/ok/zarr.json",
])
def test_damaged_metadata_exits_4_naming_the_file(capsys, store, rel):
    path = os.path.join(store, rel)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # torn write
    cmd = ("decompress", "small", "0", "--run-id", "ok", "--store", store, "--output", os.path.join(store, "o.npy"))
    code, out, err = run(capsys, *cmd)
    assert code == EXIT_CORRUPT, err
    assert os.path.basename(rel) in err and "corrupted" in err, err


def test_damaged_run_json_exits_4(capsys, store):
    from storage import CorruptedFileError

    path = os.path.join(store, "runs", "small", "ok", "run.json")
    open(path, "w").write("{not json")
    with pytest.raises(CorruptedFileError) as info:
        open_run(store, "small", "ok", {"eps": 0.9}, "x")
    code, msg = _classify(info.value)
    assert code == EXIT_CORRUPT and "runs/small/ok/run.json is corrupted" in msg
    code, msg = _classify(json.JSONDecodeError("Expecting value", "{", 1))
    assert code == EXIT_CORRUPT


@pytest.mark.parametrize("err,needle", [
    (errno.ENOSPC, "no space left"),
    (errno.EROFS, "read-only"),
    (errno.EACCES, "permission denied"),
])
def test_os_errors_say_what_happened(err, needle):
    code, msg = _classify(OSError(err, os.strerror(err), "/store/x"))
    assert code == EXIT_MISSING and needle in msg and "/store/x" in msg
    assert "missing" not in msg and "no such" not in msg
