"""Progress output when stderr is not a terminal (issue 11): correct durations for stages
that report only when they end, and a heartbeat while a long stage runs."""

from __future__ import annotations

import re
import time

from flows.cli import StageBars


def test_stage_reported_only_at_its_end_gets_its_real_duration(capsys):
    with StageBars() as bars:
        bars("scan", 0, 2)
        bars("scan", 2, 2)
        time.sleep(0.3)  # merge-000 works without reporting, then says it is done
        bars("merge-000", 1, 1)
    err = capsys.readouterr().err
    seconds = float(re.search(r"merge-000\s+done \(([\d.]+) s\)", err).group(1))
    assert seconds >= 0.3


def test_heartbeat_while_a_stage_runs(capsys, monkeypatch):
    monkeypatch.setattr(StageBars, "HEARTBEAT_S", 0.05)
    with StageBars() as bars:
        bars("certify", 0, 4)
        time.sleep(0.3)
        bars("certify", 4, 4)
    err = capsys.readouterr().err
    assert re.search(r"certify\s+running \(\d+ s\)", err) and "certify      done" in err


def test_quiet_prints_nothing(capsys, monkeypatch):
    monkeypatch.setattr(StageBars, "HEARTBEAT_S", 0.05)
    with StageBars(quiet=True) as bars:
        bars("scan", 0, 1)
        time.sleep(0.15)
        bars("scan", 1, 1)
    assert capsys.readouterr().err == ""


def _run(capsys, *args):
    from flows.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and re.fullmatch(r"cmsvd \S+\n", out)


def test_ingest_help_shows_choices(capsys):
    code, out, _ = _run(capsys, "ingest", "--help")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0 and "tensor|column" in text and "<mimo>" in text


def test_ingest_source_problems_are_named(capsys, tmp_path):
    store = tmp_path / "store"
    code, _, err = _run(capsys, "ingest", tmp_path / "missing.npy", "--store", store)
    assert code == 3 and f"no such file or folder: {tmp_path / 'missing.npy'}" in err
    (tmp_path / "empty.npy").write_bytes(b"")
    code, _, err = _run(capsys, "ingest", tmp_path / "empty.npy", "--store", store)
    assert code == 2 and "not a readable .npy file" in err and "internal error" not in err
