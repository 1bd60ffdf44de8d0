"""The report stage of a clustering run and the stand-alone cmsvd-report flow: report.json
(+ plots) in the run folder (:mod:`flows.report_json`), and the Prefect artifacts the
dashboard shows for the run (:mod:`flows.dashboard`).  Every name those modules had here
before they were split out is still importable from this module.

``report.json`` is a stable contract for other programs: its keys are described in
:mod:`flows.report_json`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prefect import flow, task

from ._common import FLOW_OPTIONS, TASK_OPTIONS, StageProgress, artifact_key, write_bytes
from .dashboard import largest_groups_table, publish_report_artifacts, summary_markdown
from .params import RunParameters, validate_params
from .plots import PLOT_FILES, report_plots
from .report_json import BASELINE_MAX_BYTES, REPORT_FILE, build_report, per_block_baseline, write_report  # noqa: F401

__all__ = [
    "REPORT_FILE",
    "PLOT_FILES",
    "build_report",
    "write_report",
    "summary_markdown",
    "largest_groups_table",
    "publish_report_artifacts",
    "report_stage",
    "report",
]


def report_stage(collection: Any, result: Any, key_prefix: str, seconds_so_far: float = 0.0) -> dict[str, Any]:
    """Build, write and publish the report of a finished run; return a short summary.

    Parameters
    ----------
    collection : storage.Collection
    result : pipeline.distributed.DistributedResult
    key_prefix : str
        Prefix of the Prefect artifact keys (one set of keys per collection, so the
        Artifacts page shows their history across runs).
    seconds_so_far : float
        Flow-side time of the report stage before this call (recorded as ``report``).
    """
    import storage

    start = time.perf_counter()
    report = build_report(collection, result)
    run_url = storage.run_url(collection, result.run_id)
    report["timings"]["report"] = 0.0
    plots = report_plots(report)
    plots_and_report = write_report(report, run_url, collection.storage_options, plots)
    # the report's own duration is known only once it is written: rewrite it once
    report["timings"]["report"] = round(seconds_so_far + time.perf_counter() - start, 3)
    write_bytes(plots_and_report["report"], json.dumps(report, indent=1).encode(), collection.storage_options)
    link = publish_report_artifacts(report, plots_and_report, key_prefix, collection.storage_options, plots)
    return {
        "run_id": result.run_id,
        "collection": collection.name,
        "groups": len(report["groups"]),
        "compression_ratio": report["compression_ratio"],
        "compression_ratio_adaptive": report["compression_ratio_adaptive"],
        "max_error": report["max_error"],
        "max_certified_error": report.get("max_certified_error_compressed", max((g["error"] for g in report["groups"]), default=0.0)),
        "raw_blocks": report.get("raw_blocks"),
        "report_url": plots_and_report["report"],
        "report_link": link.url if link else None,  # for a browser; None on local stores
        "artifact_label": report["artifact_label"],
        **({"lineage": report["lineage"]} if report.get("lineage") else {}),
    }


@task(name="report", **TASK_OPTIONS)
def report_task(collection: Any, result: Any, key_prefix: str) -> dict[str, Any]:
    """Write report.json and plots into the run folder; publish the dashboard artifacts."""
    return report_stage(collection, result, key_prefix)


@flow(
    name="cmsvd-report",
    description="Rewrite report.json, plots and dashboard artifacts of a finished run.",
    **FLOW_OPTIONS,
)
def report(params: RunParameters) -> dict[str, Any]:
    """Re-write the report and dashboard artifacts of a finished run.

    Refuses a run whose compress stage is not complete (finish it with the
    cmsvd-compress flow, or by re-running cmsvd-cluster with its run id).
    """
    from ._run import clustering_run, collect_result, open_collection, stored_run_params

    # validated here, not by Prefect, so a run created with validation off fails at once
    # with every bad field on one line (see flows.cluster)
    params = validate_params(RunParameters, params, "cmsvd-report")

    collection = open_collection(params.store_url, params.collection)
    run_kwargs = stored_run_params(collection, params.run_id)
    key_prefix = artifact_key("cmsvd", collection.name)
    progress = StageProgress(f"{key_prefix}-progress", ["report"], description=f"cmsvd report of run {params.run_id}")
    # a finished run reads back from its checkpoints: no Dask cluster needed
    run = clustering_run(collection, run_kwargs, params.run_id, None, progress.within)
    if not run.run.is_complete("compress"):
        raise ValueError(
            f"run {params.run_id!r} of {collection.name!r} has no complete compress stage: "
            "finish it with cmsvd-compress (or cmsvd-cluster with the same run id) first"
        )
    result = collect_result(run)
    summary = report_task(collection, result, key_prefix)
    progress.finish()
    print(json.dumps(summary))
    return summary
