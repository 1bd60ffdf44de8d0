"""``cmsvd ingest`` and ``cmsvd inspect``: sources into collections, and what a store holds."""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Any, Optional

import typer

from flows.params import DType

from ._app import EXIT_MISSING, CLIError, _command
from ._output import StageBars, _esc, _local_path, _out, _print_json
from ._store import JsonOpt, StoreOpt, _check_names, _list_artifacts, _list_runs, _open_collection


class _Per(str, enum.Enum):
    """Block granularity of a safetensors ingest."""

    tensor = "tensor"
    column = "column"


class _Layout(str, enum.Enum):
    """Layout of MATLAB variables."""

    mimo = "mimo"


@_command("ingest")
def ingest_cmd(
    source: str = typer.Argument(..., help="File or folder: .npy stack (K, m, n), .npz, folder of .npy, .safetensors, .h5/.hdf5, .mat, .zarr array."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Collection name (default: the source's file name without suffix)."),
    store: str = StoreOpt,
    dtype: Optional[DType] = typer.Option(None, help="Storage dtype (default: float32 for float32 input, else float64)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing collection of that name."),
    append: bool = typer.Option(False, "--append", help="Add the source's blocks to the existing collection NAME "
                                "(atomic: if any block fails, the collection stays as it was; existing block "
                                "indices never change; its version goes up by one)."),
    prefix: str = typer.Option("", "--prefix", help="Put this before every block name the source gives (e.g. a "
                               "checkpoint tag, so that an appended checkpoint's tensor names stay unique)."),
    stack_complex: bool = typer.Option(False, "--stack-complex", help="Complex blocks: store real rows over imaginary rows."),
    column_length: Optional[int] = typer.Option(None, "--column-length", min=1, help="safetensors: rows m of every column (768 in the paper)."),
    per: Optional[_Per] = typer.Option(None, "--per", help="safetensors: one block per tensor (default) or per column."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="HDF5: dataset or group path inside the file."),
    key: Optional[str] = typer.Option(None, "--key", help="MATLAB: variable name."),
    layout: Optional[_Layout] = typer.Option(None, "--layout", help="MATLAB: mimo for (NRB, Nr, Nt, Nc) channels."),
    as_json: bool = JsonOpt,
) -> None:
    """Load a source file or folder into a collection (streamed; atomic publish)."""
    import storage

    _check_names(collection_name=name)
    from flows.ingest import collection_summary

    src = source.rstrip("/")
    if name is None:
        base = Path(src).name
        for suffix in (".safetensors", ".hdf5", ".zarr", ".npy", ".npz", ".h5", ".he5", ".mat"):
            if base.lower().endswith(suffix):
                base = base[: -len(suffix)]
                break
        name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in base).lstrip("._-") or "collection"
    suffix = Path(src).suffix.lower()
    if suffix == ".safetensors" and column_length is None:
        raise CLIError("a .safetensors source needs --column-length (the rows m of every column block)")
    if append and overwrite:
        raise CLIError("--append and --overwrite exclude each other")
    options: dict[str, Any] = {"overwrite": overwrite}
    if append:
        options["append"] = True
    if prefix:
        options["name_prefix"] = prefix
    if dtype is not None:
        options["dtype"] = dtype.value
    if stack_complex:
        options["stack_complex"] = True
    per_value = per.value if per is not None else None
    layout_value = layout.value if layout is not None else None
    for opt, value, formats in (("column_length", column_length, {".safetensors"}), ("per", per_value, {".safetensors"}),
                                ("dataset", dataset, {".h5", ".hdf5", ".he5"}), ("key", key, {".mat"}),
                                ("layout", layout_value, {".mat"})):
        if value is not None:
            if suffix not in formats:
                raise CLIError(f"--{opt.replace('_', '-')} applies to {'/'.join(sorted(formats))} sources, not {suffix or 'a folder'}")
            options[opt] = value
    bars = StageBars(quiet=as_json)
    with bars:
        bars("ingest", 0, 1)
        start = time.perf_counter()
        coll = storage.ingest_path(store, name, source, **options)
        bars("ingest", 1, 1)
    summary = collection_summary(coll)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    passthrough = _passthrough_summary(coll)
    if passthrough is not None:
        summary["passthrough"] = passthrough
    if as_json:
        _print_json(summary)
        return
    from flows.html_report import fmt_bytes

    from rich.text import Text

    if append:
        added = coll.appends[-1]
        _out().print(Text.assemble(
            "appended ", _esc(added["n_blocks"], "bold"), f" blocks (indices {added['first_block']} to "
            f"{added['first_block'] + added['n_blocks'] - 1}) to collection ", _esc(name, "bold"),
            _esc(f", now version {coll.version} with {summary['blocks']} blocks, in {summary['seconds']:.1f} s"),
        ))
        return
    _out().print(Text.assemble(
        "ingested ", _esc(summary["blocks"], "bold"),
        f" blocks ({summary['rows']} x {summary['columns']} {summary['dtype']}, "
        f"{fmt_bytes(summary['bytes'])} raw, {fmt_bytes(summary['bytes_stored'])} on disk) into collection ",
        _esc(name, "bold"), _esc(f" at {_local_path(coll.url)} in {summary['seconds']:.1f} s"),
    ))
    if passthrough and passthrough["count"]:
        _out().print(_esc(_passthrough_line(passthrough)))


def _passthrough_summary(coll) -> dict | None:
    """Counts of the source items kept as they are (not blocks), by reason; None when the
    source format records none (only safetensors does)."""
    tensors = (coll.provenance or {}).get("tensors")
    if not tensors and not coll.passthrough_entries:
        return None
    reasons: dict[str, int] = {}
    for e in coll.passthrough_entries:
        reason = str(e.get("reason") or "kept as is")
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "count": len(coll.passthrough_entries),
        "tensors": len(tensors or []),
        "bytes": int(sum(int(e.get("nbytes", 0)) for e in coll.passthrough_entries)),
        "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "names": coll.passthrough_names,
    }


def _passthrough_line(p: dict) -> str:
    from flows.html_report import fmt_bytes

    why = ", ".join(f"{n} {reason}" for reason, n in p["reasons"].items())
    return (f"kept {p['count']} of {p['tensors']} tensors as they are ({fmt_bytes(p['bytes'])}; not cut into "
            f"blocks, not compressed, restored byte for byte): {why}")


def _provenance_lines(provenance: dict, width: int = 100) -> list[str]:
    """One line per entry: scalars in full (long ones shortened in the middle, never cut
    at the end), lists and mappings by their size; ``--json`` has everything."""
    lines = []
    for key, value in provenance.items():
        if isinstance(value, (list, tuple)):
            names = [str(v) for v in value[:3] if isinstance(v, str)]
            text = f"{len(value)} entries" + (f" ({', '.join(names)}, ...)" if names else "")
        elif isinstance(value, dict):
            text = f"{len(value)} keys"
        else:
            text = str(value)
        if len(text) > width:
            text = f"{text[: width // 2 - 2]} ... {text[-(width // 2 - 3):]}"
        lines.append(f"{key}: {text}")
    return lines + ["(all of it: cmsvd inspect --json)"]


@_command("inspect")
def inspect_cmd(
    collection: Optional[str] = typer.Argument(None, help="Collection name; without it, list the store's collections."),
    store: str = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Summarise a collection (shape, widths, norms, provenance, runs, artifacts), or list them."""
    import numpy as np
    import storage

    _check_names(collection_name=collection)
    from flows.html_report import fmt_bytes
    from flows.ingest import collection_summary

    if collection is None:
        if "://" not in store and not Path(store).exists():
            raise CLIError(f"no store at {store}", EXIT_MISSING)
        names = storage.list_collections(store)
        rows = []
        for n in names:
            c = storage.open_collection(store, n)
            rows.append({"name": n, "blocks": c.n_blocks, "rows": c.rows, "columns": c.n_columns, "dtype": str(c.dtype),
                         "bytes_stored": int(c.nbytes_stored)})
        if as_json:
            _print_json({"store": store, "collections": rows})
            return
        from rich.table import Table

        table = Table(title=_esc(f"collections in {store}"), title_justify="left")
        for col in ("name", "blocks", "rows", "columns", "dtype", "on disk"):
            table.add_column(col, justify="left" if col in ("name", "dtype") else "right")
        for r in rows:
            table.add_row(_esc(r["name"]), str(r["blocks"]), str(r["rows"]), str(r["columns"]), r["dtype"], fmt_bytes(r["bytes_stored"]))
        _out().print(table if rows else _esc(f"no collections in {store}"))
        return
    coll = _open_collection(store, collection)
    summary = collection_summary(coll)
    widths, norms = coll.widths, np.sqrt(coll.norms2)
    summary["widths"] = {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())}
    summary["norms"] = {"min": float(norms.min()), "median": float(np.median(norms)), "max": float(norms.max())}
    summary["provenance"] = coll.provenance
    summary["append_history"] = coll.appends
    summary["first_blocks"] = coll.names[:5]
    summary["runs"] = _list_runs(coll)
    summary["artifacts"] = _list_artifacts(coll)
    if as_json:
        _print_json(summary)
        return
    from rich.table import Table

    out = _out()
    table = Table(title=_esc(f"collection {coll.name}"), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("location", _esc(_local_path(coll.url)))
    table.add_row("blocks", _esc(f"{summary['blocks']} (e.g. {', '.join(summary['first_blocks'])})"))
    table.add_row("matrix", f"{summary['rows']} rows x {summary['columns']} columns, {summary['dtype']}")
    table.add_row("block widths", "min {min}, median {median:g}, max {max}".format(**summary["widths"]))
    table.add_row("block norms", "min {min:.4g}, median {median:.4g}, max {max:.4g}".format(**summary["norms"]))
    table.add_row("size", f"{fmt_bytes(summary['bytes'])} raw, {fmt_bytes(summary['bytes_stored'])} on disk")
    for k, a in enumerate(coll.appends[-3:]):  # the latest appends; --json has them all
        what = f"+{a['n_blocks']} blocks from index {a['first_block']}" + (f" ({a['source']})" if a.get("source") else "")
        table.add_row("version" if k == 0 else "", _esc(f"{a['version']}: {what}, {a.get('written', '')}"))
    if coll.provenance:
        for k, line in enumerate(_provenance_lines(coll.provenance)):
            table.add_row("provenance" if k == 0 else "", _esc(line))
    out.print(table)
    if summary["runs"]:
        runs = Table(title="runs", title_justify="left")
        for col in ("run id", "created", "mode", "rank", "eps", "method", "compressed", "report"):
            runs.add_column(col)
        for r in summary["runs"]:
            mode = r["mode"] + (f" (update of {r['parent_run']})" if r.get("parent_run") else "")
            runs.add_row(_esc(r["run_id"] + ("" if r["current"] else " (stale)")), _esc(r["created"]), _esc(mode),
                         _esc(r["params"]["rank"]), _esc(r["params"]["eps"]), _esc(r["params"]["method"]),
                         "yes" if r["compressed"] else "no",
                         "yes" if r["report"] else "no")
        out.print(runs)
