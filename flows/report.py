"""Run reports: ``report.json`` (+ plots) in the run folder, and the Prefect artifacts
the dashboard shows for a run.

``report.json`` is a stable contract for other programs::

    {collection: {name, blocks, rows, columns, dtype},
     params: {rank, eps, method, order, oversampling, patience},
     groups: [{id, blocks: [...], columns, bound, error, rank}],
     compression_ratio, compression_ratio_adaptive, max_error,
     bytes: {input, compressed}, timings: {stage: seconds}}

Keys may be added (``run_id``, ``artifact_label``, ``schema``, per group
``stored_error``...), never removed or renamed.  ``error`` is the certified exact
rank-r relative error of the group, ``bound`` the sketch bound it was formed under,
``rank`` the rank the artifact stores it at (its adaptive rank r_C; 0: stored as it
is), ``max_error`` the largest realised error of what the artifact stores (0 for raw
groups).  Added keys: per group ``adaptive_rank`` (r_C from the exact spectrum, also for
raw groups), ``stored`` ("compressed" or "raw"), ``stored_error``, ``names`` (the first
block names); ``max_certified_error_compressed`` (worst ``error`` over groups stored
compressed), ``raw_blocks``/``raw_groups``/``compressed_blocks``/``compressed_groups``,
``raw_unfit_blocks``/``raw_block_errors`` (single blocks raw because their rank-r error
is above eps, and [min, max] of those errors),
``baseline`` (per-block truncated SVD at eps, :func:`per_block_baseline`),
``passthrough`` (source items kept as they are: count and bytes).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import time
from typing import Any

import numpy as np
from prefect import flow, task

from ._common import (
    TASK_OPTIONS,
    BrowserLink,
    StageProgress,
    artifact_key,
    browser_link,
    local_path,
    write_bytes,
)
from .html_report import data_uri, first_blocks, honest_numbers
from .params import RunParameters, validate_params

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

REPORT_FILE = "report.json"
PLOT_FILES = ("plots/errors.png", "plots/group_sizes.png")
_PARAM_KEYS = ("rank", "eps", "method", "order", "oversampling", "patience")
log = logging.getLogger(__name__)


# ---- report.json ---------------------------------------------------------------------


def _float(x: Any) -> float:
    return float(np.asarray(x, dtype=np.float64))


#: The per-block baseline reads the whole collection once; above this many bytes of data
#: it is skipped (``baseline: {"skipped": reason}``).
BASELINE_MAX_BYTES = 2 * 2**30
_BASELINE_READ_BYTES = 64 * 2**20


def per_block_baseline(collection: Any, eps: float, max_bytes: int | None = None) -> dict[str, Any]:
    """What a user gets without cmsvd: every block compressed on its own by a truncated SVD
    at its own smallest rank meeting *eps* (stored raw when that is not smaller).

    Returns
    -------
    dict
        ``{"method", "eps", "compression_ratio", "raw_blocks", "median_rank"}``, or
        ``{"method", "eps", "skipped": reason}`` for a collection above *max_bytes*.
    """
    from pipeline.layout import column_index
    from pipeline.magnitude import block_shifts, scale_blocks
    from pipeline.metrics import adaptive_compression_ratio
    from pipeline.spectra import stacked_adaptive_ranks, stacked_squared_singular_values

    limit = BASELINE_MAX_BYTES if max_bytes is None else int(max_bytes)
    base = {"method": "per-block truncated SVD at its own smallest rank meeting eps", "eps": float(eps)}
    if collection.nbytes > limit:
        return {**base, "skipped": f"collection data above {limit} bytes"}
    m, k = int(collection.rows), int(collection.n_blocks)
    offsets, widths = np.asarray(collection.offsets), np.asarray(collection.widths)
    ranks = np.zeros(k, dtype=np.int64)
    for first, stop in collection.batches(_BASELINE_READ_BYTES):
        local = offsets[first : stop + 1] - offsets[first]
        data = collection.column_range(int(offsets[first]), int(offsets[stop]))
        # each block at its magnitude shift (s^2 of 1e-200 or 1e300 entries would under-/overflow),
        # and one batched spectrum per block width instead of a loop over blocks
        data = scale_blocks(data, local, block_shifts(data, local))
        batch_widths = widths[first:stop]
        for width in np.unique(batch_widths):
            same = np.flatnonzero(batch_widths == width)
            stack = data[:, column_index(local, same)].reshape(m, len(same), int(width)).transpose(1, 0, 2)
            ranks[first + same] = stacked_adaptive_ranks(stacked_squared_singular_values(stack), eps)
    raw = ranks * (m + widths) >= m * widths
    stored = np.where(raw, m, ranks)  # params(C) = min(r (m + n), m n): rank m is "raw"
    return {**base, "compression_ratio": adaptive_compression_ratio(collection, [[i] for i in range(k)], stored),
            "raw_blocks": int(raw.sum()), "median_rank": float(np.median(ranks)) if k else 0.0}


def _stored_ranks(collection: Any, result: Any) -> tuple[np.ndarray, np.ndarray]:
    """(stored rank, stored raw?) per group, from the artifact (0 and True for raw groups)."""
    import storage

    art = storage.open_artifact(collection.url, collection.name, result.artifact_label,
                                storage_options=collection.storage_options)
    kinds = np.asarray(art.kinds)
    return np.where(kinds == 1, 0, np.asarray(art.ranks)).astype(np.int64), kinds == 1


def build_report(collection: Any, result: Any, timings: dict[str, float] | None = None,
                 baseline: bool = True) -> dict[str, Any]:
    """The report dict (see the module docstring) from a ``DistributedResult``.

    Parameters
    ----------
    collection : storage.Collection
    result : pipeline.distributed.DistributedResult
    timings : dict, optional
        Extra stage timings measured by the flow (e.g. ``report``), added to the
        pipeline's.
    baseline : bool
        Add ``baseline`` (:func:`per_block_baseline`; reads the collection once).
    """
    widths = np.asarray(collection.widths)
    names = list(collection.names)
    stored = np.asarray(getattr(result, "stored_errors", result.errors))
    stored_ranks, raw = _stored_ranks(collection, result)
    groups = [
        {
            "id": g,
            "blocks": [int(b) for b in members],
            "columns": int(widths[list(members)].sum()) if len(members) else 0,
            "bound": _float(result.bounds[g]),
            "error": _float(result.errors[g]),
            "rank": int(stored_ranks[g]),
            "adaptive_rank": int(result.ranks[g]),
            "stored": "raw" if raw[g] else "compressed",
            "stored_error": _float(stored[g]),
            "names": [names[b] for b in list(members)[:_NAMES_PER_GROUP]],
        }
        for g, members in enumerate(result.groups)
    ]
    all_timings = {k: float(v) for k, v in result.timings.items()}
    all_timings.update({k: float(v) for k, v in (timings or {}).items()})
    report = {
        "schema": 1,
        "run_id": result.run_id,
        "artifact_label": result.artifact_label,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "collection": {
            "name": collection.name,
            "blocks": int(collection.n_blocks),
            "rows": int(collection.rows),
            "columns": int(collection.n_columns),
            "dtype": str(collection.dtype),
        },
        "params": {k: result.params[k] for k in _PARAM_KEYS if k in result.params},
        "groups": groups,
        "compression_ratio": float(result.compression_ratio),
        "compression_ratio_adaptive": float(result.compression_ratio_adaptive),
        "max_error": float(result.max_error),
        "bytes": {"input": int(result.bytes_input), "compressed": int(result.bytes_compressed)},
        "timings": all_timings,
    }
    if collection.passthrough_entries:
        report["passthrough"] = {"items": len(collection.passthrough_entries),
                                 "bytes": int(sum(int(e.get("nbytes", 0)) for e in collection.passthrough_entries))}
    report.update(honest_numbers(report))
    if baseline and "eps" in result.params:
        report["baseline"] = per_block_baseline(collection, float(result.params["eps"]))
    return report


#: Block names listed per group in report.json (the first ones, in group order).
_NAMES_PER_GROUP = 8


def _plots(report: dict) -> dict[str, bytes]:
    """PNG plots of a report; empty when matplotlib is not installed (it is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no plots")
        return {}
    eps = report["params"].get("eps")
    groups = report["groups"]
    out = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([g["bound"] for g in groups], [g["error"] for g in groups], s=8)
    if eps is not None:
        ax.axhline(eps, color="red", lw=1, label=f"eps = {eps}")
        ax.axvline(eps, color="red", lw=1, ls=":")
        ax.legend()
    ax.set_xlabel("certified sketch bound")
    ax.set_ylabel("exact rank-r error")
    ax.set_title("Groups: bound vs exact error")
    out[PLOT_FILES[0]] = _png(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist([len(g["blocks"]) for g in groups], bins=min(50, max(1, len(groups))))
    ax.set_xlabel("blocks per group")
    ax.set_ylabel("groups")
    ax.set_title(f"{len(groups)} groups")
    out[PLOT_FILES[1]] = _png(fig)
    plt.close("all")
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_report(
    report: dict, run_url: str, storage_options: dict | None = None, plots: dict[str, bytes] | None = None
) -> dict[str, str]:
    """Write plots, then ``report.json`` (last, so its presence means complete).

    Parameters
    ----------
    plots : dict, optional
        ``{relative path: PNG bytes}`` already drawn; default: drawn here.

    Returns
    -------
    dict
        ``{"report": url, "plots/...png": url, ...}``.
    """
    urls = {}
    for rel, data in (_plots(report) if plots is None else plots).items():
        urls[rel] = f"{run_url}/{rel}"
        write_bytes(urls[rel], data, storage_options)
    urls["report"] = f"{run_url}/{REPORT_FILE}"
    write_bytes(urls["report"], json.dumps(report, indent=1).encode(), storage_options)
    return urls


# ---- Prefect artifacts -----------------------------------------------------------------


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


#: Most PNG bytes embedded in the summary artifact (as data URIs); beyond, only links.
_EMBED_MAX_BYTES = 2 * 2**20
_PLOT_TITLES = {PLOT_FILES[0]: "Certified bound against exact error, per group", PLOT_FILES[1]: "Group sizes"}


def _until(link: BrowserLink) -> str:
    return f" (link valid until {link.expires:%Y-%m-%d %H:%M} UTC)" if link.expires else ""


def _files_markdown(urls: dict[str, str], links: dict[str, BrowserLink | None], report: dict) -> list[str]:
    """Links a browser opens where there are some, and always the stored paths to copy."""
    lines = ["## Files", ""]
    for rel, url in urls.items():
        name = REPORT_FILE if rel == "report" else rel
        link = links.get(rel)
        opened = f"[{name}]({link.url}){_until(link)}, stored at " if link else f"{name}: "
        lines.append(f"- {opened}`{local_path(url)}`")
    if not any(links.values()):
        lines += ["", "Browsers do not open local files from the dashboard: copy the path, or run "
                  f"`cmsvd report {report['collection']['name']} --run-id {report['run_id']}` where the store is "
                  "for a self-contained report.html."]
    return lines


def summary_markdown(
    report: dict,
    urls: dict[str, str],
    links: dict[str, BrowserLink | None] | None = None,
    plots: dict[str, bytes] | None = None,
) -> str:
    """Markdown summary of a run for the dashboard.

    Parameters
    ----------
    report : dict
        The report.json dict.
    urls : dict
        ``{"report": url, "plots/...png": url}`` as returned by :func:`write_report`.
    links : dict, optional
        Browser links of the same files (:func:`flows._common.browser_link`); files
        without one are listed by path only.
    plots : dict, optional
        PNG bytes to embed as data URIs (the dashboard cannot fetch them from the store).
    """
    c, p, b = report["collection"], report["params"], report["bytes"]
    bounds = [g["bound"] for g in report["groups"]]
    ratio = b["input"] / max(1, b["compressed"])
    honest = honest_numbers(report)
    base = report.get("baseline") or {}
    lines = [
        f"# cmsvd run `{report['run_id']}` on `{c['name']}`",
        "",
        f"{c['blocks']} blocks, {c['rows']} x {c['columns']} {c['dtype']}; "
        f"rank {p.get('rank')}, eps {p.get('eps')}, method {p.get('method')}, order {p.get('order')}.",
        "",
        "| | |",
        "|---|---|",
        f"| groups | {len(report['groups'])} |",
        f"| compression ratio (rank {p.get('rank')}) | {report['compression_ratio']:.3f} |",
        f"| compression ratio (adaptive ranks) | {report['compression_ratio_adaptive']:.3f} |",
        *([f"| baseline: per-block truncated SVD at eps | {base['compression_ratio']:.3f} |"] if "compression_ratio" in base else []),
        f"| worst certified error (exact rank-{p.get('rank')}, groups stored compressed) | {honest['max_certified_error_compressed']:.4g} |",
        f"| blocks stored raw (as they are, error 0) | {honest['raw_blocks']} of {c['blocks']} |",
        f"| worst sketch bound | {max(bounds, default=0.0):.4g} |",
        f"| worst stored error (realised, what the artifact stores) | {report['max_error']:.4g} |",
        f"| bytes in | {_fmt_bytes(b['input'])} |",
        f"| bytes out | {_fmt_bytes(b['compressed'])} ({ratio:.2f}x smaller) |",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in report["timings"].items()],
        "",
    ]
    plots = plots or {}
    if plots and sum(map(len, plots.values())) <= _EMBED_MAX_BYTES:
        lines += ["## Plots", ""]
        lines += [f"![{_PLOT_TITLES.get(rel, rel)}]({data_uri(png)})\n" for rel, png in plots.items()]
    lines += _files_markdown(urls, links or {}, report)
    return "\n".join(lines) + "\n"


def largest_groups_table(report: dict, limit: int = 20) -> list[dict[str, Any]]:
    """Rows of the largest groups (by columns) for a table artifact."""
    groups = sorted(report["groups"], key=lambda g: (-g["columns"], g["id"]))[:limit]
    return [
        {
            "group": g["id"],
            "blocks": len(g["blocks"]),
            "columns": g["columns"],
            "rank": g["rank"],
            "stored": g.get("stored", ""),
            "bound": round(g["bound"], 6),
            "error": round(g["error"], 6),
            "first blocks": first_blocks(g, 8),
        }
        for g in groups
    ]


def publish_report_artifacts(
    report: dict,
    urls: dict[str, str],
    key_prefix: str,
    storage_options: dict | None = None,
    plots: dict[str, bytes] | None = None,
) -> BrowserLink | None:
    """Markdown summary (plots embedded), table of the largest groups, and the report link.

    The ``<key_prefix>-report`` artifact is a link artifact when the store gives a
    browser link (S3: presigned through the endpoint, valid for a stated time), else a
    markdown artifact with the path to copy: a file:// or s3:// link does not open.

    Returns
    -------
    BrowserLink or None
        The report's browser link, if any.
    """
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    run_id = report["run_id"]
    links = {rel: browser_link(url, storage_options) for rel, url in urls.items()}
    create_markdown_artifact(
        summary_markdown(report, urls, links, plots), key=f"{key_prefix}-summary", description=f"cmsvd run {run_id}"
    )
    create_table_artifact(
        largest_groups_table(report), key=f"{key_prefix}-groups", description=f"Largest groups of run {run_id}"
    )
    link = links.get("report")
    if link is not None:
        create_link_artifact(
            link.url,
            link_text=f"report.json of run {run_id}{_until(link)}",
            key=f"{key_prefix}-report",
            description=f"Stored report of run {run_id}{_until(link)}; stored at {local_path(urls['report'])}",
        )
    else:
        create_markdown_artifact(
            "\n".join(_files_markdown(urls, links, report)) + "\n",
            key=f"{key_prefix}-report",
            description=f"Stored report of run {run_id} (path to copy)",
        )
    return link


# ---- the report stage and the stand-alone report flow ---------------------------------


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
    plots = _plots(report)
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
    }


@task(name="report", **TASK_OPTIONS)
def report_task(collection: Any, result: Any, key_prefix: str) -> dict[str, Any]:
    """Write report.json and plots into the run folder; publish the dashboard artifacts."""
    return report_stage(collection, result, key_prefix)


@flow(
    name="cmsvd-report",
    description="Rewrite report.json, plots and dashboard artifacts of a finished run.",
    log_prints=True,
    validate_parameters=False,
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
    run = clustering_run(collection, run_kwargs, params.run_id, None, progress)
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
