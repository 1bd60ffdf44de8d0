"""The Prefect artifacts the dashboard shows for a clustering run: a markdown summary
(plots embedded), a table of the largest groups, and a link to (or the path of) its
report.json.
"""

from __future__ import annotations

from typing import Any

from ._common import BrowserLink, browser_link, local_path
from .html_report import data_uri, first_blocks, fmt_bytes, honest_numbers
from .plots import PLOT_FILES
from .report_json import REPORT_FILE

__all__ = ["summary_markdown", "largest_groups_table", "publish_report_artifacts"]


#: Most PNG bytes embedded in the summary artifact (as data URIs); beyond, only links.
_EMBED_MAX_BYTES = 2 * 2**20
_PLOT_TITLES = {PLOT_FILES[0]: "Certified bound against certified error, per group", PLOT_FILES[1]: "Group sizes"}


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
        f"| worst certified error (rank-{p.get('rank')}, certified bases, groups stored compressed) | {honest['max_certified_error_compressed']:.4g} |",
        f"| blocks stored raw (as they are, error 0) | {honest['raw_blocks']} of {c['blocks']} |",
        f"| worst sketch bound | {max(bounds, default=0.0):.4g} |",
        f"| worst stored error (realised, what the artifact stores) | {report['max_error']:.4g} |",
        f"| bytes in | {fmt_bytes(b['input'])} |",
        f"| bytes out | {fmt_bytes(b['compressed'])} ({ratio:.2f}x smaller) |",
        *_lineage_rows(report.get("lineage") or {}),
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


def _lineage_rows(lineage: dict) -> list[str]:
    """Table rows of an incremental run: what it updated, added and saved (none for a full run)."""
    if lineage.get("full_reason"):
        return [f"| full run instead of an update of `{lineage.get('parent_run')}` | {lineage['full_reason']} |"]
    if not lineage.get("parent_run"):
        return []
    return [
        f"| update of run | `{lineage['parent_run']}` (last full run `{lineage['root_run']}`, {lineage['depth']} updates since) |",
        f"| blocks added | {lineage['blocks_added']} ({lineage['absorbed']} joined existing groups) |",
        f"| groups touched / new | {lineage['groups_touched']} / {lineage['new_groups']} |",
        f"| time / saved against the full run | {lineage['seconds']:.1f} s / {lineage['seconds_saved']:.1f} s |",
    ]


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
