"""``cmsvd decompress`` and ``cmsvd verify``: blocks back from the compressed artifact, and
its errors recomputed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ._app import EXIT_FAILED, EXIT_MISSING, CLIError, _command
from ._output import StageBars, _esc, _out, _print_json
from ._store import CollectionArg, JsonOpt, RunIdOpt, StoreOpt, _check_eps, _check_names, _open_collection, _resolve_run_id


def _block_index(coll, block: str) -> int:
    """Index of a block given by index (out of range: a usage error, exit 2) or name (a
    missing name exits 3, as documented for anything missing)."""
    if block.lstrip("-").isdigit():
        i = int(block)
        if not 0 <= i < coll.n_blocks:
            raise CLIError(f"block index {i} out of range: collection {coll.name!r} has {coll.n_blocks} blocks")
        return i
    try:
        return coll.names.index(block)
    except ValueError:
        raise CLIError(f"no block named {block!r} in collection {coll.name!r}", EXIT_MISSING) from None


def _safe_file_name(name: str) -> str:
    """A block or tensor name as one file name (names are labels, not paths)."""
    out = "".join(ch if ch.isalnum() or ch in "._-[]:" else "_" for ch in name).replace(":", "_").lstrip(".")
    return out[:200] or "block"


def _save_npy(path: Path, array) -> Path:
    import numpy as np

    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path


def _decompress_all(coll, artifact, output: Optional[Path], columns: bool, as_json: bool) -> dict:
    """The whole collection back: a safetensors source as a safetensors file (passthrough
    tensors byte for byte), anything else (or --columns) as one .npy per block."""
    layout = artifact.source_layout or {}
    is_st = layout.get("format") == "safetensors" and artifact.tensor_names and not columns
    output = output or Path(f"{coll.name}-decompressed")
    if output.suffix == ".safetensors":
        if not is_st:
            raise CLIError(f"collection {coll.name!r} was not ingested from a safetensors file (or --columns was "
                           "given): -o must be a folder for one .npy per block")
        target = output
    elif output.suffix:
        raise CLIError(f"--all writes a folder or a .safetensors file, not {output.suffix!r}: -o DIR or -o FILE.safetensors")
    else:
        target = output / (layout.get("file_name") or f"{coll.name}.safetensors") if is_st else None
    bars = StageBars(quiet=as_json)
    info: dict[str, Any] = {"collection": coll.name, "artifact": artifact.label}
    with bars:
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            bars("decompress", 0, 1)
            info.update(artifact.export_safetensors(target))
            bars("decompress", 1, 1)
            info["format"] = "safetensors"
        else:
            output.mkdir(parents=True, exist_ok=True)
            files = []
            for i in range(artifact.n_blocks):
                bars("decompress", i, artifact.n_blocks)
                files.append(str(_save_npy(output / f"{i:06d}-{_safe_file_name(coll.names[i])}.npy", artifact.decompress(i))))
            bars("decompress", artifact.n_blocks, artifact.n_blocks)
            info.update({"format": "npy", "path": str(output), "blocks": len(files)})
    return info


@_command("decompress")
def decompress_cmd(
    collection: str = CollectionArg,
    block: Optional[str] = typer.Argument(None, help="Block index, block name, or (safetensors) source tensor name."),
    all_blocks: bool = typer.Option(False, "--all", help="Write the whole collection back: a safetensors source as one .safetensors file (every tensor, passthrough ones byte for byte), else one .npy per block."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="One block: .npy file (default <collection>-<index>.npy). --all: a folder or FILE.safetensors (default ./<collection>-decompressed/)."),
    columns: bool = typer.Option(False, "--columns", help="The column form (rows x n, collection dtype) instead of the source tensor's shape and dtype."),
    run_id: Optional[str] = RunIdOpt,
    store: str = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Reconstruct a block or tensor (U_C V_i) from the compressed artifact, in its source
    shape and dtype by default; --all writes the whole collection back."""
    import storage

    _check_names(collection_name=collection, run_id=run_id)
    if (block is None) == (not all_blocks):
        raise CLIError("give a BLOCK (index or name) or --all, not both" if block is not None else
                       "give a BLOCK (index, block name or tensor name) or --all")
    coll = _open_collection(store, collection)
    label = _resolve_run_id(coll, run_id)
    artifact = storage.open_artifact(store, collection, label, storage_options=coll.storage_options)
    if all_blocks:
        info = _decompress_all(coll, artifact, output, columns, as_json)
        if as_json:
            _print_json(info)
        else:
            what = (f"{info['tensors']} tensors ({info['passthrough']} kept as they are)" if info["format"] == "safetensors"
                    else f"{info['blocks']} blocks as .npy")
            _out().print(_esc(f"{collection}: {what} -> {info['path']}"))
        return
    tensor = None
    if block not in coll.names and block in artifact.tensor_names:
        tensor = block  # a source tensor: a --per column one spans many blocks, a passthrough one none
    if tensor is not None:
        t = artifact.tensor_info(tensor)
        approx = artifact.tensor(tensor, form="columns" if columns else "original")
        output = _save_npy(output or Path(f"{collection}-{_safe_file_name(tensor)}.npy"), approx)
        info = {"collection": collection, "artifact": label, "tensor": tensor, "source_dtype": t["dtype"],
                "source_shape": t["shape"], "shape": list(approx.shape), "dtype": str(approx.dtype),
                "form": "columns" if columns else "original", "stored_raw": t["kind"] == "passthrough",
                "passthrough": t["kind"] == "passthrough", "output": str(output)}
        if t["kind"] != "passthrough":
            first, count = t["blocks"]
            info["blocks"] = list(range(first, first + count))
        if as_json:
            _print_json(info)
        else:
            kept = f", kept as it is: {t.get('reason')}" if t["kind"] == "passthrough" else ""
            _out().print(_esc(f"tensor {tensor} {tuple(approx.shape)} {approx.dtype} -> {output}{kept}"))
        return
    i = _block_index(coll, block)
    approx = artifact.decompress(i, form="columns" if columns else "original")
    output = _save_npy(output or Path(f"{collection}-{i}.npy"), approx)
    g = int(artifact.labels[i])
    info = {"collection": collection, "artifact": label, "block": i, "name": coll.names[i], "shape": list(approx.shape),
            "dtype": str(approx.dtype), "form": "columns" if columns else "original", "group": g,
            "group_rank": int(artifact.ranks[g]), "stored_raw": bool(artifact.kinds[g] == 1),
            "group_error": float(artifact.errors[g]), "output": str(output)}
    if as_json:
        _print_json(info)
    else:
        _out().print(_esc(f"block {i} ({info['name']}) {tuple(approx.shape)} {approx.dtype} -> {output} "
                          f"(group {g}, {'stored raw' if info['stored_raw'] else 'rank ' + str(info['group_rank'])}, "
                          f"group error {info['group_error']:.4g})"))


@_command("verify")
def verify_cmd(
    collection: str = CollectionArg,
    run_id: Optional[str] = RunIdOpt,
    store: str = StoreOpt,
    eps: Optional[float] = typer.Option(None, "--eps", help="Threshold to check against (default: the run's eps)."),
    as_json: bool = JsonOpt,
) -> None:
    """Recompute the exact per-group errors from the collection and the artifact.

    Exit 1 if any group exceeds eps or disagrees with the recorded error, 4 if the
    artifact's hashes do not match (corrupted files).
    """
    import storage
    from pipeline.distributed.verify import verify_artifact

    if eps is not None:
        _check_eps(eps)
    _check_names(collection_name=collection, run_id=run_id)
    coll = _open_collection(store, collection)
    label = _resolve_run_id(coll, run_id)
    artifact = storage.open_artifact(store, collection, label)
    bars = StageBars(quiet=as_json)
    with bars:
        result = verify_artifact(coll, artifact, eps, bars)
    if as_json:
        _print_json(result)
    else:
        from rich.text import Text

        status = _esc("verified", "green") if result["ok"] else _esc("FAILED", "red")
        _out().print(Text.assemble(status, _esc(
            f": artifact {label} of {collection}: hashes match; {result['groups']} groups, "
            f"worst recomputed error {result['max_error']:.6g} (eps = {result['eps']}); "
            f"{len(result['violations'])} above eps, {len(result['mismatches'])} differing from the recorded errors"
        )))
    if not result["ok"]:
        what = (f"group(s) {result['violations'][:10]} exceed eps = {result['eps']}" if result["violations"]
                else f"group(s) {result['mismatches'][:10]} differ from their recorded errors")
        sys.stderr.write(f"error: verification failed: {what}\n")
        raise typer.Exit(EXIT_FAILED)
