"""Report links a browser opens, on an S3 store with an endpoint (MinIO in the stack, a
moto server here): the cluster flow's report artifact is a presigned http(s) URL through
the endpoint, valid for a stated time, that serves report.json; the summary embeds the
plots and links them the same way.  ``CMSVD_S3_PUBLIC_ENDPOINT`` signs for the host the
browser uses (docker-compose: localhost) rather than the workers' one (minio).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from urllib.parse import urlsplit

import httpx
import pytest
from flows_harness import MOTO_CREDENTIALS, make_collection, start_moto

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

STORE = "s3://cmsvd-dash/store"


@pytest.fixture
def s3_endpoint(processes, prefect_server, monkeypatch):
    endpoint = start_moto(processes, prefect_server["env"])
    for key, value in {**MOTO_CREDENTIALS, "CMSVD_S3_ENDPOINT": endpoint, "CMSVD_LOCAL_WORKERS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CMSVD_S3_PUBLIC_ENDPOINT", raising=False)
    monkeypatch.delenv("CMSVD_LINK_EXPIRES", raising=False)
    for name in ("CMSVD_DASK_SCHEDULER", "DASK_SCHEDULER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    from flows.deployments import ensure_bucket

    ensure_bucket(STORE)
    return endpoint


def _artifacts(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts}


@pytest.mark.timeout(300)
def test_report_link_is_a_presigned_http_url_through_the_endpoint(s3_endpoint, prefect_api):
    import s3fs

    from flows.cluster import cluster

    make_collection(STORE, "dash", n_blocks=60, rows=16, width=2, blocks_per_subspace=15)
    params = {"store_url": STORE, "collection": "dash", "rank": 4, "eps": 0.1, "shard_size": 30, "run_id": "linked"}
    state = cluster(params=params, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    stored = json.loads(fs.cat_file("cmsvd-dash/store/runs/dash/linked/report.json"))

    arts = _artifacts(state.state_details.flow_run_id)
    link = arts["cmsvd-dash-report"]
    # Prefect stores a link artifact as the markdown [text](url)
    found = re.fullmatch(r"\[(.*)\]\((\S+)\)", link.data)
    assert found, link.data
    text, url = found.groups()
    assert text.startswith("report.json of run linked (link valid until ")
    assert url.startswith(f"{s3_endpoint}/cmsvd-dash/store/runs/dash/linked/report.json?"), url
    assert "X-Amz-Expires=604800" in url and "X-Amz-Signature=" in url  # 7 days, stated below
    assert summary["report_link"] == url
    assert "valid until" in (link.description or "")
    until = dt.datetime.strptime(link.description.split("valid until ")[1][:16], "%Y-%m-%d %H:%M")
    assert dt.timedelta(days=6.9) < until.replace(tzinfo=dt.timezone.utc) - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(days=7)

    # what the browser gets: the report itself, shown as JSON
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert response.json() == stored

    md = arts["cmsvd-dash-summary"].data
    assert "file://" not in md and "](s3://" not in md
    assert md.count("](data:image/png;base64,") == 2  # the plots themselves
    plot_links = [part.split(")")[0] for part in md.split("](")[1:] if part.startswith(s3_endpoint)]
    assert len(plot_links) == 3  # report.json and both plots
    png = httpx.get(next(u for u in plot_links if "errors.png" in u), timeout=30)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG" and png.headers["content-type"] == "image/png"


@pytest.mark.timeout(120)
def test_public_endpoint_and_expiry_settings(s3_endpoint, monkeypatch):
    from flows._common import browser_link, write_bytes

    write_bytes(f"{STORE}/probe.json", b'{"ok": true}', {"client_kwargs": {"endpoint_url": s3_endpoint}})
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    monkeypatch.setenv("CMSVD_S3_PUBLIC_ENDPOINT", public)
    monkeypatch.setenv("CMSVD_LINK_EXPIRES", "600")
    link = browser_link(f"{STORE}/probe.json", {"client_kwargs": {"endpoint_url": "http://minio:9000"}})
    assert urlsplit(link.url).netloc == urlsplit(public).netloc and "X-Amz-Expires=600" in link.url
    assert httpx.get(link.url, timeout=30).json() == {"ok": True}
    assert (link.expires - dt.datetime.now(dt.timezone.utc)).total_seconds() <= 600
