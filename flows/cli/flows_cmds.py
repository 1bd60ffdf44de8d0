"""``cmsvd run`` and ``cmsvd demo``: run the Prefect flows (cmsvd-ingest, cmsvd-cluster) in
this process, follow the clustering run they compute through its run folder, then write
report.html.

Words: a *run* is one clustering of a collection, named by its run id, with its run folder
``runs/<collection>/<run-id>/``; a *flow run* is one execution of a Prefect flow.

Prefect reads its settings once, at import: :func:`_quiet_environment` sets them first.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import typer

from flows.params import Method, Order
from pipeline.params import ClusteringParams

from ._app import DEFAULT_DEMO_STORE, EXIT_INTERNAL, CLIError, _command
from ._output import StageBars, _err, _esc, _guarantee_exit, _local_path, _out, _print_json, _print_summary, _summary_from_report
from ._store import (CollectionArg, JsonOpt, SchedulerOpt, StoreOpt, _check_eps, _check_names, _cluster_params, _DaskClient,
                     _open_collection, _parse_floats, _read_report, _run_url, _spec_option, _write_html)
from .reports import _sweep


def _quiet_environment(verbose: bool = False, prefect_home: Path | None = None) -> None:
    """Logging and Prefect settings for a CLI process (before Prefect is imported).

    Console logs of Prefect and Dask go down to warnings (the dashboard keeps the flow
    run logs at INFO); without ``PREFECT_API_URL`` Prefect starts a temporary local API,
    whose start-up may be slow on a busy machine, so its timeout is raised.
    """
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "error")
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        import logging

        for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker", "distributed.core",
                     "distributed.http.proxy", "flows", "prefect"):
            logging.getLogger(name).setLevel(logging.ERROR if name.startswith("distributed") else logging.WARNING)
    from flows._prefect_env import configure_prefect_env

    configure_prefect_env()  # the temporary API's start-up timeout, shared with python -m flows
    if prefect_home is not None and not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        prefect_home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(prefect_home)


class RunFolderWatcher(threading.Thread):
    """Follow a clustering run that another component (the cmsvd-cluster flow) computes,
    by polling the stage manifests in its run folder; reports each stage to a
    :class:`StageBars`."""

    FAMILIES = ("scan", "partition", "local", "merge", "certify", "compress", "report")

    def __init__(self, run_url: str, storage_options: dict | None, bars: StageBars, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.run_url = run_url.rstrip("/")
        self.storage_options = storage_options or {}
        self.bars = bars
        self.interval = interval
        self._halt = threading.Event()
        self.seen: set[str] = set()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.poll()  # final state

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - never disturb the run
                pass

    def poll(self) -> None:
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.run_url, **self.storage_options)
        fs.invalidate_cache()
        try:
            names = {p.rstrip("/").rsplit("/", 2)[-2] for p in fs.glob(f"{path}/*/manifest.json")}
        except FileNotFoundError:
            names = set()
        if fs.exists(f"{path}/report.json"):
            names.add("report")

        def seconds(stage: str) -> float | None:
            try:
                return float(json.loads(fs.cat_file(f"{path}/{stage}/manifest.json"))["meta"]["seconds"])
            except Exception:  # noqa: BLE001
                return None

        for fam in self.FAMILIES:
            if fam in self.seen:
                continue
            if fam == "merge":
                rounds = sorted(n for n in names if n.startswith("merge-"))
                if not rounds or "certify" not in names:
                    continue
                secs = [seconds(n) for n in rounds]
                self.seen.add(fam)
                self.bars.finish(f"merge ({len(rounds)} round{'s' if len(rounds) > 1 else ''})",
                                 sum(x for x in secs if x is not None))
            elif fam in names:
                self.seen.add(fam)
                self.bars.finish(fam, None if fam == "report" else seconds(fam))


@contextlib.contextmanager
def _flow_scheduler(address: str | None) -> Iterator[None]:
    """``--scheduler`` for flows run in this process, through the worker's environment.

    Flows take the scheduler only from their worker's environment (a flow run's
    parameters cannot choose it); for ``cmsvd run`` and ``cmsvd demo`` this process is the worker,
    so the user's own ``--scheduler`` is set as ``CMSVD_DASK_SCHEDULER`` for the call.
    """
    if not address or not address.strip():
        yield
        return
    name = "CMSVD_DASK_SCHEDULER"
    previous = os.environ.get(name)
    os.environ[name] = address.strip()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _run_flow(coll, cparams, bars: StageBars, scheduler: str | None = None) -> dict:
    """The cmsvd-cluster Prefect flow, followed by polling its run folder for progress."""
    from flows.cluster import cluster as cluster_flow

    watcher = RunFolderWatcher(_run_url(coll, cparams.run_id), coll.storage_options, bars)
    watcher.start()
    try:
        with _flow_scheduler(scheduler):
            state = cluster_flow(params=cparams, return_state=True)
    finally:
        watcher.stop()
    if not state.is_completed():
        exc = None
        try:
            state.result()
        except BaseException as e:  # noqa: BLE001 - re-raised with its own type below
            exc = e
        if exc is not None:
            raise exc
        raise CLIError(f"the cmsvd-cluster flow ended in state {state.name}: {state.message}", EXIT_INTERNAL)
    return state.result()


@_command("run")
def run_cmd(
    collection: str = CollectionArg,
    store: str = StoreOpt,
    source: Optional[str] = typer.Option(None, "--source", help="Ingest this file or folder first (cmsvd-ingest flow)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="With --source: replace an existing collection."),
    rank: int = _spec_option("rank", "--rank", "-r"),
    eps: float = _spec_option("eps", "--eps", "-e", help="Certified error bound in (0, 1)."),
    method: Method = typer.Option(Method(ClusteringParams.default("method"))),
    order: Order = typer.Option(Order(ClusteringParams.default("order"))),
    oversampling: int = _spec_option("oversampling", "--oversampling"),
    patience: int = _spec_option("patience", "--patience"),
    shard_size: int = _spec_option("shard_size", "--shard-size"),
    scheduler: Optional[str] = SchedulerOpt,
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Run id; re-using one resumes the run."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Comma-separated eps values for the compression-vs-eps plot."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect and Dask logs."),
    as_json: bool = JsonOpt,
) -> None:
    """Run the Prefect flows (cmsvd-ingest with --source, then cmsvd-cluster) and write report.html.

    The cmsvd-cluster flow runs the stages scan -> partition -> local -> merge -> certify ->
    compress -> report as Prefect tasks, checkpointed in the run folder
    (runs/<collection>/<run-id>), so starting it again with the same run id resumes.  Uses
    PREFECT_API_URL when set (the flow runs show on the dashboard), else a temporary local API.
    """
    _check_eps(eps)
    sweep_eps = _parse_floats(sweep, "'--sweep'")
    _check_names(collection_name=collection, run_id=run_id)
    _quiet_environment(verbose)
    result = _flow_pipeline(store, collection, source, overwrite, rank, eps, method, order, oversampling, patience,
                            shard_size, scheduler, run_id, sweep_eps, as_json)
    if as_json:
        _print_json(result)
    else:
        _print_summary(result, f"cmsvd run {collection}")
    _guarantee_exit(result)


def _flow_pipeline(store, collection, source, overwrite, rank, eps, method, order, oversampling, patience, shard_size,
                   scheduler, run_id, sweep_eps, quiet, ingest_params: dict | None = None) -> dict:
    """(ingest ->) cluster flow -> report.html (-> sweep); returns the summary dict."""
    bars = StageBars(quiet=quiet)
    timings_cli: dict[str, float] = {}
    with bars:
        if source is not None or ingest_params is not None:
            start = time.perf_counter()
            bars("ingest", 0, 1)
            if ingest_params is not None:
                from flows.ingest import demo_data
                from flows.params import DemoParameters

                demo_data(params=DemoParameters(store_url=store, collection=collection, **ingest_params))
            else:
                from flows.ingest import ingest
                from flows.params import IngestParameters

                ingest(params=IngestParameters(store_url=store, collection=collection, source=source, overwrite=overwrite))
            bars("ingest", 1, 1)
            timings_cli["ingest"] = time.perf_counter() - start
        coll = _open_collection(store, collection)
        cparams = _cluster_params(store, collection, rank, eps, method, order, oversampling, patience, shard_size, run_id)
        if cparams.run_id is None:
            from flows._run import default_run_id

            cparams = cparams.model_copy(update={"run_id": default_run_id(coll, cparams.pipeline_kwargs())})
        start = time.perf_counter()
        flow_summary = _run_flow(coll, cparams, bars, scheduler)
        timings_cli["flow"] = time.perf_counter() - start
        report = _read_report(coll, cparams.run_id)
        if report is None:
            raise CLIError(f"the flow finished without report.json at {flow_summary.get('report_url')}", EXIT_INTERNAL)
        sweep_rows = None
        if sweep_eps:
            others = [e for e in sweep_eps if abs(e - eps) > 1e-12]
            with _DaskClient(scheduler) as client:
                sweep_rows = _sweep(coll, cparams.pipeline_kwargs(), others, client, bars) if others else []
            here = report
            sweep_rows.append({"eps": float(eps), "run_id": cparams.run_id, "groups": len(here["groups"]),
                               "compression_ratio": here["compression_ratio"],
                               "compression_ratio_adaptive": here["compression_ratio_adaptive"],
                               "max_error": max((g["error"] for g in here["groups"] if len(g["blocks"]) > 1), default=0.0)})
        bars("html", 0, 1)
        html_url = _write_html(coll, cparams.run_id, report, sweep=sweep_rows)
        bars("html", 1, 1)
    summary = _summary_from_report(report, {"report.json": f"{_run_url(coll, cparams.run_id)}/report.json",
                                            "report.html": html_url})
    summary["artifact_label"] = report.get("artifact_label")
    summary["store"] = store
    summary["cli_seconds"] = {k: round(v, 3) for k, v in timings_cli.items()}
    if sweep_rows:
        summary["sweep"] = sorted(sweep_rows, key=lambda r: r["eps"])
    return summary


@_command("demo")
def demo_cmd(
    store: str = typer.Option(DEFAULT_DEMO_STORE, "--store", "-s", help="Folder (or URL) of the demo store."),
    blocks: int = typer.Option(20000, "--blocks", min=10, help="Blocks in the generated collection."),
    rows: int = typer.Option(256, "--rows", min=4, help="Rows m of every block."),
    width: int = typer.Option(4, "--width", min=1, help="Columns of every block."),
    rank: int = _spec_option("rank", "--rank", "-r", default=16),  # the demo's data: rank-3 subspaces, noise 0.02
    eps: float = _spec_option("eps", "--eps", "-e", default=0.05),
    sweep: Optional[str] = typer.Option("0.02,0.1,0.2", "--sweep", help="Other eps values for the compression-vs-eps plot ('' to skip)."),
    scheduler: Optional[str] = SchedulerOpt,
    fresh: bool = typer.Option(False, "--fresh", help="Regenerate the collection and recompute every stage."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect and Dask logs."),
    as_json: bool = JsonOpt,
) -> None:
    """Generate a demo collection, run the Prefect flows on it (as cmsvd run) and write the report.

    Local Dask cluster, local Zarr store (./cmsvd-demo), Prefect without a server.  A second
    cmsvd demo reuses the generated collection and the run's checkpoints; --fresh starts over."""
    _check_eps(eps)
    sweep_eps = _parse_floats(sweep, "'--sweep'")
    from flows.demo import DEMO_COLLECTION, demo_ingest_params, prepare_demo_store

    root = prepare_demo_store(store, fresh=fresh)
    prefect_home = Path(store) / ".prefect" if "://" not in store else None
    _quiet_environment(verbose, prefect_home)
    started = time.perf_counter()
    params = demo_ingest_params(store, blocks=blocks, rows=rows, width=width, fresh=fresh)
    if not as_json:
        from flows.html_report import fmt_bytes

        size = blocks * rows * width * 8
        _err().print(_esc(
            f"cmsvd demo: {blocks} blocks of {rows} x {width} ({fmt_bytes(size)}) from a union of low-rank subspaces "
            f"plus noise, rank {rank}, eps {eps}; store {root}"
            + ("" if params is not None else " (collection already generated)")
        ))
    spec = ClusteringParams(rank=rank, eps=eps)  # the library's defaults for everything else
    summary = _flow_pipeline(store, DEMO_COLLECTION, None, False, rank, eps, Method(spec.method), Order(spec.order),
                             spec.oversampling, spec.patience, spec.shard_size, scheduler, None, sweep_eps, as_json,
                             ingest_params=params)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    if as_json:
        _print_json(summary)
    else:
        _print_summary(summary, "cmsvd demo")
        from rich.text import Text

        _out().print(Text.assemble(
            f"done in {summary['seconds']:.0f} s. Open ", _esc(_local_path(summary["files"]["report.html"]), "bold"),
            "\n", _esc(f"next: cmsvd verify {DEMO_COLLECTION} --store {store}   |   "
                        f"cmsvd decompress {DEMO_COLLECTION} 0 -o block0.npy --store {store}   |   cmsvd --help"),
        ))
    _guarantee_exit(summary)
