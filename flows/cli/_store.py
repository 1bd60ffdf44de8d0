"""Options shared by the ``cmsvd`` commands, and their store and run helpers: collections,
runs and reports in the store, name checks, the Dask client, report writing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from pipeline.params import ClusteringParams

from ._app import DEFAULT_STORE, EXIT_MISSING, EXIT_USAGE, CLIError, _one_line
from ._output import StageBars


REPORT_HTML = "report.html"


StoreOpt = typer.Option(DEFAULT_STORE, "--store", "-s", envvar="CMSVD_STORE", help="Store root: folder, file://, memory:// or s3://bucket/prefix.", show_default=True)
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout (and nothing else there).")
SchedulerOpt = typer.Option(None, "--scheduler", help="Dask scheduler address (tcp://host:8786). Default: CMSVD_DASK_SCHEDULER, else a LocalCluster.")
RunIdOpt = typer.Option(None, "--run-id", help="Run id (the folder runs/<collection>/<run-id>). Default: the latest run with an artifact.")
CollectionArg = typer.Argument(..., help="Collection name.")


def _check_eps(eps: float) -> float:
    try:
        return ClusteringParams.constraints["eps"].check("eps", eps)
    except ValueError:
        raise typer.BadParameter(f"{eps} is not in (0, 1)", param_hint="'--eps'") from None


def _spec_option(name: str, *decls: str, default: Any = None, **kwargs: Any) -> Any:
    """A typer option whose default and bounds come from pipeline.params.ClusteringParams
    (the constraint table the library and the Prefect forms share)."""
    bounds = ClusteringParams.constraints[name].bounds()
    return typer.Option(ClusteringParams.default(name) if default is None else default, *decls,
                        min=bounds.get("ge"), max=bounds.get("le"), **kwargs)


def _parse_floats(text: str | None, what: str) -> list[float]:
    if not text:
        return []
    try:
        values = [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=what) from None
    for v in values:
        if not 0.0 < v < 1.0:
            raise typer.BadParameter(f"{v} is not in (0, 1)", param_hint=what)
    return sorted(set(values))


def _parse_sizes(text: str) -> list[int]:
    """``"2:40:4"`` (start:stop:step, stop included) or ``"2,5,10"``."""
    try:
        if ":" in text:
            parts = [int(x) for x in text.split(":")]
            start, stop, step = (parts + [1])[:3] if len(parts) == 2 else parts
            if step < 1:
                raise ValueError
            sizes = list(range(start, stop + 1, step))
        else:
            sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected start:stop[:step] or a comma list, got {text!r}", param_hint="'--sizes'") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"group sizes must be >= 1, got {text!r}", param_hint="'--sizes'")
    return sizes


def _quiet_dask_loggers() -> None:
    import logging

    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker", "distributed.core"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _DaskClient:
    """A distributed.Client to ``address`` (or the environment's), else a quiet LocalCluster."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    def __enter__(self):
        from flows.dask_cluster import local_cluster_options, resolve_scheduler_address

        from distributed import Client, LocalCluster

        _quiet_dask_loggers()
        resolved = resolve_scheduler_address(self.address)
        self._cluster = None
        if resolved is None:
            opts = local_cluster_options()
            opts["silence_logs"] = 50  # logging.CRITICAL: task errors reach the client anyway
            self._cluster = LocalCluster(**opts)
            self.client = Client(self._cluster)
        else:
            try:
                self.client = Client(resolved, timeout=30)
            except OSError as exc:
                raise CLIError(f"cannot reach the Dask scheduler at {resolved}: {_one_line(exc)}", EXIT_MISSING) from None
        return self.client

    def __exit__(self, *exc: Any) -> None:
        try:
            self.client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()


def _open_collection(store: str, name: str):
    import storage

    return storage.open_collection(store, name)


def _list_runs(coll) -> list[dict]:
    import storage

    return storage.list_runs(coll)


def _list_artifacts(coll) -> list[dict]:
    import storage

    return storage.list_artifacts(coll)


def _resolve_run_id(coll, run_id: str | None) -> str:
    """The given run id, else the latest artifact's label, else the latest run.

    Every id returned passes the storage name check (the listings skip unsafe folders).
    """
    if run_id is not None:
        _check_names(run_id=run_id)
        return run_id
    arts = _list_artifacts(coll)
    if arts:
        return arts[-1]["label"]
    runs = _list_runs(coll)
    if runs:
        return runs[-1]["run_id"]
    raise CLIError(f"collection {coll.name!r} has no run yet: start one with 'cmsvd cluster {coll.name}'", EXIT_MISSING)


def _run_url(coll, run_id: str) -> str:
    import storage

    return storage.run_url(coll, run_id)


def _run_record(coll, run_id: str) -> dict:
    import storage

    try:
        return storage.read_run_record(coll, run_id)
    except storage.RunNotFoundError as exc:
        raise CLIError(str(exc), EXIT_MISSING) from None


def _read_report(coll, run_id: str) -> dict | None:
    import storage

    return storage.read_run_json(coll, run_id, "report.json")


def _write_text(url: str, text: str, storage_options: dict | None) -> None:
    from flows._common import write_bytes

    write_bytes(url, text.encode(), storage_options)


def _check_names(**names: str | None) -> None:
    """Refuse an unsafe collection name or run id before any file is read or written.

    Run ids and collection names become path components of the store
    (``runs/<collection>/<run_id>/``), so ``../x`` or ``a/b`` would read and write
    outside it.  The rule is :func:`storage.check_name`; the keyword
    names the field in the message (``run_id`` -> "run id").

    Raises
    ------
    CLIError
        Exit 2, one line naming the field and the value.
    """
    from storage import check_name
    from storage.errors import InvalidNameError

    for field, value in names.items():
        if value is None:
            continue
        try:
            check_name(value, field.replace("_", " "))
        except InvalidNameError as exc:
            raise CLIError(_one_line(exc), EXIT_USAGE) from None


def _cluster_params(store, collection, rank, eps, method, order, oversampling, patience, shard_size, run_id):
    """The cmsvd-cluster flow's parameters (the Dask scheduler is not one: see :func:`_flow_scheduler`)."""
    from flows.params import ClusterParameters

    return ClusterParameters(
        store_url=store, collection=collection, rank=rank, eps=eps, method=method.value, order=order.value,
        oversampling=oversampling, patience=patience, shard_size=shard_size, run_id=run_id,
    )


def _write_run_report(coll, result, extra_timings: dict | None = None) -> tuple[dict, dict]:
    """report.json (flows.report's builder) and its PNG plots in the run folder."""
    from flows.report_json import build_report, write_report

    start = time.perf_counter()
    report = build_report(coll, result, extra_timings)
    report["timings"]["report"] = 0.0
    urls = write_report(report, _run_url(coll, result.run_id), coll.storage_options)
    report["timings"]["report"] = round(time.perf_counter() - start, 3)
    _write_text(urls["report"], json.dumps(report, indent=1), coll.storage_options)
    return report, urls


def _write_html(coll, run_id: str, report: dict, sweep: list[dict] | None = None,
                verification: dict | None = None, spectra_top: int = 4) -> str:
    """report.html beside report.json in the folder of *run_id*; returns its URL.

    The folder comes from the checked *run_id*, never from ``report["run_id"]``: a
    report.json edited to name ``../../x`` must not move the output.
    """
    _check_names(run_id=run_id)
    from flows.html_report import group_spectra, have_matplotlib, render_html

    spectra = None
    if have_matplotlib() and spectra_top > 0:
        spectra = group_spectra(coll, report["groups"], top=spectra_top)
    page = render_html(report, spectra=spectra, sweep=sweep, verification=verification)
    url = f"{_run_url(coll, run_id)}/{REPORT_HTML}"
    _write_text(url, page, coll.storage_options)
    if sweep:
        _write_text(f"{_run_url(coll, run_id)}/sweep.json", json.dumps(sweep, indent=1), coll.storage_options)
    return url


def _distributed_result(coll, run_id: str, client, bars: StageBars):
    """Finish (or load) a distributed run and return its DistributedResult."""
    from flows._run import clustering_run, stored_run_params

    return clustering_run(coll, stored_run_params(coll, run_id), run_id, client, bars).result()
