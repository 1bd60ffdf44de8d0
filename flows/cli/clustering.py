"""``cmsvd cluster`` and ``cmsvd compress``: certified clustering (distributed, or the
sequential greedy in memory) and the compressed artifact of a run.
"""

from __future__ import annotations

from typing import Optional

import typer

from flows.params import Method, Order
from pipeline.params import ClusteringParams

from ._app import EXIT_MISSING, CLIError, _command
from ._output import StageBars, _guarantee_exit, _out, _print_json, _print_summary, _summary_from_report
from ._sequential import _sequential_cluster, _sequential_compress, _sequential_params, _sequential_result, _sequential_run_id
from ._store import (CollectionArg, JsonOpt, SchedulerOpt, StoreOpt, _check_eps, _check_names, _cluster_params, _DaskClient,
                     _distributed_result, _open_collection, _run_record, _spec_option, _write_html, _write_run_report)


def _finish_compressed(coll, run_id: str, report: dict, urls: dict, html: bool, as_json: bool, title: str) -> None:
    """Write report.html, print the summary (or its JSON) and exit 1 if a group is above eps."""
    files = {"report.json": urls["report"]}
    if html:
        files["report.html"] = _write_html(coll, run_id, report)
    summary = _summary_from_report(report, files)
    summary["artifact_label"] = report.get("artifact_label")
    if as_json:
        _print_json(summary)
    else:
        _print_summary(summary, title)
    _guarantee_exit(summary)


@_command("cluster")
def cluster_cmd(
    collection: str = CollectionArg,
    store: str = StoreOpt,
    rank: int = _spec_option("rank", "--rank", "-r", help="Shared basis rank r of every group."),
    eps: float = _spec_option("eps", "--eps", "-e", help="Certified bound on every group's relative rank-r error, in (0, 1)."),
    method: Method = typer.Option(Method(ClusteringParams.default("method")), help="Certified lower bound used while groups grow."),
    order: Order = typer.Option(Order(ClusteringParams.default("order")), help="Candidate order: residual against the seed basis, or norm."),
    oversampling: int = _spec_option("oversampling", "--oversampling", help="Extra sketch directions p (method approximate)."),
    patience: int = _spec_option("patience", "--patience", help="Groups in a row without an accepted candidate before the rest become single blocks."),
    shard_size: int = _spec_option("shard_size", "--shard-size", help="Distributed: most blocks per shard of the local stage."),
    sequential: bool = typer.Option(False, "--sequential", help="The paper's sequential greedy on the collection loaded in memory."),
    max_memory_gib: float = typer.Option(2.0, "--max-memory-gib", help="--sequential: refuse collections needing more memory than this."),
    scheduler: Optional[str] = SchedulerOpt,
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Run id; re-using one resumes the run. Default: derived from the collection and the parameters."),
    compress: bool = typer.Option(True, "--compress/--no-compress", help="Also write the compressed artifact (else: 'cmsvd compress' later)."),
    update: bool = typer.Option(False, "--update", help="Incremental: update the latest finished run with these parameters after blocks were appended (a full run when there is none, or when the update drifts)."),
    parent: Optional[str] = typer.Option(None, "--parent", help="With --update: the run to update (default: the latest finished run with these parameters)."),
    html: bool = typer.Option(True, "--html/--no-html", help="Write report.html beside report.json."),
    as_json: bool = JsonOpt,
) -> None:
    """Cluster a collection into groups with a certified error <= eps (distributed by default)."""
    _check_eps(eps)
    _check_names(collection_name=collection, run_id=run_id)
    if parent is not None:
        _check_names(run_id=parent)
    if (update or parent) and (sequential or not compress):
        raise CLIError("--update works on distributed runs and writes their artifact: drop --sequential / --no-compress")
    coll = _open_collection(store, collection)
    bars = StageBars(quiet=as_json)
    if sequential:
        params = _sequential_params(rank, eps, method.value, order.value, oversampling, patience)
        run_id = run_id or _sequential_run_id(coll, params)
        with bars:
            run = _sequential_cluster(coll, params, run_id, max_memory_gib, bars)
            if not compress:
                arrays, meta = run.load_stage("sequential")
                summary = {"run_id": run_id, "collection": coll.name, "groups": int(meta["n_groups"]),
                           "max_bound": float(arrays["bounds"].max(initial=0.0)), "compressed": False}
            else:
                _sequential_compress(coll, run, max_memory_gib, bars)
                result = _sequential_result(coll, run)
        if compress:
            report, urls = _write_run_report(coll, result)
    else:
        cparams = _cluster_params(store, collection, rank, eps, method, order, oversampling, patience, shard_size, run_id)
        from flows._run import clustering_run, default_run_id

        run_kwargs = cparams.pipeline_kwargs()
        current = None
        if update and not parent:
            parent, current, why = _update_parent(coll, run_kwargs)
            if parent is None and not as_json:
                _out().print(f"{'reused' if current else 'full run'}: {why}", markup=False)
        run_id = run_id or current or (None if parent else default_run_id(coll, run_kwargs))
        with bars, _DaskClient(scheduler) as client:
            if parent:
                result = _updated(coll, run_kwargs, parent, run_id, client, bars)
                run_id = result.run_id
            elif compress:  # a full run, or the finished run of the collection as it is (``current``) reused
                result = clustering_run(coll, run_kwargs, run_id, client, bars).result()
            else:
                certified = clustering_run(coll, run_kwargs, run_id, client, bars).certify()
                errors = certified["errors"]
                summary = {"run_id": run_id, "collection": coll.name, "groups": int(len(certified["group_offsets"]) - 1),
                           "max_certified_error": float(errors.max(initial=0.0)), "compressed": False}
        if compress:
            report, urls = _write_run_report(coll, result)
    if not compress:
        if as_json:
            _print_json(summary)
        else:
            _out().print(f"clustered {coll.name} into {summary['groups']} groups (run {run_id}); "
                         f"write the artifact with: cmsvd compress {coll.name} --run-id {run_id}", markup=False)
        return
    _finish_compressed(coll, run_id, report, urls, html, as_json,
                       f"cmsvd cluster {coll.name}" + (" (sequential)" if sequential else ""))


def _update_parent(coll, run_kwargs: dict):
    from flows._run import update_parent

    return update_parent(coll, run_kwargs)


def _updated(coll, run_kwargs: dict, parent: str, run_id: str | None, client, bars):
    """The incremental update of run ``parent`` (or the full run that replaced it)."""
    import storage
    from pipeline.distributed import cluster_collection

    keys = ("rank", "eps", "method", "order", "oversampling", "patience", "shard_size", "batch_bytes")
    try:
        return cluster_collection(coll, **{k: run_kwargs[k] for k in keys}, client=client, run_id=run_id,
                                  progress=bars, parent_run_id=parent)
    except storage.RunNotFoundError as exc:
        raise CLIError(str(exc), EXIT_MISSING) from None
    except ValueError as exc:
        raise CLIError(f"cannot update run {parent!r}: {exc}") from None


@_command("compress")
def compress_cmd(
    collection: str = CollectionArg,
    run_id: str = typer.Option(..., "--run-id", help="The run to compress (see 'cmsvd inspect COLLECTION')."),
    store: str = StoreOpt,
    scheduler: Optional[str] = SchedulerOpt,
    max_memory_gib: float = typer.Option(2.0, "--max-memory-gib", help="Sequential runs: memory budget."),
    html: bool = typer.Option(True, "--html/--no-html"),
    as_json: bool = JsonOpt,
) -> None:
    """Write the compressed artifact of a run (finishing any missing stage) and its report."""
    _check_names(collection_name=collection, run_id=run_id)
    coll = _open_collection(store, collection)
    record = _run_record(coll, run_id)
    bars = StageBars(quiet=as_json)
    if record.get("params", {}).get("mode") == "sequential":
        import storage

        run = storage.open_run(coll.url, coll.name, run_id, record["params"], coll.fingerprint(), storage_options=coll.storage_options)
        if not run.is_complete("sequential"):
            raise CLIError(f"run {run_id!r} has no complete clustering; run 'cmsvd cluster --sequential' again", EXIT_MISSING)
        with bars:
            _sequential_compress(coll, run, max_memory_gib, bars)
        result = _sequential_result(coll, run)
    else:
        with bars, _DaskClient(scheduler) as client:
            result = _distributed_result(coll, run_id, client, bars)
    report, urls = _write_run_report(coll, result)
    _finish_compressed(coll, run_id, report, urls, html, as_json, f"cmsvd compress {coll.name}")
