"""``cmsvd report`` (with its eps sweep) and ``cmsvd study`` (the error-estimation study)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ._app import EXIT_FAILED, EXIT_MISSING, CLIError, _command
from ._output import StageBars, _err, _esc, _out, _print_json, _print_summary, _summary_from_report
from ._sequential import _load_in_memory, _sequential_result
from ._store import (REPORT_HTML, CollectionArg, JsonOpt, RunIdOpt, SchedulerOpt, StoreOpt, _check_names, _DaskClient, _open_collection,
                     _parse_floats, _parse_sizes, _read_report, _resolve_run_id, _run_record, _run_url, _spec_option,
                     _write_html, _write_run_report)


def sweep_point(coll, run) -> dict:
    """The figures a run reports, computed the way its result computes them.

    A run whose artifact is written gives its result's own figures; otherwise the
    certified groups go through the run's own storage plan (the one ``compress`` writes:
    per group the adaptive rank or raw), so the point equals what finishing that run
    reports, without writing an artifact.
    """
    import numpy as np
    import storage
    from pipeline.distributed.plan import unpack_groups
    from pipeline.metrics import adaptive_compression_ratio, compression_ratio

    certified = run.certify()
    groups = unpack_groups(certified["members"], certified["group_offsets"])
    errors = np.asarray(certified["errors"], dtype=np.float64)
    if run.run.is_complete("compress"):
        result = run.result()
        groups, errors = result.groups, np.asarray(result.errors)
        art = storage.open_artifact(coll.url, coll.name, result.artifact_label, storage_options=coll.storage_options)
        raw = np.asarray(art.kinds) == 1
        ratio, adaptive = result.compression_ratio, result.compression_ratio_adaptive
    else:
        groups, stored = run.stored_ranks(certified)  # the plan compress would write
        raw = stored == 0
        ratio = compression_ratio(coll, groups, int(run.params["rank"]))
        adaptive = adaptive_compression_ratio(coll, groups, stored + np.where(stored == 0, coll.rows, 0))
    return {
        "eps": float(run.params["eps"]),
        "run_id": run.run_id,
        "groups": len(groups),
        "compression_ratio": float(ratio),
        "compression_ratio_adaptive": float(adaptive),
        "raw_blocks": int(sum(len(groups[g]) for g in np.flatnonzero(raw))),
        "max_certified_error_compressed": float(errors[~raw].max(initial=0.0)) if len(groups) else 0.0,
        # kept for older readers: worst exact error over groups of two or more blocks
        "max_error": float(max((errors[g] for g in range(len(groups)) if len(groups[g]) > 1), default=0.0)),
    }


def _sweep(coll, params: dict, eps_values: list[float], client, bars: StageBars) -> list[dict]:
    """The run at every other eps (same parameters otherwise, the run id ``cmsvd cluster``
    would derive): one :func:`sweep_point` each (scan..certify, no artifact)."""
    from flows._run import default_run_id
    from pipeline.distributed import ClusteringRun

    rows = []
    for eps in eps_values:
        kwargs = {**params, "eps": float(eps)}
        run_id = default_run_id(coll, kwargs)  # normalised: the id `cmsvd cluster --eps E` derives
        run = ClusteringRun(coll, **kwargs, client=client, run_id=run_id,
                            progress=lambda stage, done, total, e=eps: bars(f"eps={e:g} {stage}"[:24], done, total))
        rows.append(sweep_point(coll, run))
        run.prune()
    return rows


@_command("report")
def report_cmd(
    collection: str = CollectionArg,
    run_id: Optional[str] = RunIdOpt,
    store: str = StoreOpt,
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Comma-separated eps values: also plot compression ratio against eps (runs a clustering per value)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also copy report.json and report.html into this folder."),
    scheduler: Optional[str] = SchedulerOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Write report.json (if missing) and report.html of a run; --json prints report.json."""
    sweep_eps = _parse_floats(sweep, "'--sweep'")
    _check_names(collection_name=collection, run_id=run_id)
    coll = _open_collection(store, collection)
    run_id = _resolve_run_id(coll, run_id)
    record = _run_record(coll, run_id)
    sequential = record.get("params", {}).get("mode") == "sequential"
    if sweep_eps and sequential:  # refused up front, whether or not report.json exists yet
        raise CLIError("--sweep needs a distributed run (sequential runs keep the collection in memory)")
    report = _read_report(coll, run_id)
    if report is not None and report.get("run_id") != run_id:
        from storage import short_repr

        # the folder names the run; an edited report.json must not redirect any output
        _err().print(_esc(f"warning: report.json of run {run_id} names run {short_repr(report.get('run_id'))}: "
                          f"using {run_id}"))
        report = {**report, "run_id": run_id}
    if report is not None and "max_certified_error_compressed" not in report:
        report = None  # written by an older cmsvd (rank of raw groups, unlabelled errors): rebuild it
    bars = StageBars(quiet=as_json)
    sweep_rows = None
    if report is None or sweep_eps:
        if sequential:
            import storage

            run = storage.open_run(coll.url, coll.name, run_id, record["params"], coll.fingerprint(), storage_options=coll.storage_options)
            if not run.is_complete("compress"):
                raise CLIError(f"run {run_id!r} is not compressed yet: cmsvd compress {collection} --run-id {run_id}", EXIT_MISSING)
            report, _ = _write_run_report(coll, _sequential_result(coll, run))
        else:
            from flows._run import clustering_run, stored_run_params

            with bars, _DaskClient(scheduler) as client:
                if report is None:
                    run = clustering_run(coll, stored_run_params(coll, run_id), run_id, client, bars)
                    if not run.run.is_complete("compress"):
                        raise CLIError(f"run {run_id!r} is not compressed yet: cmsvd compress {collection} --run-id {run_id}", EXIT_MISSING)
                    report, _ = _write_run_report(coll, run.result())
                if sweep_eps:
                    sweep_rows = _sweep(coll, stored_run_params(coll, run_id), sweep_eps, client, bars)
                    sweep_rows = _with_run_point(sweep_rows, report)
    html_url = _write_html(coll, run_id, report, sweep=sweep_rows)
    json_url = f"{_run_url(coll, run_id)}/report.json"
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "report.json").write_text(json.dumps(report, indent=1))
        import storage

        (output / REPORT_HTML).write_bytes(storage.read_run_bytes(coll, run_id, REPORT_HTML))
        json_url, html_url = str(output / "report.json"), str(output / REPORT_HTML)
    if as_json:
        _print_json(report)
        return
    summary = _summary_from_report(report, {"report.json": json_url, "report.html": html_url})
    _print_summary(summary, f"cmsvd report {collection}")


def _with_run_point(rows: list[dict], report: dict) -> list[dict]:
    """The sweep rows plus the run's own point (from its report.json) when no row has its eps."""
    from flows.html_report import honest_numbers

    eps = report["params"].get("eps")
    if eps is None or any(abs(r["eps"] - eps) <= 1e-12 for r in rows):
        return rows
    honest = honest_numbers(report)
    multi = [g["error"] for g in report["groups"] if len(g["blocks"]) > 1]
    return rows + [{"eps": float(eps), "run_id": report.get("run_id"), "groups": len(report["groups"]),
                    "compression_ratio": report["compression_ratio"],
                    "compression_ratio_adaptive": report["compression_ratio_adaptive"],
                    "raw_blocks": honest["raw_blocks"],
                    "max_certified_error_compressed": honest["max_certified_error_compressed"],
                    "max_error": max(multi, default=0.0)}]


@_command("study")
def study_cmd(
    collection: str = CollectionArg,
    store: str = StoreOpt,
    rank: int = _spec_option("rank", "--rank", "-r"),
    sizes: str = typer.Option("2:20:3", "--sizes", help="Group sizes: start:stop[:step] (stop included) or a comma list."),
    trials: int = typer.Option(5, "--trials", min=1, help="Random groups per size."),
    oversampling: int = _spec_option("oversampling", "--oversampling"),
    seed: int = typer.Option(0, "--seed", min=0),
    output: Path = typer.Option(Path("study.csv"), "--output", "-o", help="CSV file (one row per random group)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG plot (default: the CSV path with .png)."),
    max_memory_gib: float = typer.Option(2.0, "--max-memory-gib"),
    as_json: bool = JsonOpt,
) -> None:
    """The paper's error-estimation study: every certified bound against the exact error."""
    import csv

    from pipeline.study import STUDY_COLUMNS, error_estimation_study

    size_list = _parse_sizes(sizes)
    _check_names(collection_name=collection)
    coll = _open_collection(store, collection)
    if max(size_list) > coll.n_blocks:
        raise CLIError(f"group size {max(size_list)} exceeds the {coll.n_blocks} blocks of {collection!r}")
    bars = StageBars(quiet=as_json)
    with bars:
        bars("load", 0, 1)
        layout = _load_in_memory(coll, max_memory_gib, "the study")
        bars("load", 1, 1)
        rows = []
        for k, size in enumerate(size_list):
            rows += error_estimation_study(layout, rank=rank, sizes=[size], trials=trials, oversampling=oversampling,
                                           seed=seed + k)
            bars("study", k + 1, len(size_list))
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(STUDY_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    plot_path = None
    from flows.html_report import have_matplotlib, study_png

    if have_matplotlib():
        plot_path = plot or output.with_suffix(".png")
        plot_path.write_bytes(study_png(rows, rank))
    bound_cols = [c for c in STUDY_COLUMNS if c not in ("size", "trial", "exact")]
    violations = {c: sum(1 for r in rows if r[c] < r["exact"] - 1e-9) for c in bound_cols}
    summary = {"collection": collection, "rank": rank, "sizes": size_list, "trials": trials, "rows": len(rows),
               "csv": str(output), "plot": str(plot_path) if plot_path else None,
               "mean_gap": {c: float(sum(r[c] - r["exact"] for r in rows) / len(rows)) for c in bound_cols},
               "violations": violations}
    if as_json:
        _print_json(summary)
    else:
        from rich.table import Table

        table = Table(title=_esc(f"bound - exact error, {len(rows)} random groups of {collection} (r = {rank})"), title_justify="left")
        table.add_column("bound")
        table.add_column("mean gap", justify="right")
        table.add_column("bound < exact", justify="right")
        for c in bound_cols:
            table.add_row(_esc(c), f"{summary['mean_gap'][c]:.4g}", str(violations[c]))
        _out().print(table)
        _out().print(f"CSV: {output}" + (f"   plot: {plot_path}" if plot_path else "   (no plot: matplotlib is not installed)"),
                     markup=False)
    if any(violations.values()):
        sys.stderr.write("error: a certified bound was below the exact error\n")
        raise typer.Exit(EXIT_FAILED)
