"""Self-contained HTML report of a clustering run, with plots (PNG as base64).

The input is the ``report.json`` dict of :mod:`flows.report` (the stable contract)::

    {collection: {name, blocks, rows, columns, dtype},
     params: {rank, eps, method, order, oversampling, patience},
     groups: [{id, blocks, columns, bound, error, rank}],
     compression_ratio, compression_ratio_adaptive, max_error,
     bytes: {input, compressed}, timings: {stage: seconds}}

The plots are drawn by :mod:`flows.plots` (their names are re-exported here); the
singular-value decay of the largest groups needs the collection: :func:`group_spectra`
computes it from each group's Gram matrix.  matplotlib is optional: without it the page
has every table and a note instead of plots.
Nothing here needs Prefect or Dask.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from typing import Any, Iterable, Sequence

import numpy as np

from pipeline.magnitude import add_scaled_norm2, at_own_shift, own_shift, rescale

from .plots import (  # noqa: F401  (re-exported: this module's names before the plots moved out)
    bounds_png,
    group_sizes_png,
    have_matplotlib,
    spectra_png,
    study_png,
    sweep_png,
)

__all__ = [
    "have_matplotlib",
    "group_spectra",
    "bounds_png",
    "group_sizes_png",
    "spectra_png",
    "sweep_png",
    "study_png",
    "render_html",
    "fmt_bytes",
    "data_uri",
    "honest_numbers",
    "first_blocks",
]

#: Gram matrices up to this many rows are formed (m x m); larger m gathers the group.
_GRAM_MAX_ROWS = 4096
#: Data read at once while accumulating a group's Gram matrix.
_BATCH_BYTES = 32 * 2**20


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def honest_numbers(report: dict) -> dict[str, Any]:
    """The labelled figures every summary shows, from a report.json dict (also old ones).

    ``max_certified_error_compressed``: worst certified rank-r error over groups stored
    compressed (what the guarantee is about); ``raw_blocks`` / ``raw_groups``: blocks and
    groups stored as they are; ``max_error``: the realised error of what is stored (0 for
    raw groups); ``raw_unfit_blocks`` / ``raw_block_errors``: how many single blocks are raw
    because their rank-r error is above eps, and [min, max] of those errors (the other raw
    blocks are raw because that is smaller).
    """
    groups = report["groups"]
    is_raw = [g.get("stored", "raw" if g.get("rank") == 0 else "compressed") == "raw" for g in groups]
    raw = [g for g, r in zip(groups, is_raw) if r]
    packed = [g for g, r in zip(groups, is_raw) if not r]
    eps = report["params"].get("eps")
    # single blocks raw because no rank-r form meets eps (others are raw because that is smaller)
    def size(g: dict) -> int:
        return len(g.get("blocks", ()))

    raw_errors = [g["error"] for g in raw if size(g) == 1 and (eps is None or g["error"] > eps)]
    return {
        "max_certified_error_compressed": max((g["error"] for g in packed), default=0.0),
        "raw_groups": len(raw),
        "raw_blocks": sum(size(g) for g in raw),
        "compressed_groups": len(packed),
        "compressed_blocks": sum(size(g) for g in packed),
        "max_error": report.get("max_error", 0.0),
        "raw_unfit_blocks": len(raw_errors),
        "raw_block_errors": [min(raw_errors), max(raw_errors)] if raw_errors else None,
    }


def first_blocks(group: dict, limit: int) -> str:
    """The group's first block names (indices for reports without names), then '...'."""
    shown = group.get("names") or [str(b) for b in group["blocks"]]
    return ", ".join(map(str, shown[:limit])) + (" ..." if len(group["blocks"]) > limit else "")


# ---- data for the plots ------------------------------------------------------------


def group_spectra(collection: Any, groups: Sequence[dict], top: int = 4, max_columns: int = 2_000_000) -> list[dict]:
    """Squared singular values of the ``top`` largest groups (by columns) of a report.

    Parameters
    ----------
    collection : storage.Collection
    groups : the ``groups`` list of report.json
    top : int
        How many groups (the largest first; groups of one block only if nothing else).
    max_columns : int
        Skip groups wider than this (reading them would take too long for a plot).

    Returns
    -------
    list of dict
        ``{"id", "blocks", "columns", "s2"}`` with ``s2`` descending (float64 ndarray).
    """
    ranked = sorted(groups, key=lambda g: (-(len(g["blocks"]) > 1), -g["columns"], g["id"]))
    out = []
    m = int(collection.rows)
    itemsize = np.dtype(collection.dtype).itemsize
    for g in ranked:
        if len(out) >= top:
            break
        if g["columns"] > max_columns or g["columns"] == 0:
            continue
        members = sorted(int(b) for b in g["blocks"])
        # spectra up to a power of two (magnitude shifts): the plots show relative values
        if m <= _GRAM_MAX_ROWS:
            gram: tuple = (None, 0.0)
            per = max(1, _BATCH_BYTES // max(1, m * itemsize * max(1, g["columns"] // max(1, len(members)))))
            for k in range(0, len(members), per):
                data, _ = collection.blocks(members[k : k + per])
                shift = own_shift(data)
                data = rescale(data, -shift)
                gram = add_scaled_norm2(gram, (shift, data @ data.T))
            s2 = np.clip(np.linalg.eigvalsh(np.zeros((m, m)) + gram[1])[::-1], 0.0, None)
        else:
            if m * g["columns"] * 8 > 512 * 2**20:
                continue
            data, _ = collection.blocks(members)
            s2 = np.linalg.svd(at_own_shift(data), compute_uv=False) ** 2
        out.append({"id": int(g["id"]), "blocks": len(members), "columns": int(g["columns"]), "s2": s2})
    return out


# ---- the page -------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0}table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:150px}.card .v{font-size:1.5em;font-weight:600}
.card .k{color:#666;font-size:.85em}.ok{color:#1a7f37}.bad{color:#c62828}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.note{color:#666;font-size:.9em}code{background:#f4f4f4;padding:0 .3em;border-radius:3px}
"""


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI: the page (or dashboard artifact) carries the
    image itself, since neither can fetch it from the store."""
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{data_uri(png)}">'


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{html.escape(str(c))}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _card(key: str, value: str, cls: str = "") -> str:
    return f'<div class="card"><div class="v {cls}">{html.escape(value)}</div><div class="k">{html.escape(key)}</div></div>'


def render_html(
    report: dict,
    *,
    spectra: list[dict] | None = None,
    sweep: Sequence[dict] | None = None,
    verification: dict | None = None,
    title: str | None = None,
) -> str:
    """The HTML page of a report (a single self-contained string).

    Parameters
    ----------
    report : dict
        report.json.
    spectra : list of dict, optional
        From :func:`group_spectra`.
    sweep : list of dict, optional
        Rows ``{eps, groups, compression_ratio, compression_ratio_adaptive, max_error}``.
    verification : dict, optional
        Output of ``cmsvd verify`` (shown as a section when given).
    """
    c, p, b = report["collection"], report["params"], report["bytes"]
    groups = report["groups"]
    eps = p.get("eps")
    honest = honest_numbers(report)
    worst = honest["max_certified_error_compressed"]
    multi = [g for g in groups if len(g["blocks"]) > 1]
    ok = all(g["error"] <= eps for g in multi) if eps is not None else True
    base = report.get("baseline") or {}
    title = title or f"cmsvd report: {c['name']}"
    r = p.get("rank")
    raw_errs = honest["raw_block_errors"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='sub'>run <code>{html.escape(str(report.get('run_id', '')))}</code>"
        f" &middot; {c['blocks']} blocks, {c['rows']} x {c['columns']} {html.escape(c['dtype'])}"
        f" &middot; rank {p.get('rank')}, eps {p.get('eps')}, method {html.escape(str(p.get('method')))},"
        f" order {html.escape(str(p.get('order')))} &middot; written"
        f" {html.escape(str(report.get('created') or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')))}</p>",
        "<div class='cards'>",
        _card("groups", f"{len(groups)}"),
        _card(f"compression ratio (rank {r})", f"{report['compression_ratio']:.2f}x"),
        _card("compression ratio (adaptive ranks)", f"{report['compression_ratio_adaptive']:.2f}x"),
        *([_card("baseline: per-block truncated SVD at eps", f"{base['compression_ratio']:.2f}x")] if "compression_ratio" in base else []),
        _card(f"worst certified error, groups stored compressed (rank-{r}, certified bases)", f"{worst:.4g}", "ok" if ok else "bad"),
        _card("blocks stored raw (as they are, error 0)", f"{honest['raw_blocks']} of {c['blocks']}"),
        _card("worst realised error of what is stored", f"{report['max_error']:.4g}"),
        _card("bytes on disk", f"{fmt_bytes(b['input'])} → {fmt_bytes(b['compressed'])}"),
        _card("total seconds", f"{sum(report['timings'].values()):.1f}"),
        "</div>",
        f"<p>Every group of two or more blocks has a certified rank-{p.get('rank')} relative error (at least its "
        "exact one) "
        f"{'<b class=ok>at or below</b>' if ok else '<b class=bad>ABOVE</b>'} eps = {eps}. "
        f"Largest realised error of what the artifact stores: {report['max_error']:.4g}. "
        f"{len(groups) - len(multi)} single blocks; {honest['raw_blocks']} blocks in {honest['raw_groups']} groups are "
        "stored as they are (a raw group stores no approximation: its error is 0)"
        + (f"; {honest['raw_unfit_blocks']} of them are single blocks whose own rank-{r} errors, {raw_errs[0]:.3g} to "
           f"{raw_errs[1]:.3g}, are above eps (no rank-{r} form fits them); the others are raw because that is smaller"
           if raw_errs else "") + ".</p>",
    ]
    if "compression_ratio" in base:
        parts.append(f"<p class='note'>Baseline: each block compressed on its own by a truncated SVD at its own "
                     f"smallest rank meeting eps = {base.get('eps')} (raw when that is not smaller; "
                     f"{base['raw_blocks']} blocks raw, median rank {base['median_rank']:g}): "
                     f"{base['compression_ratio']:.3f}x, against cmsvd's {report['compression_ratio_adaptive']:.3f}x "
                     "with per-group ranks.</p>")
    if report.get("passthrough"):
        pt = report["passthrough"]
        parts.append(f"<p class='note'>{pt['items']} source items ({fmt_bytes(pt['bytes'])}) were not cut into blocks "
                     "at ingest (1-D biases and norms, integer tensors...): they are kept as they are, in the "
                     "collection and in the artifact, and counted in both byte totals.</p>")
    if verification is not None:
        v_ok = verification.get("ok")
        parts += [
            "<h2>Verification</h2>",
            f"<p class='{'ok' if v_ok else 'bad'}'>{'passed' if v_ok else 'FAILED'}: hashes "
            f"{'match' if verification.get('hashes_ok') else 'do not match'}; worst recomputed error "
            f"{verification.get('max_error', float('nan')):.4g} (eps {verification.get('eps')}), "
            f"{verification.get('violations', 0)} violation(s).</p>",
        ]
    plots_ok = have_matplotlib()
    parts.append("<h2>Certified bound vs certified error</h2>")
    if plots_ok:
        parts.append(_img(bounds_png(report), "bound vs certified error"))
        parts.append(
            "<p class='note'>One point per group: the bound (x) is what the clustering certified while it "
            "grew the group; the certified error (y) is that of the group's certified basis on its data: the exact "
            "rank-r error (from the group's Gram) or an upper bound on it (Rayleigh-Ritz on the group's sketch, "
            "never above the bound). Valid bounds lie on or "
            "below the diagonal; every group lies below the red line. Groups split at certification have bound 0.</p>"
        )
    else:
        parts.append("<p class='note'>matplotlib is not installed: <code>pip install matplotlib</code> "
                     "for the plots.</p>")
    parts.append("<h2>Group sizes</h2>")
    if plots_ok and groups:
        parts.append(_img(group_sizes_png(report), "group sizes"))
    if spectra:
        parts.append("<h2>Singular-value decay of the largest groups</h2>")
        if plots_ok:
            parts.append(_img(spectra_png(spectra, p.get("rank"), eps), "singular values"))
        rows = []
        rank = int(r or 0)  # not ``r``: the tables below still name the run's rank
        for s in spectra:
            s2 = np.asarray(s["s2"], dtype=float)
            total = float(s2.sum()) or 1.0
            err_r = math.sqrt(max(0.0, float(s2[rank:].sum()) / total)) if rank else float("nan")
            tails = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])
            r_c = int(np.flatnonzero(tails <= (eps or 0) ** 2 * total)[0]) if eps is not None else 0
            rows.append((s["id"], s["blocks"], s["columns"], f"{err_r:.4g}", r_c))
        parts.append(_table(["group", "blocks", "columns", f"error at r={p.get('rank')}", "smallest rank meeting eps"], rows))
    if sweep:
        parts.append("<h2>Compression ratio against eps</h2>")
        if plots_ok:
            parts.append(_img(sweep_png(sweep, eps, run_point=report), "compression ratio against eps"))
        parts.append(_table(
            ["eps", "groups", f"CR (rank {r})", "CR (adaptive)", "blocks stored raw", "worst certified error (compressed groups)", ""],
            [(f"{row['eps']:g}", row["groups"], f"{row['compression_ratio']:.3f}", f"{row['compression_ratio_adaptive']:.3f}",
              row.get("raw_blocks", ""), f"{row.get('max_certified_error_compressed', row.get('max_error', 0.0)):.4g}",
              "this run" if eps is not None and abs(row["eps"] - eps) <= 1e-12 else "")
             for row in sorted(sweep, key=lambda row: row["eps"])],
        ))
        parts.append("<p class='note'>Each row is what a run at that eps stores: the same run id, groups and "
                     "storage plan as <code>cmsvd cluster --eps E</code> with this run's other parameters.</p>")
    parts.append("<h2>Largest groups</h2>")
    biggest = sorted(groups, key=lambda g: (-g["columns"], g["id"]))[:25]
    parts.append(_table(
        ["group", "blocks", "columns", "stored rank (0: raw)", "bound", f"certified rank-{r} error", "stored error", "first blocks"],
        [(g["id"], len(g["blocks"]), g["columns"], g["rank"], f"{g['bound']:.4g}", f"{g['error']:.4g}",
          f"{g.get('stored_error', float('nan')):.4g}", first_blocks(g, 10)) for g in biggest],
    ))
    parts.append("<h2>Time per stage</h2>")
    total = sum(report["timings"].values()) or 1.0
    parts.append(_table(["stage", "seconds", "share"],
                        [(k, f"{v:.2f}", f"{100 * v / total:.0f}%") for k, v in report["timings"].items()]))
    parts.append("<h2>Parameters and collection</h2>")
    parts.append(_table(["parameter", "value"], [(k, v) for k, v in p.items()]))
    parts.append(_table(["collection", "value"], [(k, v) for k, v in c.items()]
                        + [("bytes in", fmt_bytes(b["input"])), ("bytes out", fmt_bytes(b["compressed"])),
                           ("artifact", report.get("artifact_label", ""))]))
    parts.append("<p class='note'>Machine-readable: <code>report.json</code> beside this page. "
                 "Generated by cmsvd.</p><script type='application/json' id='report-summary'>"
                 + html.escape(json.dumps({k: report[k] for k in ("compression_ratio", "compression_ratio_adaptive", "max_error")}))
                 + "</script></body></html>")
    return "\n".join(parts)
