"""The flows run in-process against a real Prefect server and a real Dask cluster.

One session Prefect server (conftest) and the suite's shared LocalCluster, whose address
is the worker's ``CMSVD_DASK_SCHEDULER`` (flows take no scheduler parameter; the
subprocess tests cover the LocalCluster fallback).  One module fixture runs the cluster
flow; the tests check the report.json contract, the plots, the dashboard artifacts, the
certified errors recomputed from the store, the stand-alone compress and report flows on
that run, and the ingest flow including its retry policy (permanent errors are not
retried, transient ones are).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flows_harness import check_certified, make_collection, run_cluster_flow

EPS = 0.1


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("store"))
    make_collection(url, "demo")
    return url


@pytest.fixture(scope="module")
def clustered(prefect_server, store, dask_address):
    """The cluster flow run once on ``store`` (run id ``local-1``): its final state and summary."""
    params = {"store_url": store, "collection": "demo", "rank": 6, "eps": EPS, "shard_size": 40,
              "run_id": "local-1"}
    state = run_cluster_flow(prefect_server, dask_address, params)
    return state, state.result()


def _artifacts(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def test_cluster_flow_report_artifacts_and_certified_result(prefect_api, store, clustered):
    state, summary = clustered
    assert summary["run_id"] == "local-1" and summary["max_error"] <= EPS

    report = json.loads(open(summary["report_url"]).read())
    assert set(report) >= {"collection", "params", "groups", "compression_ratio", "compression_ratio_adaptive",
                           "max_error", "bytes", "timings"}
    assert report["collection"] == {"name": "demo", "blocks": 240, "rows": 32, "columns": 960, "dtype": "float64"}
    assert report["params"] == {"rank": 6, "eps": EPS, "method": "approximate", "order": "residual",
                                "oversampling": 5, "patience": 10}
    assert set(report["bytes"]) == {"input", "compressed"}
    assert {"scan", "partition", "local", "merge", "certify", "compress", "report"} <= set(report["timings"])
    for g in report["groups"]:
        assert set(g) >= {"id", "blocks", "columns", "bound", "error", "rank"}
        assert g["error"] <= EPS and g["columns"] == 4 * len(g["blocks"])
    assert sorted(b for g in report["groups"] for b in g["blocks"]) == list(range(240))
    run_dir = summary["report_url"].rsplit("/", 1)[0]
    for plot in ("plots/errors.png", "plots/group_sizes.png"):
        assert open(f"{run_dir}/{plot}", "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    errors = check_certified(store, "demo", report["artifact_label"], EPS)
    assert np.allclose(errors, [g["stored_error"] for g in report["groups"]], rtol=1e-6, atol=1e-9)

    arts = {a.key: a for a in _artifacts(state.state_details.flow_run_id)}
    assert arts["cmsvd-demo-progress"].type == "progress" and float(arts["cmsvd-demo-progress"].data) == 100.0
    md = arts["cmsvd-demo-summary"].data
    for needle in ("compression ratio", "adaptive", "worst certified error", "bytes in", "bytes out", "| merge |", "report.json"):
        assert needle in md, needle
    table = json.loads(arts["cmsvd-demo-groups"].data) if isinstance(arts["cmsvd-demo-groups"].data, str) else arts["cmsvd-demo-groups"].data
    assert table and table[0]["columns"] == max(g["columns"] for g in report["groups"])
    assert summary["report_url"] in arts["cmsvd-demo-report"].data


def test_compress_and_report_flows_from_a_run_id(prefect_api, store, dask_address, clustered, monkeypatch):
    from flows.cluster import compress
    from flows.report import report

    monkeypatch.setenv("CMSVD_DASK_SCHEDULER", dask_address)
    _, clustered_summary = clustered
    ref = json.loads(open(clustered_summary["report_url"]).read())
    params = {"store_url": store, "collection": "demo", "run_id": "local-1"}
    summary = compress(params=params)
    assert summary["groups"] == len(ref["groups"]) and summary["max_error"] == ref["max_error"]
    summary = report(params=params)
    again = json.loads(open(summary["report_url"]).read())
    assert again["groups"] == ref["groups"]

    state = report(params={**params, "run_id": "no-such-run"}, return_state=True)
    assert state.is_failed() and "no run 'no-such-run'" in str(state.message)


def _counting(monkeypatch, fail_first_with: BaseException | None = None) -> list:
    """Count the calls of ``storage.ingest_path`` (what the ingest task runs); the first
    call raises ``fail_first_with`` when given."""
    import storage

    calls, real = [], storage.ingest_path

    def ingest_path(*args, **kwargs):
        calls.append(args)
        if fail_first_with is not None and len(calls) == 1:
            raise fail_first_with
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "ingest_path", ingest_path)
    return calls


def test_ingest_flow_and_permanent_errors_are_not_retried(prefect_api, tmp_path, monkeypatch):
    from flows.ingest import ingest

    rng = np.random.default_rng(0)
    np.save(tmp_path / "stack.npy", rng.standard_normal((5, 16, 3)).astype(np.float32))
    params = {"store_url": str(tmp_path / "store"), "collection": "stack", "source": str(tmp_path / "stack.npy")}
    summary = ingest(params=params)
    assert (summary["blocks"], summary["rows"], summary["columns"], summary["dtype"]) == (5, 16, 15, "float32")

    calls = _counting(monkeypatch)
    state = ingest(params=params, return_state=True)  # exists already, no overwrite
    assert state.is_failed() and "already exists" in str(state.message)
    assert len(calls) == 1, "a permanent error must not be retried"


def test_ingest_flow_retries_a_transient_error(prefect_api, tmp_path, monkeypatch):
    from flows.ingest import ingest

    np.save(tmp_path / "stack.npy", np.ones((3, 8, 2)))
    params = {"store_url": str(tmp_path / "store"), "collection": "stack", "source": str(tmp_path / "stack.npy")}
    calls = _counting(monkeypatch, fail_first_with=ConnectionError("the store went away"))
    summary = ingest(params=params)  # the first attempt fails, the retry (after 2 s) ingests
    assert len(calls) == 2 and summary["blocks"] == 3
