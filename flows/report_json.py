"""``report.json`` of a clustering run, and its plots, written in the run folder.

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
import json
import logging
from typing import Any

import numpy as np

from ._common import write_bytes
from .html_report import honest_numbers
from .plots import PLOT_FILES, report_plots

__all__ = ["REPORT_FILE", "PLOT_FILES", "build_report", "per_block_baseline", "write_report"]

REPORT_FILE = "report.json"
_PARAM_KEYS = ("rank", "eps", "method", "order", "oversampling", "patience")
log = logging.getLogger("flows.report")  # the logger report.json's writer always used


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
    lineage = getattr(result, "lineage", None)
    if lineage:  # an incremental run (or the full run that replaced one): what it built on and changed
        report["lineage"] = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in lineage.items()}
    if collection.passthrough_entries:
        report["passthrough"] = {"items": len(collection.passthrough_entries),
                                 "bytes": int(sum(int(e.get("nbytes", 0)) for e in collection.passthrough_entries))}
    report.update(honest_numbers(report))
    if baseline and "eps" in result.params:
        report["baseline"] = per_block_baseline(collection, float(result.params["eps"]))
    return report


#: Block names listed per group in report.json (the first ones, in group order).
_NAMES_PER_GROUP = 8


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
    for rel, data in (report_plots(report) if plots is None else plots).items():
        urls[rel] = f"{run_url}/{rel}"
        write_bytes(urls[rel], data, storage_options)
    urls["report"] = f"{run_url}/{REPORT_FILE}"
    write_bytes(urls["report"], json.dumps(report, indent=1).encode(), storage_options)
    return urls
