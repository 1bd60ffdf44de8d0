"""The plots of a run's reports (matplotlib, Agg, PNG bytes).

- :func:`report_plots`: the PNGs written beside report.json (bound against certified error,
  group sizes);
- for report.html (:mod:`flows.html_report`): certified bound against certified error, one
  point per group (every point must lie left of / below ``eps``, and above the diagonal
  when the bound is valid); group sizes (blocks per group, and share of the columns per
  group size); singular-value decay of the largest groups (from
  :func:`flows.html_report.group_spectra`); compression ratio against eps, when a sweep
  was run;
- for ``cmsvd study``: bounds against the exact error by group size (:func:`study_png`).

matplotlib is optional (:func:`have_matplotlib`); nothing here needs Prefect or Dask.
"""

from __future__ import annotations

import io
import logging
import math
from typing import Sequence

import numpy as np

__all__ = [
    "PLOT_FILES",
    "have_matplotlib",
    "report_plots",
    "bounds_png",
    "group_sizes_png",
    "spectra_png",
    "sweep_png",
    "study_png",
]

log = logging.getLogger("flows.report")  # the logger report.json's writer always used


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig, dpi: int = 110) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def bounds_png(report: dict) -> bytes:
    """Certified sketch bound against the group's certified rank-r error (that of its
    certified basis, measured on its data: the exact error or an upper bound on it), one point
    per group."""
    plt = _pyplot()
    eps = report["params"].get("eps")
    groups = report["groups"]
    bound = np.array([g["bound"] for g in groups], dtype=float)
    error = np.array([g["error"] for g in groups], dtype=float)
    size = np.array([len(g["blocks"]) for g in groups], dtype=float)
    multi = size > 1
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    if multi.any():
        from matplotlib.colors import LogNorm

        lo, hi_size = float(size[multi].min()), float(size[multi].max())
        norm = LogNorm(vmin=lo, vmax=hi_size if hi_size > lo else lo * 1.01)
        sc = ax.scatter(bound[multi], error[multi], c=size[multi], norm=norm, s=14, cmap="viridis", alpha=0.8,
                        label=f"groups of 2+ blocks ({int(multi.sum())})")
        cb = fig.colorbar(sc, ax=ax)
        cb.set_label("blocks in group")
    if (~multi).any():
        ax.scatter(bound[~multi], error[~multi], s=10, marker="x", color="grey", alpha=0.7,
                   label=f"single blocks ({int((~multi).sum())})")
    hi = max(float(np.max(bound, initial=0.0)), float(np.max(error, initial=0.0)), float(eps or 0.0)) * 1.08 or 1.0
    ax.plot([0, hi], [0, hi], color="black", lw=0.8, ls="--", label="error = bound")
    if eps is not None:
        ax.axhline(eps, color="red", lw=1.0, label=f"eps = {eps:g}")
        ax.axvline(eps, color="red", lw=1.0, ls=":")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("certified bound the group was formed under")
    ax.set_ylabel(f"certified relative error at rank {report['params'].get('rank')}")
    ax.set_title("Certified bound vs certified error per group")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def group_sizes_png(report: dict) -> bytes:
    """Histogram of blocks per group, and the share of all columns held by each size class."""
    plt = _pyplot()
    sizes = np.array([len(g["blocks"]) for g in report["groups"]], dtype=np.int64)
    columns = np.array([g["columns"] for g in report["groups"]], dtype=np.int64)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    top = int(sizes.max(initial=1))
    bins = np.unique(np.round(np.logspace(0, math.log10(max(top, 1)) + 1e-9, 30)).astype(int)) if top > 30 else np.arange(1, top + 2)
    if bins.size < 2:
        bins = np.array([1, 2])
    ax1.hist(sizes, bins=bins, color="#4C72B0", edgecolor="white")
    ax1.set_xlabel("blocks per group")
    ax1.set_ylabel("groups")
    ax1.set_title(f"{len(sizes)} groups")
    if top > 30:
        ax1.set_xscale("log")
    order = np.argsort(-columns, kind="stable")
    share = np.cumsum(columns[order]) / max(1, int(columns.sum()))
    ax2.plot(np.arange(1, len(share) + 1), share, color="#DD8452")
    ax2.set_xlabel("groups, largest first")
    ax2.set_ylabel("cumulative share of columns")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("How concentrated the grouping is")
    if len(share) > 50:
        ax2.set_xscale("log")
    return _png(fig)


def spectra_png(spectra: list[dict], rank: int | None, eps: float | None) -> bytes:
    """Normalised singular values s_j / s_1 of the largest groups (log scale)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for entry in spectra:
        s2 = np.asarray(entry["s2"], dtype=float)
        if not s2.size or s2[0] <= 0:
            continue
        k = min(s2.size, max(4 * (rank or 10), 60))
        label = f"group {entry['id']} ({entry['blocks']} blocks, {entry['columns']} cols)"
        ax1.semilogy(np.arange(1, k + 1), np.sqrt(s2[:k] / s2[0]), marker=".", ms=3, label=label)
        tails = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]])[: k + 1]
        err = np.sqrt(np.clip(tails / s2.sum(), 0, None))
        ax2.plot(np.arange(0, k + 1), err, label=label)
    for ax in (ax1, ax2):
        if rank:
            ax.axvline(rank, color="black", lw=0.8, ls="--", label=f"r = {rank}")
    if eps is not None:
        ax2.axhline(eps, color="red", lw=1.0, label=f"eps = {eps:g}")
    ax1.set_xlabel("index j")
    ax1.set_ylabel("s_j / s_1")
    ax1.set_title("Singular-value decay of the largest groups")
    ax2.set_xlabel("rank k")
    ax2.set_ylabel("relative error of the best rank-k form")
    ax2.set_ylim(0, min(1.0, max(0.3, 3 * (eps or 0.1))))
    ax2.set_title("Error against rank")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return _png(fig)


def sweep_png(rows: Sequence[dict], current_eps: float | None = None, run_point: dict | None = None) -> bytes:
    """Compression ratio (fixed rank and adaptive) against eps; *run_point* (the run's own
    report.json) is drawn as its own marked point, and joins the lines when the sweep lacks it."""
    plt = _pyplot()
    rows = list(rows)
    if run_point is not None and current_eps is not None and not any(abs(r["eps"] - current_eps) <= 1e-12 for r in rows):
        rows.append({"eps": current_eps, "groups": len(run_point["groups"]),
                     "compression_ratio": run_point["compression_ratio"],
                     "compression_ratio_adaptive": run_point["compression_ratio_adaptive"]})
    rows = sorted(rows, key=lambda r: r["eps"])
    eps = [r["eps"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(eps, [r["compression_ratio"] for r in rows], marker="o", label="rank r (paper)")
    ax.plot(eps, [r["compression_ratio_adaptive"] for r in rows], marker="s", label="adaptive ranks r_C")
    if run_point is not None and current_eps is not None:
        ax.scatter([current_eps] * 2, [run_point["compression_ratio"], run_point["compression_ratio_adaptive"]],
                   s=110, facecolors="none", edgecolors="red", linewidths=1.6, zorder=5,
                   label=f"this run (eps = {current_eps:g})")
    elif current_eps is not None:
        ax.axvline(current_eps, color="red", lw=0.8, ls=":", label=f"this run (eps = {current_eps:g})")
    for r in rows:
        ax.annotate(f"{r['groups']} groups", (r["eps"], r["compression_ratio"]), textcoords="offset points",
                    xytext=(4, -12), fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("eps (certified relative error)")
    ax.set_ylabel("compression ratio")
    ax.set_title("Compression ratio against eps")
    ax.legend(fontsize=8)
    return _png(fig)


_STUDY_STYLE = {
    "max_norm": ("max_norm (Weyl)", "o"),
    "residuals_norm": ("residuals, norm order", "v"),
    "residuals_residual": ("residuals, residual order", "^"),
    "approximate_norm": ("approximate, norm order", "s"),
    "approximate_residual": ("approximate, residual order", "D"),
}


def study_png(rows: Sequence[dict], rank: int | None = None) -> bytes:
    """Median exact error and median certified bounds against group size (study rows)."""
    plt = _pyplot()
    sizes = sorted({int(r["size"]) for r in rows})
    fig, ax = plt.subplots(figsize=(7.2, 4.6))

    def median(col: str) -> list[float]:
        return [float(np.median([r[col] for r in rows if int(r["size"]) == s])) for s in sizes]

    ax.plot(sizes, median("exact"), color="black", lw=2.2, label="exact error")
    for col, (label, marker) in _STUDY_STYLE.items():
        if rows and col in rows[0]:
            ax.plot(sizes, median(col), marker=marker, ms=4, lw=1, label=label)
    ax.set_xlabel("blocks per group")
    ax.set_ylabel("relative error (median over trials)")
    ax.set_title("Certified bounds vs exact error" + (f" (r = {rank})" if rank else ""))
    ax.legend(fontsize=8)
    return _png(fig)


#: The PNG plots written beside report.json (:func:`report_plots`).
PLOT_FILES = ("plots/errors.png", "plots/group_sizes.png")


def report_plots(report: dict) -> dict[str, bytes]:
    """The plots written beside report.json, ``{relative path: PNG bytes}``; empty when
    matplotlib is not installed (it is optional)."""
    if not have_matplotlib():
        log.info("matplotlib is not installed: no plots")
        return {}
    plt = _pyplot()
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
    ax.set_ylabel("certified rank-r error")
    ax.set_title("Groups: bound vs certified error")
    out[PLOT_FILES[0]] = _png(fig, dpi=100)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist([len(g["blocks"]) for g in groups], bins=min(50, max(1, len(groups))))
    ax.set_xlabel("blocks per group")
    ax.set_ylabel("groups")
    ax.set_title(f"{len(groups)} groups")
    out[PLOT_FILES[1]] = _png(fig, dpi=100)
    return out
