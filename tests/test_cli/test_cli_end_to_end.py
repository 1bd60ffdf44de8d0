"""``cmsvd`` end to end on small collections, in-process (``flows.cli.main``) against a real
Dask LocalCluster (the suite's ``dask_address``) and a real Zarr store: ingest -> cluster ->
verify -> decompress, the sequential path with a separate compress, report.json /
report.html, the study.

The Prefect flow commands (``run``, ``demo``) run in subprocesses, see
test_cli_flow_commands.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli, cli_json

from flows.cli import main

RANK, EPS = 6, 0.1
N_BLOCKS, ROWS, WIDTH = 150, 24, 3


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory) -> Path:
    from pipeline.synthetic import union_of_subspaces

    layout, _ = union_of_subspaces(N_BLOCKS, rows=ROWS, width=WIDTH, blocks_per_subspace=30, noise=0.02, seed=3)
    path = tmp_path_factory.mktemp("src") / "blocks.npy"
    np.save(path, np.stack([layout.block(i) for i in range(N_BLOCKS)]))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, stack_file) -> str:
    url = str(tmp_path_factory.mktemp("store"))
    assert main(["ingest", str(stack_file), "--store", url, "--json"]) == 0
    return url






def check_report_contract(report: dict, *, n_blocks: int, rows: int, eps: float) -> None:
    """The stable report.json contract (keys and types)."""
    assert set(report) >= {"collection", "params", "groups", "compression_ratio", "compression_ratio_adaptive",
                           "max_error", "bytes", "timings"}
    c = report["collection"]
    assert set(c) >= {"name", "blocks", "rows", "columns", "dtype"}
    assert isinstance(c["name"], str) and isinstance(c["dtype"], str)
    assert (c["blocks"], c["rows"]) == (n_blocks, rows) and isinstance(c["columns"], int)
    assert set(report["params"]) == {"rank", "eps", "method", "order", "oversampling", "patience"}
    assert report["params"]["eps"] == eps
    for g in report["groups"]:
        assert set(g) >= {"id", "blocks", "columns", "bound", "error", "rank"}
        assert isinstance(g["id"], int) and isinstance(g["columns"], int) and isinstance(g["rank"], int)
        assert all(isinstance(b, int) for b in g["blocks"])
        assert isinstance(g["bound"], float) and isinstance(g["error"], float)
        if len(g["blocks"]) > 1:
            assert g["error"] <= eps
    assert sorted(b for g in report["groups"] for b in g["blocks"]) == list(range(n_blocks))
    assert [g["id"] for g in report["groups"]] == list(range(len(report["groups"])))
    for key in ("compression_ratio", "compression_ratio_adaptive", "max_error"):
        assert isinstance(report[key], float)
    assert set(report["bytes"]) == {"input", "compressed"}
    assert all(isinstance(v, int) and v > 0 for v in report["bytes"].values())
    assert report["timings"] and all(isinstance(k, str) and isinstance(v, float) for k, v in report["timings"].items())


@pytest.mark.slow  # the whole distributed CLI path
def test_ingest_cluster_verify_decompress(capsys, store, stack_file, dask_address, tmp_path):
    info = cli_json(capsys, "inspect", "blocks", "--store", store)
    assert (info["blocks"], info["rows"], info["columns"], info["dtype"]) == (N_BLOCKS, ROWS, N_BLOCKS * WIDTH, "float64")

    summary = cli_json(capsys, "cluster", "blocks", "--store", store, "--rank", RANK, "--eps", EPS,
                       "--scheduler", dask_address, "--run-id", "e2e", "--shard-size", 60)
    assert summary["run_id"] == "e2e" and summary["guarantee_ok"]
    assert summary["max_certified_error"] <= EPS and summary["groups"] < N_BLOCKS / 3
    report = json.loads(Path(summary["files"]["report.json"]).read_text())
    check_report_contract(report, n_blocks=N_BLOCKS, rows=ROWS, eps=EPS)
    assert {"scan", "certify", "compress", "report"} <= set(report["timings"])
    page = Path(summary["files"]["report.html"]).read_text()
    assert page.count("data:image/png;base64,") >= 3 and "Certified bound vs certified error" in page

    verified = cli_json(capsys, "verify", "blocks", "--store", store)  # latest artifact = e2e
    assert verified["ok"] and verified["artifact"] == "e2e" and verified["max_error"] <= EPS
    stored = {g["id"]: g.get("stored_error", g["error"]) for g in report["groups"]}
    assert np.allclose(verified["errors"], [stored[g] for g in range(len(stored))], rtol=1e-6, atol=1e-9)

    # decompress blocks through the CLI: the .npy holds exactly the artifact's reconstruction
    import storage

    source = np.load(stack_file)
    artifact = storage.open_artifact(store, "blocks", "e2e")
    group = max(report["groups"], key=lambda g: g["columns"])
    for b in group["blocks"][:4]:
        out = tmp_path / f"b{b}.npy"
        code, text, err = cli(capsys, "decompress", "blocks", b, "-o", out, "--store", store)
        assert code == 0 and f"-> {out}" in text, err
        approx = np.load(out)
        assert approx.shape == (ROWS, WIDTH) and np.array_equal(approx, artifact.decompress(b))
    # and the group's error recomputed against the source file is the certified one
    residual2 = sum(float(np.sum((source[b] - artifact.decompress(b)) ** 2)) for b in group["blocks"])
    norm2 = sum(float(np.sum(source[b] ** 2)) for b in group["blocks"])
    assert np.sqrt(residual2 / norm2) == pytest.approx(group["error"], rel=1e-6)
    assert np.sqrt(residual2 / norm2) <= EPS

    by_name = cli_json(capsys, "decompress", "blocks", "blocks[7]", "-o", tmp_path / "named.npy", "--store", store)
    assert by_name["block"] == 7 and by_name["shape"] == [ROWS, WIDTH]


def test_sequential_cluster_then_compress_report_and_inspect(capsys, store):
    first = cli_json(capsys, "cluster", "blocks", "--store", store, "--rank", RANK, "--eps", EPS, "--sequential",
                     "--no-compress", "--run-id", "seq")
    assert first == {**first, "run_id": "seq", "compressed": False}
    summary = cli_json(capsys, "compress", "blocks", "--run-id", "seq", "--store", store, "--no-html")
    assert summary["guarantee_ok"] and summary["artifact_label"] == "seq" and summary["groups"] == first["groups"]
    assert set(summary["files"]) == {"report.json"}

    code, out, _ = cli(capsys, "report", "blocks", "--run-id", "seq", "--store", store)  # the one report.html
    assert code == 0 and "report.html" in out and "compression ratio" in out
    report = json.loads(Path(summary["files"]["report.json"]).read_text())  # --json prints it: test_cli_sweep_sequential
    check_report_contract(report, n_blocks=N_BLOCKS, rows=ROWS, eps=EPS)
    assert set(report["timings"]) >= {"sequential", "compress"}
    verified = cli_json(capsys, "verify", "blocks", "--run-id", "seq", "--store", store)
    assert verified["ok"]

    info = cli_json(capsys, "inspect", "blocks", "--store", store)
    runs = {r["run_id"]: r for r in info["runs"]}
    assert runs["seq"]["mode"] == "sequential" and runs["seq"]["compressed"] and runs["seq"]["report"]
    assert {a["label"] for a in info["artifacts"]} >= {"seq"}
    listing = cli_json(capsys, "inspect", "--store", store)
    assert [c["name"] for c in listing["collections"]] == ["blocks"]


@pytest.mark.slow  # a distributed run and a 3-value eps sweep
def test_report_sweep_adds_the_eps_plot(capsys, store, dask_address, tmp_path):
    summary = cli_json(capsys, "cluster", "blocks", "--store", store, "--rank", RANK, "--eps", EPS,
                       "--scheduler", dask_address, "--run-id", "sweep", "--no-html", "--shard-size", 60)
    assert summary["guarantee_ok"]
    code, _, err = cli(capsys, "report", "blocks", "--run-id", "sweep", "--store", store, "--sweep", "0.05,0.2",
                         "--scheduler", dask_address, "--output", tmp_path / "out")
    assert code == 0, err
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Compression ratio against eps" in page and page.count("data:image/png;base64,") >= 4
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["run_id"] == "sweep"


def test_study_writes_csv_and_plot(capsys, store, tmp_path):
    result = cli_json(capsys, "study", "blocks", "--store", store, "--rank", 4, "--sizes", "2:8:3", "--trials", 2,
                      "-o", tmp_path / "study.csv")
    assert result["sizes"] == [2, 5, 8] and result["rows"] == 6
    assert all(v == 0 for v in result["violations"].values())
    with open(tmp_path / "study.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"size", "trial", "exact", "max_norm", "approximate_residual"} <= set(rows[0])
    assert all(float(r["approximate_residual"]) >= float(r["exact"]) - 1e-9 for r in rows)
    assert (tmp_path / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
