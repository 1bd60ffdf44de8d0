"""storage.catalog: the public listing of a collection's runs and artifacts."""

import numpy as np
import pytest

import storage


@pytest.fixture()
def coll(tmp_path):
    storage.ingest_blocks(str(tmp_path), "c", [np.eye(4, 2)] * 3)
    return storage.open_collection(str(tmp_path), "c")


def test_runs_and_artifacts_are_listed_and_foreign_folders_skipped(coll, tmp_path):
    run = storage.open_run(coll.url, coll.name, "r1", {"rank": 1, "eps": 0.1}, coll.fingerprint())
    run.save_stage("compress", {"x": np.zeros(1)})
    storage.open_run(coll.url, coll.name, "r2", {"rank": 2, "eps": 0.2, "mode": "sequential"}, "other contents")
    (tmp_path / "runs" / "c" / "..bad").mkdir()
    (tmp_path / "runs" / "c" / "..bad" / "run.json").write_text("{}")
    (tmp_path / "runs" / "c" / "junk").mkdir()
    (tmp_path / "runs" / "c" / "junk" / "run.json").write_text("not json")
    runs = {r["run_id"]: r for r in storage.list_runs(coll)}
    assert set(runs) == {"r1", "r2"}
    assert runs["r1"]["compressed"] and runs["r1"]["current"] and runs["r1"]["mode"] == "distributed"
    assert not runs["r2"]["compressed"] and not runs["r2"]["current"] and runs["r2"]["mode"] == "sequential"
    assert storage.list_artifacts(coll) == []
    writer = storage.create_artifact(coll.url, coll.name, "a1", groups=[[0, 1, 2]], params={})
    writer.write_group(0, None, [coll.block(i) for i in range(3)])
    writer.finalize([0.0], [0])
    assert [a["label"] for a in storage.list_artifacts(coll)] == ["a1"]  # not the staging folder


def test_run_files_round_trip_and_missing_runs_are_named(coll):
    with pytest.raises(storage.RunNotFoundError, match="no run 'nope'"):
        storage.read_run_record(coll, "nope")
    with pytest.raises(FileNotFoundError):  # RunNotFoundError is one
        storage.read_run_record(coll, "nope")
    storage.open_run(coll.url, coll.name, "r", {"rank": 1}, coll.fingerprint())
    assert storage.read_run_record(coll, "r")["params"] == {"rank": 1}
    assert storage.read_run_json(coll, "r", "report.json") is None
    url = storage.write_run_file(coll, "r", "report.json", b'{"a": 1}')
    assert url == storage.run_url(coll, "r") + "/report.json"
    assert storage.read_run_json(coll, "r", "report.json") == {"a": 1}
    assert storage.read_run_bytes(coll, "r", "report.json") == b'{"a": 1}'
    storage.write_run_file(coll, "r", "bad.json", b"{")
    with pytest.raises(storage.CorruptedFileError):
        storage.read_run_json(coll, "r", "bad.json")


@pytest.mark.parametrize("bad", ["../x", "a/b", "runs", ""])
def test_run_url_refuses_unsafe_ids(coll, bad):
    with pytest.raises(storage.InvalidNameError):
        storage.run_url(coll, bad)
