"""Error paths of ``cmsvd``: exit codes and one-line messages without a traceback.

0 ok, 1 guarantee/verification failure, 2 usage/bad parameters, 3 missing store /
collection / run / artifact, 4 corrupted data or checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli as run

from flows.cli import main

RANK, EPS = 4, 0.1


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from pipeline.synthetic import union_of_subspaces

    layout, _ = union_of_subspaces(60, rows=16, width=2, blocks_per_subspace=20, seed=5)
    path = tmp_path_factory.mktemp("src") / "small.npy"
    np.save(path, np.stack([layout.block(i) for i in range(60)]))
    return path


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, source) -> str:
    """A store with collection 'small' and its sequential artifact 'ok'."""
    url = str(tmp_path_factory.mktemp("store"))
    assert main(["ingest", str(source), "--store", url, "--json"]) == 0
    assert main(["cluster", "small", "--store", url, "--rank", str(RANK), "--eps", str(EPS), "--sequential",
                 "--run-id", "ok", "--no-html", "--json"]) == 0
    return url




def assert_error(result, code: int, *needles: str) -> str:
    got, out, err = result
    assert got == code, (got, out, err)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("  ")]
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err and "Traceback" not in out
    message = lines[-1]
    for needle in needles:
        assert needle in message, message
    return message


# ---- 3: missing things ---------------------------------------------------------------------------


def test_missing_store_collection_run_and_artifact(capsys, tmp_path, compressed):
    missing = tmp_path / "nowhere"
    assert_error(run(capsys, "inspect", "--store", missing), 3, "no store at")
    assert_error(run(capsys, "inspect", "demo", "--store", missing), 3, "no collection 'demo'")
    assert_error(run(capsys, "cluster", "demo", "--store", missing, "--sequential"), 3, "no collection 'demo'")
    assert_error(run(capsys, "verify", "small", "--run-id", "nope", "--store", compressed), 3, "no artifact 'nope'")
    assert_error(run(capsys, "decompress", "small", "0", "--run-id", "nope", "--store", compressed), 3, "no artifact")
    assert_error(run(capsys, "compress", "small", "--run-id", "nope", "--store", compressed), 3, "no run 'nope'")
    assert_error(run(capsys, "ingest", tmp_path / "absent.npy", "--store", tmp_path / "s"), 3, "absent.npy")
    assert not missing.exists(), "reading commands must not create the store"


def test_collection_without_runs(capsys, tmp_path, source):
    store = tmp_path / "fresh"
    assert run(capsys, "ingest", source, "--name", "x", "--store", store)[0] == 0
    assert_error(run(capsys, "verify", "x", "--store", store), 3, "no run yet", "cmsvd cluster x")


# ---- 2: usage and bad parameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["cluster", "small", "--eps", "1.5"], "--eps"),
        (["cluster", "small", "--eps", "0"], "--eps"),
        (["cluster", "small", "--rank", "0"], "--rank"),
        (["cluster", "small", "--method", "magic"], "--method"),
        (["cluster"], "COLLECTION"),
        (["study", "small", "--sizes", "a:b"], "--sizes"),
        (["report", "small", "--sweep", "0.1,2"], "--sweep"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_parameters_exit_2_with_one_line(capsys, compressed, args, needle):
    message = assert_error(run(capsys, *args, "--store", compressed), 2)
    assert needle.lower() in message.lower()


def test_user_errors_from_storage_and_pipeline(capsys, compressed, source):
    assert_error(run(capsys, "ingest", source, "--store", compressed), 2, "already exists", "--overwrite")
    assert_error(run(capsys, "ingest", source, "--name", "bad/name", "--store", compressed), 2, "bad/name")
    assert_error(run(capsys, "cluster", "small", "--sequential", "--max-memory-gib", "1e-9", "--store", compressed), 2,
                 "--max-memory-gib")
    assert_error(run(capsys, "decompress", "small", "999", "--store", compressed), 2, "out of range")
    assert_error(run(capsys, "ingest", source, "--column-length", "8", "--name", "y", "--store", compressed), 2,
                 "--column-length applies to .safetensors")
    # a run id reused with other parameters
    assert_error(run(capsys, "cluster", "small", "--rank", "5", "--sequential", "--run-id", "ok", "--store", compressed),
                 2, "run 'ok'", "parameters differ")


def test_json_mode_keeps_stdout_clean_on_errors(capsys, tmp_path):
    code, out, err = run(capsys, "inspect", "demo", "--store", tmp_path / "none", "--json")
    assert code == 3 and out == "" and err.startswith("error: ")


# ---- 1: guarantee / verification failure ---------------------------------------------------------


def test_verify_fails_with_exit_1_when_a_group_exceeds_eps(capsys, compressed):
    code, out, err = run(capsys, "verify", "small", "--store", compressed, "--json")
    passed = json.loads(out)
    assert code == 0 and passed["ok"] and not passed["violations"] and passed["max_error"] <= EPS
    code, out, err = run(capsys, "verify", "small", "--store", compressed, "--eps", "0.001", "--json")
    assert code == 1
    result = json.loads(out)  # the JSON still describes what was found
    assert not result["ok"] and result["eps"] == 0.001
    # the violations are exactly the groups whose recomputed error exceeds the asked eps,
    # and the errors are the same ones the passing check recomputed
    errors = result["errors"]
    assert errors == passed["errors"] and result["max_error"] == max(errors)
    assert result["violations"] == [g for g, e in enumerate(errors) if e > 0.001 * (1 + 1e-9) + 1e-9]
    assert result["violations"]
    assert "verification failed" in err and "exceed eps = 0.001" in err


# ---- 4: corrupted data and checkpoints -----------------------------------------------------------


def test_corrupted_artifact_exit_4(capsys, tmp_path, compressed):
    store = tmp_path / "copy"
    shutil.copytree(compressed, store)
    art = store / "artifacts" / "small" / "ok"
    chunk = max((p for p in (art / "coefficients").rglob("*") if p.is_file() and p.name != "zarr.json"),
                key=lambda p: p.stat().st_size)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert_error(run(capsys, "verify", "small", "--store", store), 4, "corrupted", "artifact 'ok'")


def test_corrupted_collection_data_exit_4(capsys, tmp_path, compressed, dask_address):
    import zarr

    store = tmp_path / "copy"
    shutil.copytree(compressed, store)
    data = zarr.open_group(str(store / "small"), mode="r+")["data"]
    data[:, :2] = data[:, :2] * 1.5  # valid chunks, wrong values: caught by the norms of ingest
    assert_error(run(capsys, "cluster", "small", "--sequential", "--run-id", "again", "--store", store), 4, "corrupted")
    assert_error(run(capsys, "cluster", "small", "--scheduler", dask_address, "--store", store), 4, "corrupted")
    # bytes that do not even decode
    chunk = next(p for p in (store / "small" / "data").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\x00garbage" * 16)
    assert_error(run(capsys, "cluster", "small", "--sequential", "--run-id", "third", "--store", store), 4, "corrupted")


def test_corrupted_checkpoint_exit_4(capsys, tmp_path, compressed):
    store = tmp_path / "copy"
    shutil.copytree(compressed, store)
    stage = store / "runs" / "small" / "ok" / "compress"
    victim = next(p for p in stage.iterdir() if p.suffix == ".npy")
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    shutil.rmtree(store / "runs" / "small" / "ok" / "plots", ignore_errors=True)
    (store / "runs" / "small" / "ok" / "report.json").unlink()
    assert_error(run(capsys, "report", "small", "--run-id", "ok", "--store", store), 4, "ok")
