"""``cmsvd run`` and ``cmsvd demo`` as real console-script processes: the Prefect flow
without a server (temporary local API, PREFECT_HOME in tmp_path), a Dask LocalCluster
started by the flow, stdout holding only the JSON document with ``--json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # console-script subprocesses, each with a temporary Prefect API

CMSVD = str(Path(sys.executable).parent / "cmsvd")


def cmsvd(*args, env_extra: dict | None = None, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CMSVD_", "DASK_SCHEDULER"))}
    env.update({"CMSVD_LOCAL_WORKERS": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "COLUMNS": "200"})
    env.update(env_extra or {})
    return subprocess.run([CMSVD, *map(str, args)], check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_console_script_help_and_usage_error():
    done = cmsvd("--help")
    assert done.returncode == 0
    for command in ("ingest", "inspect", "cluster", "compress", "decompress", "verify", "report", "study", "run", "demo"):
        assert command in done.stdout
    done = cmsvd("cluster", "x", "--eps", "2")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["error: Invalid value for '--eps': 2.0 is not in (0, 1) (see 'cmsvd cluster --help')"]


DEMO_ARGS = ("--blocks", 400, "--rows", 32, "--width", 4, "--rank", 8, "--eps", 0.1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One small ``cmsvd demo --json`` (its Prefect state is reused by the run test)."""
    tmp = tmp_path_factory.mktemp("demo")
    store = tmp / "demo-store"
    done = cmsvd("demo", "--store", store, *DEMO_ARGS, "--sweep", "0.2", "--json", cwd=tmp)
    return store, done


def test_demo_small(demo):
    store, done = demo
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout is exactly one JSON document
    assert summary["guarantee_ok"] and summary["blocks"] == 400 and summary["groups"] < 100
    assert summary["max_certified_error"] <= 0.1 and summary["bytes"]["compressed"] < summary["bytes"]["input"]
    assert {"scan", "partition", "local", "merge", "certify", "compress", "report"} <= set(summary["timings"])
    assert [row["eps"] for row in summary["sweep"]] == [0.1, 0.2]
    html = Path(summary["files"]["report.html"])
    assert html.resolve().is_relative_to(store.resolve())
    page = html.read_text()
    assert page.count("data:image/png;base64,") >= 4 and "Compression ratio against eps" in page
    assert (store / ".prefect").is_dir(), "the demo keeps Prefect's state under its store"
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr

    from flows.demo import demo_ingest_params

    # a second demo of the same size would reuse the generated collection
    assert demo_ingest_params(str(store), blocks=400, rows=32, width=4) is None
    assert demo_ingest_params(str(store), blocks=500, rows=32, width=4)["n_blocks"] == 500


def test_run_ingests_and_runs_the_prefect_flow(tmp_path, demo):
    from pipeline.synthetic import union_of_subspaces

    layout, _ = union_of_subspaces(120, rows=20, width=3, blocks_per_subspace=40, seed=2)
    source = tmp_path / "blocks.npz"
    np.savez(source, **{f"b{i:03d}": layout.block(i) for i in range(120)})
    store = tmp_path / "store"
    env = {"PREFECT_HOME": str(demo[0] / ".prefect")}  # an existing database: no migrations again
    done = cmsvd("run", "npz", "--source", source, "--store", store, "--rank", 5, "--eps", 0.1, "--json", env_extra=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["guarantee_ok"] and summary["blocks"] == 120 and summary["max_certified_error"] <= 0.1
    assert summary["run_id"].startswith("auto-") and summary["artifact_label"] == summary["run_id"]
    report = json.loads(Path(summary["files"]["report.json"]).read_text())
    assert report["collection"]["name"] == "npz" and report["params"]["rank"] == 5
    assert "data:image/png;base64," in Path(summary["files"]["report.html"]).read_text()
    assert "Traceback" not in done.stderr

    from flows.cli import main

    assert main(["verify", "npz", "--store", str(store), "--run-id", summary["run_id"]]) == 0
