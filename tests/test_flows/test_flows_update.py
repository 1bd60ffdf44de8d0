"""The cluster flow after an append: an incremental update of the last run (the nightly
deployment's behaviour), a full run when asked, the run reused when nothing changed."""

from __future__ import annotations

import numpy as np
from flows_harness import check_certified, make_collection, run_cluster_flow

EPS = 0.1


def _run_flow(prefect_server, dask_address, params):
    state = run_cluster_flow(prefect_server, dask_address, params)
    return state, state.result()


def _markdown(flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(str(a.data) for a in found if a.type == "markdown")


def test_the_cluster_flow_updates_after_an_append_and_runs_in_full_when_asked(prefect_server, prefect_api, dask_address,
                                                                             tmp_path):
    import storage
    from pipeline.synthetic import union_of_subspaces

    store = str(tmp_path / "store")
    make_collection(store, "grow")
    params = {"store_url": store, "collection": "grow", "rank": 6, "eps": EPS, "shard_size": 40}
    _, first = _run_flow(prefect_server, dask_address, params)
    assert "lineage" not in first
    layout, _ = union_of_subspaces(24, 32, 4, blocks_per_subspace=8, subspace_rank=2, seed=5)
    storage.ingest_blocks(store, "grow", (layout.block(i) for i in range(layout.n_blocks)), append=True)

    state, update = _run_flow(prefect_server, dask_address, params)
    lineage = update["lineage"]
    assert lineage["parent_run"] == first["run_id"] and lineage["blocks_added"] == 24
    assert update["run_id"] != first["run_id"] and update["max_error"] <= EPS
    check_certified(store, "grow", update["artifact_label"], EPS)
    text = _markdown(state.state_details.flow_run_id)
    assert "update of run" in text and "blocks added" in text and "groups touched" in text

    from flows.report import report

    reported = run_cluster_flow(prefect_server, dask_address, {"store_url": store, "collection": "grow",
                                                               "run_id": update["run_id"]}, report).result()
    assert reported["lineage"]["groups_touched"] == lineage["groups_touched"]  # the report flow reopens an update

    _, again = _run_flow(prefect_server, dask_address, params)  # nothing appended: the update is reused
    assert again["run_id"] == update["run_id"] and again["lineage"]["parent_run"] == first["run_id"]

    _, full = _run_flow(prefect_server, dask_address, {**params, "full": True})
    assert "lineage" not in full and full["run_id"] not in (first["run_id"], update["run_id"])
    errors = check_certified(store, "grow", full["artifact_label"], EPS)
    assert len(errors) == full["groups"] and np.max(errors) <= EPS
