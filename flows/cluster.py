"""``cmsvd-cluster`` and ``cmsvd-compress``: the clustering flows.

cmsvd-cluster runs scan -> partition -> local -> merge rounds -> certify -> compress ->
report (after an append: absorb -> local -> merge rounds -> certify -> compress -> report,
an incremental update of the latest finished run with the same parameters, unless
``full`` is set; see :mod:`pipeline.distributed.update`), each stage a Prefect task with
retries whose output is checkpointed in
``runs/<collection>/<run_id>/`` of the store.  Starting the flow again with the same
run id (the default id is derived from the collection and the parameters, so simply
starting it again with the same values) resumes after the last completed stage and
yields the same groups bit for bit.

cmsvd-compress finishes an existing run from its run id alone (the parameters are read
back from the run folder): useful from the dashboard after a failure.

Both flows validate their parameters themselves (``validate_parameters=False`` in
``FLOW_OPTIONS``, and :func:`flows.params.validate_params` as the first statement): a
Prefect flow run created with the dashboard's validation switched off still fails
before any Dask cluster starts, with one line naming every bad field, instead of
Prefect's multi-line message.  The flow docstrings are the dashboard's flow
descriptions: plain text only.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prefect import flow

from ._common import FLOW_OPTIONS, StageProgress, artifact_key
from ._run import (clustering_run, collect_result, default_run_id, open_collection, run_stages, stored_run_params,
                   update_parent)
from .dask_cluster import dask_client
from .params import ClusterParameters, RunParameters, validate_params
from .report import report_task

__all__ = ["cluster", "compress"]

_ALL_STAGES = ["scan", "partition", "local", "merge", "certify", "compress", "report"]
_UPDATE_STAGES = ["absorb", "local", "merge", "certify", "compress", "report"]


def _execute(collection: Any, run_kwargs: dict[str, Any], run_id: str | None,
             parent_run_id: str | None = None) -> dict[str, Any]:
    """Every stage of one run (an incremental update of ``parent_run_id`` when given;
    a full run replaces an update that drifted), then the report; shared by both flows.

    The Dask scheduler is the worker's (``CMSVD_DASK_SCHEDULER`` / ``DASK_SCHEDULER_ADDRESS``,
    else a LocalCluster), never a run parameter: see :mod:`flows.params`.
    """
    from pipeline.distributed.update import needs_full_run

    key_prefix = artifact_key("cmsvd", collection.name)
    progress = StageProgress(
        f"{key_prefix}-progress", _UPDATE_STAGES if parent_run_id else _ALL_STAGES,
        description=f"cmsvd {'update of run ' + parent_run_id if parent_run_id else 'run'} on {collection.name}",
    )
    with dask_client() as client:
        run = clustering_run(collection, run_kwargs, run_id, client, progress.within, parent_run_id)
        run_stages(run, progress)
        result = collect_result(run)
        reason = needs_full_run(result) if parent_run_id else None
        if reason is not None:
            print(f"full run instead of the update {result.run_id}: {reason}")
            run = clustering_run(collection, run_kwargs, default_run_id(collection, run_kwargs), client, progress.within)
            run_stages(run, progress)
            result = collect_result(run)
            result.lineage = {"full_reason": reason, "parent_run": parent_run_id}
    summary = report_task(collection, result, key_prefix)
    progress.finish()
    print(json.dumps(summary))
    return summary


@flow(
    name="cmsvd-cluster",
    description=(
        "Cluster a collection into groups that share a certified rank-r basis, compress it and report. "
        "Checkpointed per stage: starting it again with the same values or run id resumes."
    ),
    **FLOW_OPTIONS,
)
def cluster(params: ClusterParameters) -> dict[str, Any]:
    """Cluster a collection into groups that share a certified rank-r basis, compress it,
    and report.

    Returns
    -------
    dict
        run_id, groups, compression ratios, max_error, report_url, artifact_label.
    """
    started = time.perf_counter()
    params = validate_params(ClusterParameters, params, "cmsvd-cluster")  # before any work
    collection = open_collection(params.store_url, params.collection)
    run_kwargs = params.pipeline_kwargs()
    parent, current, why = (None, None, "asked for (full: true)") if params.full else update_parent(collection, run_kwargs)
    if parent is not None:
        print(f"incremental update of run {parent} ({why}): collection {collection.name}, {collection.n_blocks} blocks")
        summary = _execute(collection, run_kwargs, params.run_id, parent)
    else:
        run_id = params.run_id or current or default_run_id(collection, run_kwargs)
        print(f"run {run_id} of collection {collection.name} ({collection.n_blocks} blocks); full run: {why}")
        summary = _execute(collection, run_kwargs, run_id)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


@flow(
    name="cmsvd-compress",
    description="Finish an existing run from its run id (parameters are read from the run folder) and report.",
    **FLOW_OPTIONS,
)
def compress(params: RunParameters) -> dict[str, Any]:
    """Finish an existing run (normally just its compress stage) and report.

    The clustering parameters come from the run folder, so only the run id is needed.
    """
    params = validate_params(RunParameters, params, "cmsvd-compress")  # before any work
    collection = open_collection(params.store_url, params.collection)
    run_kwargs = stored_run_params(collection, params.run_id)
    return _execute(collection, run_kwargs, params.run_id)
