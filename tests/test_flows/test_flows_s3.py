"""The cluster flow on an S3 store, as in the docker-compose stack (MinIO there, moto here).

A moto S3 server on 127.0.0.1; the registrar's ``ensure_bucket`` creates the bucket;
the collection is ingested through ``s3://``; the flow runs as a subprocess configured
only by environment variables (``CMSVD_S3_ENDPOINT`` and the ``AWS_*`` keys, like the
prefect-worker and dask-worker services) and its checkpoints, report, plots and
compressed artifact land in the bucket.
"""

from __future__ import annotations

import json
import sys

import pytest
from flows_harness import MOTO_CREDENTIALS, make_collection, start_moto

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

STORE = "s3://cmsvd/store"


@pytest.fixture
def s3_env(processes, prefect_server, monkeypatch):
    endpoint = start_moto(processes, prefect_server["env"])
    for key, value in {**MOTO_CREDENTIALS, "CMSVD_S3_ENDPOINT": endpoint}.items():
        monkeypatch.setenv(key, value)
    return dict(prefect_server["env"], CMSVD_S3_ENDPOINT=endpoint, CMSVD_LOCAL_WORKERS="1", **MOTO_CREDENTIALS)


@pytest.mark.timeout(240)
def test_cluster_flow_on_s3(s3_env, processes):
    import s3fs

    from flows.deployments import ensure_bucket

    ensure_bucket(STORE)
    ensure_bucket(STORE)  # idempotent, as the one-shot service may run again
    make_collection(STORE, "demo")

    params = {"store_url": STORE, "collection": "demo", "rank": 6, "eps": 0.1, "shard_size": 40, "run_id": "s3-run"}
    proc = processes.start("flow", [sys.executable, "-m", "flows", "cluster", json.dumps(params)], s3_env)
    assert proc.wait(timeout=180) == 0, processes.log("flow")

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env["CMSVD_S3_ENDPOINT"]})
    run = "cmsvd/store/runs/demo/s3-run"
    report = json.loads(fs.cat_file(f"{run}/report.json"))
    assert report["collection"]["blocks"] == 240 and report["max_error"] <= 0.1
    assert fs.cat_file(f"{run}/plots/errors.png")[:4] == b"\x89PNG"
    assert fs.exists(f"{run}/certify/manifest.json")
    # errors recomputed block by block are checked on local stores (test_flows_local,
    # test_flows_stack); over S3 that is hundreds of small requests, so here the
    # artifact is re-hashed and its recorded errors checked
    import storage

    art = storage.open_artifact(STORE, "demo", "s3-run", verify=True)
    assert sorted(b for g in art.groups for b in g) == list(range(240))
    assert max(art.errors) <= 0.1
