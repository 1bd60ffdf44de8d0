"""Run checkpoints: manifests, hash verification, mismatch detection."""

from __future__ import annotations

import os

import numpy as np
import pytest

from storage import CheckpointError, InvalidNameError, RunMismatchError, ingest_blocks, open_run

PARAMS = {"eps": 0.1, "r": 10, "method": "approximate"}


@pytest.fixture
def run(root, rng):
    coll = ingest_blocks(root, "c", [rng.standard_normal((4, 3)) for _ in range(3)])
    return open_run(root, "c", "run-1", PARAMS, coll.fingerprint())


def arrays(rng):
    return {
        "Q": rng.standard_normal((8, 3)),
        "lam": rng.standard_normal(3).astype(np.float32),
        "flat": np.arange(10, dtype=np.int64),
        "offsets": np.array([0, 4, 10]),
        "scalar": np.array(3.5),
    }


def test_layout_and_round_trip(run, root, rng):
    a = arrays(rng)
    assert not run.is_complete("scan")
    run.save_stage("scan", a, {"n_groups": np.int64(2), "note": "x"})
    assert run.is_complete("scan") and run.stages() == ["scan"]
    stage_dir = os.path.join(root, "runs", "c", "run-1", "scan")
    assert sorted(os.listdir(stage_dir)) == sorted([f"{k}.npy" for k in a] + ["manifest.json"])
    loaded, meta = run.load_stage("scan")
    assert meta == {"n_groups": 2, "note": "x"}
    for k, v in a.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        np.testing.assert_array_equal(loaded[k], v)


def test_reopen_same_params_sees_stages(run, root):
    run.save_stage("merge-003", {"x": np.ones(3)}, {})
    again = open_run(root, "c", "run-1", dict(reversed(list(PARAMS.items()))), run.input_fingerprint)
    assert again.is_complete("merge-003")


def test_reuse_with_other_params_or_input_fails(run, root):
    with pytest.raises(RunMismatchError, match=r"parameters differ \(eps: 0.1 != 0.2\)"):
        open_run(root, "c", "run-1", {**PARAMS, "eps": 0.2}, run.input_fingerprint)
    with pytest.raises(RunMismatchError, match="collection changed"):
        open_run(root, "c", "run-1", PARAMS, "0" * 64)


def test_changed_collection_is_detected_via_fingerprint(root, rng, run):
    coll = ingest_blocks(root, "c", [rng.standard_normal((4, 3))], overwrite=True)
    with pytest.raises(RunMismatchError):
        open_run(root, "c", "run-1", PARAMS, coll.fingerprint())


def test_flipped_byte_detected(run, root, rng):
    run.save_stage("scan", arrays(rng), {})
    path = os.path.join(root, "runs", "c", "run-1", "scan", "Q.npy")
    raw = bytearray(open(path, "rb").read())
    raw[-5] ^= 0x01
    open(path, "wb").write(bytes(raw))
    with pytest.raises(CheckpointError, match=r"stage 'scan' of run 'run-1', array 'Q': sha256 mismatch"):
        run.load_stage("scan")
    with pytest.raises(CheckpointError, match="'Q'"):
        run.verify_stage("scan")


def test_truncated_and_missing_files_detected(run, root, rng):
    run.save_stage("scan", arrays(rng), {})
    d = os.path.join(root, "runs", "c", "run-1", "scan")
    with open(os.path.join(d, "lam.npy"), "r+b") as f:
        f.truncate(40)
    with pytest.raises(CheckpointError, match="'lam': truncated"):
        run.load_stage("scan")
    os.remove(os.path.join(d, "offsets.npy"))
    with pytest.raises(CheckpointError, match="missing"):
        run.verify_stage("scan")


def test_stage_without_manifest_is_absent(run, root, rng):
    run.save_stage("scan", arrays(rng), {})
    os.remove(os.path.join(root, "runs", "c", "run-1", "scan", "manifest.json"))
    assert not run.is_complete("scan") and run.stages() == []
    with pytest.raises(CheckpointError, match="not complete"):
        run.load_stage("scan")


def test_corrupt_manifest_is_reported(run, root, rng):
    run.save_stage("scan", arrays(rng), {})
    open(os.path.join(root, "runs", "c", "run-1", "scan", "manifest.json"), "w").write("{trunc")
    # reported as corrupted (naming the file), never silently treated as absent
    with pytest.raises(CheckpointError, match=r"scan/manifest.json is corrupted"):
        run.is_complete("scan")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        run.load_stage("scan")
    run.save_stage("scan", arrays(rng), {})  # an explicit re-save replaces it
    assert run.is_complete("scan")


def test_resave_replaces_stage(run, rng):
    run.save_stage("scan", {"a": np.ones(2), "b": np.zeros(1)}, {"v": 1})
    run.save_stage("scan", {"a": np.arange(3.0)}, {"v": 2})
    loaded, meta = run.load_stage("scan")
    assert list(loaded) == ["a"] and meta == {"v": 2}
    np.testing.assert_array_equal(loaded["a"], np.arange(3.0))


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".x", "a..b"])
def test_unsafe_stage_and_run_names(run, root, bad):
    with pytest.raises(InvalidNameError):
        run.save_stage(bad, {"a": np.ones(1)}, {})
    with pytest.raises(InvalidNameError):
        open_run(root, "c", bad, PARAMS, "f")
    with pytest.raises(InvalidNameError):
        run.save_stage("ok", {bad: np.ones(1)}, {})


def test_object_arrays_rejected(run):
    with pytest.raises(ValueError, match="object"):
        run.save_stage("scan", {"o": np.array([np.ones(2), np.ones(3)], dtype=object)}, {})
    assert not run.is_complete("scan")


def test_memory_url(mem_root, rng):
    r = open_run(mem_root, "c", "r", PARAMS, "fp")
    r.save_stage("scan", {"x": np.arange(5)}, {"k": 1})
    loaded, meta = open_run(mem_root, "c", "r", PARAMS, "fp").load_stage("scan")
    np.testing.assert_array_equal(loaded["x"], np.arange(5))
