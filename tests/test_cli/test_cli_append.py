"""``cmsvd ingest --append``: blocks added atomically, the version shown by inspect."""

from __future__ import annotations

import numpy as np
from cli_helpers import cli, cli_json


def test_append_end_to_end_and_a_failed_append_changes_nothing(capsys, tmp_path):
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    np.save(tmp_path / "day1.npy", rng.standard_normal((4, 8, 3)))
    np.save(tmp_path / "day2.npy", rng.standard_normal((3, 8, 3)))
    np.save(tmp_path / "wrong.npy", rng.standard_normal((2, 7, 3)))
    assert cli(capsys, "ingest", tmp_path / "day1.npy", "--name", "c", "--store", store)[0] == 0
    code, out, err = cli(capsys, "ingest", tmp_path / "day2.npy", "--name", "c", "--store", store, "--append")
    assert code == 0, err
    assert "appended 3 blocks (indices 4 to 6) to collection c, now version 2 with 7 blocks" in out
    code, _, err = cli(capsys, "ingest", tmp_path / "wrong.npy", "--name", "c", "--store", store, "--append")
    assert code != 0 and "block 7" in err and "7 rows, the collection has 8" in err
    info = cli_json(capsys, "inspect", "c", "--store", store)
    assert info["blocks"] == 7 and info["version"] == 2
    assert [a["n_blocks"] for a in info["append_history"]] == [3]
    code, _, err = cli(capsys, "ingest", tmp_path / "day2.npy", "--name", "c", "--store", store, "--append", "--overwrite")
    assert code != 0 and "exclude each other" in err


def test_appending_a_model_with_bias_tensors_is_refused_naming_one(capsys, tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    store = tmp_path / "store"
    save_file({"w": rng.standard_normal((4, 8)).astype(np.float32)}, str(tmp_path / "a.safetensors"))
    save_file({"w": rng.standard_normal((4, 8)).astype(np.float32), "bias": np.ones(8, np.float32)},
              str(tmp_path / "b.safetensors"))
    assert cli(capsys, "ingest", tmp_path / "a.safetensors", "--name", "m", "--column-length", 8, "--store", store)[0] == 0
    code, _, err = cli(capsys, "ingest", tmp_path / "b.safetensors", "--name", "m", "--column-length", 8,
                       "--store", store, "--append", "--prefix", "ckpt2/")
    assert code != 0 and "'ckpt2/bias'" in err and "blocks only" in err
    assert cli_json(capsys, "inspect", "m", "--store", store)["version"] == 1


def test_cluster_update_after_an_append_end_to_end(capsys, tmp_path, dask_address):
    """ingest -> cluster -> ingest --append -> cluster --update: the update builds on the
    first run, its report says so, and the artifact gives every block back within eps."""
    import json

    import storage

    rng = np.random.default_rng(3)
    store = tmp_path / "store"
    bases = [np.linalg.qr(rng.standard_normal((16, 2)))[0] for _ in range(3)]

    def stack(n):
        return np.stack([bases[i % 3] @ rng.standard_normal((2, 3)) + 1e-3 * rng.standard_normal((16, 3))
                         for i in range(n)])

    np.save(tmp_path / "day1.npy", stack(90))
    np.save(tmp_path / "day2.npy", stack(12))
    common = ("--store", store, "--rank", 4, "--eps", 0.1, "--scheduler", dask_address, "--no-html")
    assert cli(capsys, "ingest", tmp_path / "day1.npy", "--name", "c", "--store", store)[0] == 0
    first = cli_json(capsys, "cluster", "c", *common)
    code, out, err = cli(capsys, "cluster", "c", *common, "--update")  # nothing appended: the run is reused, said so
    assert code == 0, err
    assert f"reused: run {first['run_id']} is of the collection as it is now" in out
    assert cli(capsys, "ingest", tmp_path / "day2.npy", "--name", "c", "--store", store, "--append")[0] == 0
    update = cli_json(capsys, "cluster", "c", *common, "--update")
    lineage = update["lineage"]
    assert lineage["parent_run"] == first["run_id"] and lineage["blocks_added"] == 12
    assert 0 < lineage["absorbed"] <= 12 and update["max_error"] <= 0.1
    coll = storage.open_collection(str(store), "c")
    report = json.loads(open(store / "runs" / "c" / update["run_id"] / "report.json").read())
    assert report["lineage"]["groups_touched"] == lineage["groups_touched"]
    artifact = storage.open_artifact(str(store), "c", update["artifact_label"], verify=True)
    for group in report["groups"]:  # the guarantee, per group, on what the artifact gives back
        data = np.hstack([coll.block(i) for i in group["blocks"]])
        back = np.hstack([artifact.decompress(i) for i in group["blocks"]])
        assert np.linalg.norm(back - data) <= 0.1 * np.linalg.norm(data) * (1 + 1e-9)
    runs = {r["run_id"]: r for r in cli_json(capsys, "inspect", "c", "--store", store)["runs"]}
    assert runs[update["run_id"]]["parent_run"] == first["run_id"] and runs[first["run_id"]]["parent_run"] is None
    again = cli_json(capsys, "compress", "c", "--run-id", update["run_id"], "--store", store, "--scheduler", dask_address,
                     "--no-html")  # an update run reopens by its id alone, as any run
    assert again["run_id"] == update["run_id"] and again["lineage"]["parent_run"] == first["run_id"]
    code, _, err = cli(capsys, "report", "c", "--run-id", update["run_id"], "--store", store)
    assert code == 0, err
    checked = cli_json(capsys, "verify", "c", "--run-id", update["run_id"], "--store", store)  # through the delta
    assert checked["ok"] and checked["max_error"] <= 0.1 and not checked["mismatches"]
    code, out, _ = cli(capsys, "cluster", "c", *common, "--update")
    assert code == 0 and "reused: run update-" in out and "update of" in out  # the same update, reused
