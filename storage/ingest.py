"""Streaming ingest of the paper's source formats into collections.

Every adapter turns its source into a lazy stream of ``(name, block, provenance)``
and feeds :class:`storage.collection.CollectionWriter`, which reads each block in
chunk-wide column slices.  Peak memory is therefore about one source block (or one
chunk for memory-mapped sources), never the collection:

- ``.npy`` stacks are memory-mapped a window of blocks at a time and unmapped after
  use, so mapped pages do not pile up in the resident set;
- safetensors files are parsed directly (header + memory-mapped tensor bytes), which
  also handles bfloat16 without any framework;
- ``.npz`` members, HDF5 datasets, Zarr arrays are read one block at a time;
- MATLAB v5 ``.mat`` variables are loaded one variable at a time (the format cannot
  be read partially); v7.3 files (HDF5 inside) go through h5py.

Validation happens while streaming and before anything is published: a failure
leaves no collection behind (see :mod:`storage.collection`).

The format readers live in private modules (:mod:`storage._safetensors`,
:mod:`storage._npz`, :mod:`storage._formats`, :mod:`storage._stream`); their names
are re-exported here.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ._formats import (
    _hdf5_stream as _hdf5_stream,
    _mat73_variables as _mat73_variables,
    _mat_stream as _mat_stream,
    _mat_variables as _mat_variables,
    _zarr_stream as _zarr_stream,
    mimo_block as mimo_block,
)
from ._names import block_name_problem, short_repr
from ._npz import (
    _COPY_STEP as _COPY_STEP,
    NPZ_MEMORY_BUDGET as NPZ_MEMORY_BUDGET,
    _FileMatrix as _FileMatrix,
    _npy_member_header as _npy_member_header,
    _npz_stream as _npz_stream,
)
from ._safetensors import (
    _ST_DTYPES as _ST_DTYPES,
    _ST_ITEMSIZE as _ST_ITEMSIZE,
    MAX_SAFETENSORS_HEADER as MAX_SAFETENSORS_HEADER,
    ST_FLOAT_DTYPES as ST_FLOAT_DTYPES,
    _load_tensor as _load_tensor,
    _raw_tensor_bytes as _raw_tensor_bytes,
    _safetensors_stream as _safetensors_stream,
    read_safetensors_header as read_safetensors_header,
    safetensors_block_problem as safetensors_block_problem,
    safetensors_metadata as safetensors_metadata,
    safetensors_values as safetensors_values,
    to_safetensors_dtype as to_safetensors_dtype,
    write_safetensors as write_safetensors,
)
from ._stream import NamedBlock as NamedBlock, Passthrough as Passthrough
from .collection import Collection, create_collection, open_collection
from .errors import BlockValidationError, EmptyInputError, SourceFormatError

#: Bytes of a source stack mapped at once.
WINDOW_BYTES = 64 * 2**20


def _default_dtype(dtype: np.dtype) -> np.dtype:
    """float32 stays float32 (complex64 too), everything else numeric goes to float64."""
    dtype = np.dtype(dtype)
    if dtype.kind in "fc" and dtype.itemsize <= (4 if dtype.kind == "f" else 8):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _ingest(
    url: str,
    name: str,
    stream: Iterable[NamedBlock],
    *,
    dtype: Any = None,
    stack_complex: bool = False,
    provenance: dict | None = None,
    overwrite: bool = False,
    chunk_columns: int | None = None,
    chunk_rows: int | None = None,
    storage_options: dict | None = None,
    append: bool = False,
    name_prefix: str = "",
) -> Collection:
    """Write a stream of (name, block, provenance) into a new collection and publish it,
    or with ``append`` add its blocks to the existing collection ``name`` atomically.

    Items whose block is a :class:`Passthrough` are kept as raw bytes; those met before
    the first block (which fixes the row count) wait in a list (they are lazy views).
    ``name_prefix`` is put before every block name the source gives.
    """
    if name_prefix:
        stream = ((None if b is None else name_prefix + b, block, prov) for b, block, prov in stream)
    if append:
        if overwrite:
            raise ValueError("append and overwrite exclude each other")
        return _append(url, name, stream, dtype=dtype, stack_complex=stack_complex, provenance=provenance,
                       storage_options=storage_options)
    it = iter(stream)
    pending: list[tuple[str, Passthrough]] = []
    while True:
        try:
            first = next(it)
        except StopIteration:
            what = f" ({len(pending)} item(s) that are not blocks)" if pending else ""
            raise EmptyInputError(f"collection {name!r}: no blocks to ingest{what}") from None
        if not isinstance(first[1], Passthrough):
            break
        pending.append((first[0], first[1]))
    bname, block, _ = first
    problem = None if bname is None else block_name_problem(bname)
    if problem:  # before any message quotes the name in full
        raise BlockValidationError(0, None, f"invalid block name {short_repr(bname)}: {problem}")
    shape = getattr(block, "shape", None)
    if shape is None:
        block = np.asarray(block)
        shape = block.shape
        first = (bname, block, first[2])
    if len(shape) != 2:
        raise BlockValidationError(0, bname, f"expected a 2-D array, got shape {tuple(shape)}")
    src_dtype = np.dtype(getattr(block, "dtype", np.float64))
    rows = int(shape[0]) * (2 if src_dtype.kind == "c" and stack_complex else 1)
    dt = np.dtype(dtype) if dtype is not None else _default_dtype(src_dtype)
    writer = create_collection(
        url,
        name,
        rows,
        dt,
        chunk_columns=chunk_columns,
        chunk_rows=chunk_rows,
        overwrite=overwrite,
        stack_complex=stack_complex,
        provenance=provenance,
        storage_options=storage_options,
    )
    try:
        for pname, item in pending:
            writer.add_passthrough(pname, item.data, item.info)
        del pending
        writer.append(first[1], first[0], first[2])
        del first, block  # keep only one source block alive
        for bname, block, prov in it:
            if isinstance(block, Passthrough):
                writer.add_passthrough(bname, block.data, block.info)
            else:
                writer.append(block, bname, prov)
    except BaseException:
        writer.discard()  # nothing was published: drop the staging group
        raise
    return writer.publish()


def _append(url: str, name: str, stream: Iterable[NamedBlock], *, dtype: Any, stack_complex: bool,
            provenance: dict | None, storage_options: dict | None) -> Collection:
    """Append a stream's blocks to collection ``name``: all of them or, if any fails, none
    (the collection stays exactly as it was). Block indices of existing blocks never
    change; the collection's version goes up by one and the append is recorded."""
    coll = open_collection(url, name, storage_options=storage_options)
    if dtype is not None and np.dtype(dtype) != coll.dtype:
        raise ValueError(f"cannot append {np.dtype(dtype).name} blocks to collection {name!r}: it stores {coll.dtype.name}")
    writer = coll.appender(stack_complex=stack_complex)
    added = 0
    try:
        for bname, block, prov in stream:
            if isinstance(block, Passthrough):
                raise ValueError(
                    f"cannot append to collection {name!r}: the source has items that are not blocks "
                    f"({bname!r}, e.g. a bias or norm tensor); an append adds blocks only: ingest the source "
                    "as a collection of its own")
            writer.append(block, bname, prov)
            added += 1
        if not added:
            raise EmptyInputError(f"collection {name!r}: no blocks to append")
        writer.record_append(provenance or {})
    except BaseException:
        writer.discard()  # the committed extent is untouched: trim what was written past it
        raise
    return writer.publish()


def _common(kwargs: dict) -> dict:
    allowed = {"dtype", "stack_complex", "overwrite", "chunk_columns", "chunk_rows", "storage_options", "provenance",
               "append", "name_prefix"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unexpected ingest option(s): {', '.join(sorted(unknown))}")
    return kwargs


def _with_source(kwargs: dict, fmt: str, source: Any, **extra: Any) -> dict:
    prov = {"format": fmt, "source": str(source), **extra, **(kwargs.get("provenance") or {})}
    return {**kwargs, "provenance": prov}


def ingest_blocks(
    url: str,
    name: str,
    blocks: Iterable[Any],
    *,
    names: Iterable[str] | None = None,
    provenances: Iterable[Any] | None = None,
    **options: Any,
) -> Collection:
    """Ingest an iterable of 2-D arrays (consumed lazily) into a new collection.

    Parameters
    ----------
    url, name : str
        Root URL and collection name.
    blocks : iterable of 2-D array-likes
        Same row count; widths may differ.
    names : iterable of str, optional
        Unique block names (default ``block-<i>``).
    provenances : iterable, optional
        Per-block JSON-serialisable provenance.
    **options
        ``dtype`` (default: float32 for float32 input, else float64),
        ``stack_complex``, ``overwrite``, ``chunk_columns``, ``chunk_rows``,
        ``storage_options``, ``provenance`` (collection-level dict).

    Returns
    -------
    Collection
        The published collection.
    """
    name_it = iter(names) if names is not None else None
    prov_it = iter(provenances) if provenances is not None else None

    def stream() -> Iterator[NamedBlock]:
        for i, block in enumerate(blocks):
            bname = None
            if name_it is not None:
                bname = next(name_it, None)
                if bname is None:
                    raise BlockValidationError(i, None, "more blocks than names")
            yield bname, block, (next(prov_it, None) if prov_it is not None else None)

    return _ingest(url, name, stream(), **_common(options))


# ---- .npy --------------------------------------------------------------------


def _npy_stack_stream(path: Path) -> Iterator[NamedBlock]:
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, EOFError, OSError) as exc:  # a declared shape larger than the file, an empty file...
        if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.errno is not None:
            raise
        raise SourceFormatError(f"{path}: not a readable .npy file ({exc or type(exc).__name__})") from None
    stem = path.stem
    if arr.ndim == 2:
        yield stem, arr, None
        return
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a (K, m, n) stack or one (m, n) matrix, got shape {arr.shape}")
    if not arr.flags.c_contiguous:  # Fortran-ordered file: plain views, still lazy
        for i in range(arr.shape[0]):
            yield f"{stem}[{i}]", arr[i], None
        return
    k, m, n = arr.shape
    dtype, offset = arr.dtype, int(arr.offset)
    del arr
    block_bytes = m * n * dtype.itemsize
    per = max(1, WINDOW_BYTES // max(block_bytes, 1))
    for k0 in range(0, k, per):
        k1 = min(k, k0 + per)
        # a fresh mapping per window: dropping it releases its pages from RSS
        window = np.memmap(path, dtype=dtype, mode="r", offset=offset + k0 * block_bytes, shape=(k1 - k0, m, n))
        for j in range(k1 - k0):
            yield f"{stem}[{k0 + j}]", window[j], None
        del window


def ingest_npy_stack(url: str, name: str, path: str | os.PathLike, **options: Any) -> Collection:
    """Ingest a ``.npy`` file holding a (K, m, n) stack (or one (m, n) matrix), memory-mapped.

    Block names are ``<stem>[i]``.
    """
    path = Path(path)
    return _ingest(url, name, _npy_stack_stream(path), **_with_source(_common(options), "npy", path))


# ---- .npz (readers in storage._npz) ---------------------------------------


def ingest_npz(url: str, name: str, path: str | os.PathLike, **options: Any) -> Collection:
    """Ingest a ``.npz`` archive, one block per member array (named after the member)."""
    path = Path(path)
    # this module's NPZ_MEMORY_BUDGET (re-exported from storage._npz) is the one callers and tests adjust
    return _ingest(url, name, _npz_stream(path, NPZ_MEMORY_BUDGET), **_with_source(_common(options), "npz", path))


def _npy_folder_stream(path: Path) -> Iterator[NamedBlock]:
    files = sorted(p for p in path.iterdir() if p.suffix == ".npy" and p.is_file())
    for f in files:
        yield f.stem, np.load(f, mmap_mode="r"), {"file": f.name}


def ingest_npy_folder(url: str, name: str, path: str | os.PathLike, **options: Any) -> Collection:
    """Ingest every ``*.npy`` file of a folder (sorted by file name), one block each."""
    path = Path(path)
    if not path.is_dir():
        raise NotADirectoryError(str(path))
    return _ingest(url, name, _npy_folder_stream(path), **_with_source(_common(options), "npy-folder", path))


# ---- safetensors (parser, reader and writer in storage._safetensors) --------


def ingest_safetensors(
    url: str,
    name: str,
    path: str | os.PathLike,
    column_length: int,
    per: str = "tensor",
    **options: Any,
) -> Collection:
    """Ingest a safetensors file: weights as columns of a given length, the rest kept as is.

    Every floating-point tensor (F64, F32, F16, BF16) with at least 2 dimensions whose
    size is a multiple of *column_length* is flattened (C order) and cut into
    consecutive pieces of *column_length* values, each becoming one column (so a
    (n_out, n_in) weight with n_in == column_length contributes its rows).  Every other
    tensor (1-D biases and norms, integer tensors, incompatible sizes) is kept as a
    *passthrough* item: its bytes are stored as they are, beside the blocks, and never
    clustered (``Collection.passthrough``).  Their names are listed in
    ``provenance["skipped"]``.

    ``provenance["tensors"]`` records every tensor's layout in file order (name,
    safetensors dtype, shape, and its block range or the reason it is kept as is), and
    ``provenance["metadata"]`` the header's ``__metadata__``: with them an artifact
    writes the file back (:meth:`storage.Artifact.export_safetensors`).

    The collection dtype comes only from the tensors cut into blocks: float64 if one of
    them is F64, else float32 (F32, F16 and BF16 convert exactly).

    Parameters
    ----------
    column_length : int
        Rows m of the collection (768 in the paper).
    per : {"tensor", "column"}
        One block per tensor (named after it) or one block per column (named
        ``<tensor>:<j>``).

    Raises
    ------
    EmptyInputError
        No tensor can be cut into columns of that length (the message counts why).
    """
    if per not in ("tensor", "column"):
        raise ValueError(f"per must be 'tensor' or 'column', got {per!r}")
    column_length = int(column_length)
    if column_length <= 0:
        raise ValueError("column_length must be positive")
    path = Path(path)
    options = _common(options)
    tensors, _ = read_safetensors_header(path)
    problems = {k: safetensors_block_problem(t, column_length) for k, t in tensors.items()}
    if all(problems.values()):
        counts: dict[str, int] = {}
        for p in problems.values():
            counts[p] = counts.get(p, 0) + 1
        why = "; ".join(f"{n} {p}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "the file has no tensors"
        raise EmptyInputError(f"{path}: no tensor can be cut into columns of length {column_length} ({why})")
    if options.get("dtype") is None:
        wide = any(tensors[k]["dtype"] == "F64" for k, p in problems.items() if p is None)
        options["dtype"] = np.float64 if wide else np.float32
    skipped: list[str] = []
    layout: list[dict] = []
    opts = _with_source(options, "safetensors", path, column_length=column_length, per=per, skipped=skipped,
                        tensors=layout, metadata=safetensors_metadata(path), file_name=path.name)
    # `skipped` and `layout` are filled while streaming; the same list objects land in the attrs at publish
    return _ingest(url, name, _safetensors_stream(path, column_length, per, skipped, layout), **opts)


# ---- HDF5 --------------------------------------------------------------------


def ingest_hdf5(url: str, name: str, path: str | os.PathLike, dataset: str | None = None, **options: Any) -> Collection:
    """Ingest HDF5 data (needs h5py).

    *dataset* may name a 3-D (K, m, n) dataset (one block per leading index), a 2-D
    dataset (one block), or a group; without it the whole file is used.  In a group
    every dataset is taken in h5py's visiting order (names sorted): 2-D ones as one
    block, 3-D ones as stacks.
    """
    path = Path(path)
    return _ingest(url, name, _hdf5_stream(path, dataset), **_with_source(_common(options), "hdf5", path, dataset=dataset))


# ---- MATLAB ------------------------------------------------------------------


def ingest_mat(
    url: str,
    name: str,
    path: str | os.PathLike,
    key: str | Sequence[str] | None = None,
    layout: str | None = None,
    stack_complex: bool = True,
    **options: Any,
) -> Collection:
    """Ingest MATLAB ``.mat`` variables (v5 through scipy.io, v7.3 through h5py).

    Parameters
    ----------
    key : str or list of str, optional
        Variable(s) to read; default all variables.  A 2-D variable is one block, a
        3-D one a (K, m, n) stack.
    layout : {None, "mimo"}
        ``"mimo"``: a variable (NRB, Nr, Nt, Nc) is one user's channel, reshaped to
        (Nr*Nt*Nc, NRB); a 5-D variable (users, NRB, Nr, Nt, Nc) gives one block per user.
    stack_complex : bool
        Store complex data as real rows over imaginary rows (doubling m).
    """
    if layout not in (None, "mimo"):
        raise ValueError(f"unknown layout {layout!r} (expected None or 'mimo')")
    keys = [key] if isinstance(key, str) else (list(key) if key is not None else None)
    path = Path(path)
    opts = _with_source(_common(options), "mat", path, key=keys, layout=layout)
    return _ingest(url, name, _mat_stream(path, keys, layout), stack_complex=stack_complex, **opts)


# ---- Zarr --------------------------------------------------------------------


def ingest_zarr_array(
    url: str, name: str, source: Any, *, source_storage_options: dict | None = None, **options: Any
) -> Collection:
    """Ingest an existing Zarr array (K, m, n) one block per leading index (or (m, n): one block).

    *source* is a ``zarr.Array`` or a path/URL to one.
    """
    import zarr

    from ._location import resolve

    if isinstance(source, (str, os.PathLike)):
        label = Path(str(source)).name.removesuffix(".zarr") or "array"
        arr = zarr.open_array(store=resolve(source, source_storage_options).zarr_store(read_only=True), mode="r")
    else:
        arr, label = source, (getattr(source, "basename", None) or "array")
    return _ingest(url, name, _zarr_stream(arr, label), **_with_source(_common(options), "zarr", source))


# ---- dispatcher --------------------------------------------------------------


def ingest_path(url: str, name: str, source: str | os.PathLike, **options: Any) -> Collection:
    """Ingest *source*, choosing the adapter from its suffix (used by the CLI).

    ``.npy`` stack, ``.npz``, folder of ``.npy``, ``.safetensors`` (needs
    ``column_length``, optional ``per``), ``.h5``/``.hdf5`` (optional ``dataset``),
    ``.mat`` (optional ``key``, ``layout``, ``stack_complex``), ``.zarr`` or any
    folder with a ``zarr.json`` (a Zarr array).
    """
    src = Path(source) if "://" not in str(source) else None
    suffix = Path(str(source)).suffix.lower()
    if src is None or suffix == ".zarr" or (src.is_dir() and (src / "zarr.json").exists()):
        return ingest_zarr_array(url, name, source, **options)
    if src.is_dir():
        return ingest_npy_folder(url, name, src, **options)
    if not src.exists():
        raise FileNotFoundError(errno.ENOENT, "no such file or folder", str(src))
    adapters = {
        ".npy": ingest_npy_stack,
        ".npz": ingest_npz,
        ".safetensors": ingest_safetensors,
        ".h5": ingest_hdf5,
        ".hdf5": ingest_hdf5,
        ".he5": ingest_hdf5,
        ".mat": ingest_mat,
    }
    if suffix not in adapters:
        raise ValueError(f"{src}: unknown source format {suffix!r} (expected one of {', '.join(sorted(adapters))})")
    return adapters[suffix](url, name, src, **options)
