"""Printing for the ``cmsvd`` commands: consoles, escaping of stored names, JSON output,
progress bars (:class:`StageBars`) and the run summary table.
"""

from __future__ import annotations

import enum
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

from ._app import EXIT_FAILED


def _out():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _err():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _shown(value: Any) -> str:
    """``str(value)`` with non-printable characters as Python escapes (``\\n``, ``\\x1b``).

    Stored names (blocks, provenance, paths) can hold anything; an escape sequence
    printed raw would drive the terminal.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _esc(value: Any, style: str = "") -> "rich.text.Text":  # noqa: F821
    """*value* as a literal Rich ``Text`` for ``print``, titles and table cells.

    A ``Text`` is never parsed as markup, so a name such as ``[/bold]`` or ``a\\[b``
    prints as it is (``rich.markup.escape`` alone does not round-trip backslashes
    before ``[``).  Combine with styled parts through ``Text.assemble``.
    """
    from rich.text import Text

    return Text(_shown(value), style=style)


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2) + "\n")
    sys.stdout.flush()


def _local_path(url: str) -> str:
    """A path to show the user (file:// stripped)."""
    return url[len("file://"):] if url.startswith("file://") else url


class StageBars:
    """Progress bars on stderr for ``progress(stage, done, total)`` callbacks.

    On a terminal: one rich bar per stage.  Otherwise (logs, CI, tests): one line per
    finished stage.  ``quiet`` shows nothing.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.console = _err()
        self.live = self.console.is_terminal and not quiet
        self.quiet = quiet
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.finished: set[str] = set()
        self._lock = threading.Lock()
        # a stage first heard of when it is already done started when the one before ended
        self._last_end = time.monotonic()
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()
        self.progress = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=self.console, transient=False,
            )

    #: Seconds between "still working" lines when stderr is not a terminal.
    HEARTBEAT_S = 30.0

    def __enter__(self) -> "StageBars":
        self._last_end = time.monotonic()
        if self.progress is not None:
            self.progress.start()
        elif not self.quiet:
            self._stop.clear()
            self._heartbeat = threading.Thread(target=self._beat, name="cmsvd-heartbeat", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=1.0)
            self._heartbeat = None
        if self.progress is not None:
            self.progress.stop()

    def _beat(self) -> None:
        """Non-terminal output: a line every HEARTBEAT_S while a stage runs, so a long
        stage (or one that reports only at its end) never looks hung."""
        while not self._stop.wait(self.HEARTBEAT_S):
            with self._lock:
                now = time.monotonic()
                running = [st for st in self.started if st not in self.finished]
                if running:
                    st = running[-1]
                    self.console.print(f"  {st:<12} running ({now - self.started[st]:.0f} s)")
                else:
                    self.console.print(f"  working ({now - self._last_end:.0f} s since the last stage finished)")

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            now = time.monotonic()
            self.started.setdefault(stage, self._last_end if done >= total else now)
            if self.progress is not None:
                if stage not in self.tasks:
                    self.tasks[stage] = self.progress.add_task(stage, total=max(total, 1))
                self.progress.update(self.tasks[stage], completed=done, total=max(total, 1))
            elif not self.quiet and done >= total and stage not in self.finished:
                self.console.print(f"  {stage:<12} done ({now - self.started[stage]:.1f} s)")
            if done >= total and stage not in self.finished:
                self.finished.add(stage)
                self._last_end = now

    def finish(self, stage: str, seconds: float | None = None) -> None:
        """A stage finished elsewhere (seen in the run folder), taking ``seconds``."""
        with self._lock:
            if self.progress is not None:
                done = f"{stage} ({seconds:.1f} s)" if seconds is not None else stage
                self.tasks[stage] = self.progress.add_task(done, total=1, completed=1)
            elif not self.quiet:
                self.console.print(f"  {stage:<12} done" + (f" ({seconds:.1f} s)" if seconds is not None else ""))
            self.finished.add(stage)
            self._last_end = time.monotonic()

    def message(self, text: str) -> None:
        if not self.quiet:
            (self.progress.console if self.progress is not None else self.console).print(text)


def _summary_from_report(report: dict, urls: dict[str, str] | None = None) -> dict:
    from flows.html_report import honest_numbers

    groups = report["groups"]
    multi = [g for g in groups if len(g["blocks"]) > 1]
    eps = report["params"].get("eps")
    honest = honest_numbers(report)
    return {
        "run_id": report.get("run_id"),
        "collection": report["collection"]["name"],
        "blocks": report["collection"]["blocks"],
        "groups": len(groups),
        "singletons": len(groups) - len(multi),
        "rank": report["params"].get("rank"),
        "compression_ratio": report["compression_ratio"],
        "compression_ratio_adaptive": report["compression_ratio_adaptive"],
        # worst certified rank-r error over the groups stored compressed (raw ones store no approximation)
        "max_certified_error": honest["max_certified_error_compressed"],
        "max_error": report["max_error"],
        "raw_blocks": honest["raw_blocks"],
        "raw_groups": honest["raw_groups"],
        "raw_block_errors": honest["raw_block_errors"],
        "raw_unfit_blocks": honest["raw_unfit_blocks"],
        "eps": eps,
        "guarantee_ok": all(g["error"] <= eps for g in multi),
        "bytes": report["bytes"],
        "timings": report["timings"],
        **({"baseline": report["baseline"]} if report.get("baseline") else {}),
        **({"passthrough": report["passthrough"]} if report.get("passthrough") else {}),
        **({"lineage": report["lineage"]} if report.get("lineage") else {}),
        **({"files": urls} if urls else {}),
    }


def _guidance(summary: dict) -> str | None:
    """One line saying why little compressed and what would help (None when most did)."""
    raw, blocks = summary.get("raw_blocks", 0), summary["blocks"]
    errs = summary.get("raw_block_errors")
    if not blocks or raw * 2 < blocks or not errs:
        return None
    r, eps = summary.get("rank"), summary.get("eps")
    unfit = summary.get("raw_unfit_blocks", raw)
    return (f"{raw} of {blocks} blocks are stored as they are; {unfit} of them because their own rank-{r} errors, "
            f"{errs[0]:.3g} to {errs[1]:.3g}, are above eps = {eps} and no group fits them. A larger --rank, a larger "
            "--eps, or ingest with --per column (one block per column, so similar columns can share a basis) would help.")


def _print_summary(summary: dict, title: str) -> None:
    from rich.table import Table

    from flows.html_report import fmt_bytes

    out = _out()
    table = Table(title=_esc(title), show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    b = summary["bytes"]
    ok = summary["guarantee_ok"]
    r = summary.get("rank")
    table.add_row("run id", _esc(summary["run_id"]))
    lineage = summary.get("lineage") or {}
    if lineage.get("full_reason"):
        table.add_row("full run", _esc(f"instead of an update of {lineage.get('parent_run')}: {lineage['full_reason']}"))
    elif lineage.get("parent_run"):
        table.add_row("update of", _esc(
            f"{lineage['parent_run']}: {lineage['blocks_added']} blocks added, {lineage['absorbed']} joined "
            f"{lineage['groups_touched']} existing groups, {lineage['new_groups']} new groups; "
            f"{lineage['seconds']:.1f} s, {lineage['seconds_saved']:.1f} s less than the full run {lineage['root_run']}"))
    table.add_row("groups", f"{summary['groups']} ({summary['singletons']} single blocks) from {summary['blocks']} blocks")
    table.add_row("compression ratio", f"{summary['compression_ratio']:.3f}x at rank {r}")
    table.add_row("adaptive ratio", f"{summary['compression_ratio_adaptive']:.3f}x with per-group ranks")
    base = summary.get("baseline") or {}
    if "compression_ratio" in base:
        table.add_row("per-block SVD", f"{base['compression_ratio']:.3f}x (baseline: each block alone at its own "
                                       f"smallest rank meeting eps; {base['raw_blocks']} blocks raw)")
    table.add_row("worst certified error", f"[{'green' if ok else 'red'}]{summary['max_certified_error']:.4g}[/] "
                                           f"(eps = {summary['eps']}; rank-{r} error of the certified bases, groups stored compressed)")
    raw = summary.get("raw_blocks", 0)
    table.add_row("blocks stored raw", f"{raw} of {summary['blocks']} ({summary.get('raw_groups', 0)} groups; as they "
                                       "are, error 0: no rank-r form is smaller or fits eps)")
    table.add_row("worst stored error", f"{summary['max_error']:.4g} (realised error of what the artifact stores)")
    ratio = b["input"] / max(1, b["compressed"])
    table.add_row("bytes in / out", f"{fmt_bytes(b['input'])} / {fmt_bytes(b['compressed'])} ({ratio:.2f}x smaller on disk)")
    pt = summary.get("passthrough")
    if pt:
        table.add_row("kept as is", f"{pt['items']} source items ({fmt_bytes(pt['bytes'])}) not cut into blocks, in both")
    table.add_row("time per stage", ", ".join(f"{k} {v:.2f}s" for k, v in summary["timings"].items()))
    for key, path in (summary.get("files") or {}).items():
        table.add_row(_esc(key), _esc(_local_path(path)))
    out.print(table)
    hint = _guidance(summary)
    if hint:
        out.print(_esc(hint))


def _guarantee_exit(summary: dict) -> None:
    if not summary["guarantee_ok"]:
        sys.stderr.write(
            f"error: certified error {summary['max_certified_error']:.6g} exceeds eps = {summary['eps']} for a group\n"
        )
        raise typer.Exit(EXIT_FAILED)
