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
from cli_helpers import cli as run

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


@pytest.mark.slow  # renders the HTML report with its plots and baselines
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


# ---- block names (item 10) -----------------------------------------------------------------

MARKUP_NAMES = ["[/bold]", "[red]x[/red]", "a\\[b", "[link=file:///etc]y[/link]"]


def test_unsafe_block_names_are_refused_at_ingest(capsys, tmp_path):
    import storage

    for bad, needle in (("a\x00b", "U+0000"), ("a\nb", "U+000A"), ("../x", "'..'"), ("x/../y", "'..'"),
                        ("/abs", "starts with '/'"), ("x" * 100_000, "100000 characters"), ("", "empty"),
                        ("ok\u202e", "U+202E"), ("tab\there", "U+0009")):
        with pytest.raises(storage.BlockValidationError, match="invalid block name") as info:
            storage.ingest_blocks(str(tmp_path / "s"), "c", [np.ones((3, 2))], names=[bad])
        assert needle in str(info.value) and len(str(info.value)) < 300, str(info.value)
    assert storage.list_collections(str(tmp_path / "s")) == []
    # names of the supported formats stay valid
    good = ["layers.0.attn.weight", "group/ds[3]", "stem[0]", "weird name (1)", "日本語", "...", "a/b/c", *MARKUP_NAMES]
    coll = storage.ingest_blocks(str(tmp_path / "s"), "c", [np.ones((3, 2))] * len(good), names=good)
    assert coll.names == good

    # through the command line: a folder of .npy files, one named with a newline
    folder = tmp_path / "folder"
    folder.mkdir()
    np.save(folder / "fine.npy", np.ones((3, 2)))
    np.save(folder / "new\nline.npy", np.ones((3, 2)))
    message = error_line(run(capsys, "ingest", folder, "--store", tmp_path / "s2"), 2)
    assert "invalid block name 'new\\nline': control character U+000A" in message, message
    assert not (tmp_path / "s2" / "folder").exists()


@pytest.fixture()
def markup_store(tmp_path) -> Path:
    """A collection whose block names are Rich markup, plus one stored before names were checked."""
    import storage
    import storage._collection_writer as collection_module  # where CollectionWriter checks block names

    root = tmp_path / "store"
    names = [*MARKUP_NAMES, "esc\x1b[31mred", "new\nline"]
    rng = np.random.default_rng(0)
    original = collection_module.block_name_problem
    collection_module.block_name_problem = lambda name: None  # an old store: names were not checked
    try:
        storage.ingest_blocks(str(root), "marks", [rng.standard_normal((6, 2)) for _ in names], names=names)
    finally:
        collection_module.block_name_problem = original
    assert main(["cluster", "marks", "--store", str(root), "--rank", "2", "--eps", "0.5", "--sequential",
                 "--run-id", "r1", "--no-html", "--json"]) == 0
    return root


def test_markup_block_names_print_literally(capsys, markup_store, tmp_path):
    code, out, err = run(capsys, "inspect", "marks", "--store", markup_store)
    assert code == 0, err
    for name in MARKUP_NAMES:
        assert name in out, out
    for i, name in enumerate(MARKUP_NAMES):
        code, out, err = run(capsys, "decompress", "marks", name, "--store", markup_store, "-o", tmp_path / f"b{i}.npy")
        assert code == 0, err
        assert f"block {i} ({name})" in out, out
    # names that were stored before the check: shown escaped, never sent to the terminal raw
    code, out, err = run(capsys, "decompress", "marks", "4", "--store", markup_store, "-o", tmp_path / "b4.npy")
    assert code == 0, err
    assert "esc\\x1b[31mred" in out and "\x1b" not in out, repr(out)
    code, out, err = run(capsys, "decompress", "marks", "5", "--store", markup_store, "-o", tmp_path / "b5.npy")
    assert code == 0, err
    assert "new\\nline" in out, repr(out)
