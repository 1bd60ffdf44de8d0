"""Names that reach paths or the terminal (issue 9, items 9 and 10).

- run ids and collection names from arguments are checked with storage's name rule
  before any file is read or written (exit 2, one line naming the field);
- ids read back from files (report.json, run.json, folder listings) never choose an
  output path;
- stored block names print literally, whatever Rich markup they contain.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main

RANK, EPS = 4, 0.1
BAD_IDS = ["../x", "../../../x", "a/b", "a\x00b", "a\nb", "..", "", "runs"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store with collection 'small' and its compressed sequential run 'ok'."""
    from pipeline.synthetic import union_of_subspaces

    layout, _ = union_of_subspaces(40, rows=12, width=2, blocks_per_subspace=20, seed=3)
    src = tmp_path_factory.mktemp("src") / "small.npy"
    np.save(src, np.stack([layout.block(i) for i in range(40)]))
    root = tmp_path_factory.mktemp("store") / "store"
    assert main(["ingest", str(src), "--store", str(root), "--json"]) == 0
    assert main(["cluster", "small", "--store", str(root), "--rank", str(RANK), "--eps", str(EPS), "--sequential",
                 "--run-id", "ok", "--no-html", "--json"]) == 0
    return root


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(result, code: int) -> str:
    got, out, err = result
    assert got == code, (got, out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_run_ids_are_refused_before_any_file_is_touched(capsys, tmp_path, store, bad):
    before = tree(store.parent)
    absent = tmp_path / "absent-store"
    commands = [
        ("report", "small", "--json"), ("verify", "small"), ("decompress", "small", "0", "-o", tmp_path / "out.npy"),
        ("compress", "small"), ("cluster", "small", "--sequential"), ("run", "small"),
    ]
    for cmd in commands:
        # an existing store: nothing read or written; a missing one: exit 2, not 3 (not looked at)
        for where in (store, absent):
            message = error_line(run(capsys, *cmd, "--run-id", bad, "--store", where), 2)
            assert "invalid run id" in message, (cmd, message)
            assert "\n" not in message and "\x00" not in message
    assert tree(store.parent) == before
    assert not absent.exists()
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("bad", ["../small", "a/b", "x\ny", "runs"])
def test_bad_collection_names_are_refused_before_any_file_is_touched(capsys, tmp_path, store, bad):
    absent = tmp_path / "absent-store"
    for cmd in (("inspect", bad), ("report", bad), ("verify", bad), ("cluster", bad, "--sequential"),
                ("decompress", bad, "0"), ("study", bad), ("ingest", tmp_path / "none.npy", "--name", bad)):
        message = error_line(run(capsys, *cmd, "--store", absent), 2)
        assert "invalid collection name" in message, (cmd, message)
    assert not absent.exists()


def test_tampered_report_run_id_does_not_redirect_the_html(capsys, tmp_path, store):
    assert main(["report", "small", "--run-id", "ok", "--store", str(store), "--json"]) == 0
    run_dir = store / "runs" / "small" / "ok"
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text())
    report["run_id"] = "../../../../escaped"
    report_path.write_text(json.dumps(report))
    (run_dir / "report.html").unlink()
    outside = tree(store.parent)

    code, out, err = run(capsys, "report", "small", "--run-id", "ok", "--store", store, "--json")
    assert code == 0, err
    assert (run_dir / "report.html").is_file()
    assert "warning: report.json of run ok names run '../../../../escaped'" in err
    assert json.loads(out)["run_id"] == "ok"
    created = set(tree(store.parent)) - set(outside)
    assert created == {str((run_dir / "report.html").relative_to(store.parent))}, created
    assert not any(p.name == "escaped" for p in store.parent.parent.rglob("escaped*"))

    # without --run-id the latest artifact's label is used: the same folder, same check
    code, out, err = run(capsys, "report", "small", "--store", store)
    assert code == 0, err
    assert "run id" in out and "ok" in out


def test_unsafe_folders_and_ids_in_files_are_not_offered_as_runs(capsys, store):
    # a folder cmsvd would never write, and a run.json whose id was edited
    odd = store / "runs" / "small" / "we ird[x]"
    odd.mkdir(parents=True)
    (odd / "run.json").write_text(json.dumps({"run_id": "../../x", "params": {}}))
    record_path = store / "runs" / "small" / "ok" / "run.json"
    record = json.loads(record_path.read_text())
    try:
        record_path.write_text(json.dumps({**record, "run_id": "[/bold]../x"}))
        code, out, err = run(capsys, "inspect", "small", "--store", store, "--json")
        assert code == 0, err
        assert [r["run_id"] for r in json.loads(out)["runs"]] == ["ok"]
        code, out, err = run(capsys, "inspect", "small", "--store", store)
        assert code == 0, err
        assert "we ird" not in out
    finally:
        record_path.write_text(json.dumps(record))
        (odd / "run.json").unlink()
        odd.rmdir()
