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
"""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ._location import block_name_problem, short_repr
from .collection import Collection, create_collection
from .errors import BlockValidationError, EmptyInputError, SourceFormatError

#: Bytes of a source stack mapped at once.
WINDOW_BYTES = 64 * 2**20

NamedBlock = tuple[str | None, Any, Any]


class Passthrough:
    """A source item kept as raw bytes beside the blocks (not clustered, restored as is).

    Adapters yield ``(name, Passthrough(data, info), None)`` in their stream for items
    that cannot be cut into blocks; see :meth:`storage.CollectionWriter.add_passthrough`.
    """

    __slots__ = ("data", "info")

    def __init__(self, data: Any, info: dict | None = None) -> None:
        self.data, self.info = data, info or {}


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
) -> Collection:
    """Write a stream of (name, block, provenance) into a new collection and publish it.

    Items whose block is a :class:`Passthrough` are kept as raw bytes; those met before
    the first block (which fixes the row count) wait in a list (they are lazy views).
    """
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


def _common(kwargs: dict) -> dict:
    allowed = {"dtype", "stack_complex", "overwrite", "chunk_columns", "chunk_rows", "storage_options", "provenance"}
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


#: ``.npz`` members up to this many bytes are decompressed in memory; larger ones are
#: streamed to a temporary file and read a column slice at a time.
NPZ_MEMORY_BUDGET = 256 * 2**20
_COPY_STEP = 16 * 2**20


class _FileMatrix:
    """A read-only array stored raw in a file, read a slice at a time.

    Column slices ``[:, a:b]`` of a 2-D array (what the collection writer asks for) are
    read with plain file reads into a fresh buffer, so the resident set stays at the
    size of one slice (a memory map would fault in far more of the file around each
    row); any other selection maps the file for the copy only.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> None:
        self.path, self.shape, self.dtype, self._order = path, tuple(shape), np.dtype(dtype), "F" if fortran else "C"
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if (self.ndim == 2 and isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)
                and isinstance(key[1], slice) and key[1].step in (None, 1)):
            return self._columns(*key[1].indices(self.shape[1])[:2])
        mm = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape, order=self._order)
        try:
            return np.array(mm[key])
        finally:
            del mm

    def _columns(self, a: int, b: int) -> np.ndarray:
        m, n = self.shape
        b = max(a, b)
        item = self.dtype.itemsize
        out = np.empty((m, b - a), dtype=self.dtype, order=self._order)
        with open(self.path, "rb", buffering=0) as f:
            if self._order == "F":  # columns are contiguous: one read
                f.seek(a * m * item)
                f.readinto(memoryview(out.T).cast("B"))
            else:
                for r in range(m):
                    f.seek((r * n + a) * item)
                    f.readinto(memoryview(out[r]).cast("B"))
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def _npy_member_header(f: Any, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            shape, fortran, dtype = fmt._read_array_header(f, version)  # 3.0: utf-8 header
    except (ValueError, SyntaxError, TypeError, EOFError) as exc:
        raise SourceFormatError(f"{where}: not a valid .npy member ({exc})") from None
    if dtype.hasobject:
        raise SourceFormatError(f"{where}: object arrays are not supported (they need pickle)")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _npz_stream(path: Path, budget: int | None = None) -> Iterator[NamedBlock]:
    """Members one at a time: small ones in memory, large ones spilled to a temporary file.

    The declared shape is checked against the member's size before anything is
    allocated, so a lying header is an error, never a MemoryError.
    """
    import shutil
    import tempfile
    import zipfile

    budget = NPZ_MEMORY_BUDGET if budget is None else int(budget)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceFormatError(f"{path}: not a valid .npz archive ({exc})") from None
    with zf, tempfile.TemporaryDirectory(prefix="cmsvd-npz-") as tmp:
        for n, info in enumerate(zf.infolist()):
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            where = f"{path}: member {key!r}"
            with zf.open(info) as f:
                shape, fortran, dtype = _npy_member_header(f, where)
                nbytes = dtype.itemsize
                for d in shape:
                    nbytes *= d
                header = f.tell()
                if header + nbytes != info.file_size:
                    raise SourceFormatError(
                        f"{where}: declares shape {shape} {dtype} ({nbytes} bytes) but holds "
                        f"{info.file_size - header} bytes of data"
                    )
                if nbytes <= budget:
                    data = f.read(nbytes)
                    if len(data) != nbytes:
                        raise SourceFormatError(f"{where}: truncated ({len(data)} of {nbytes} bytes)")
                    block: Any = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
                else:
                    spill = os.path.join(tmp, f"{n}.bin")
                    with open(spill, "wb") as out:
                        copied = 0
                        while copied < nbytes:
                            chunk = f.read(min(_COPY_STEP, nbytes - copied))
                            if not chunk:
                                raise SourceFormatError(f"{where}: truncated ({copied} of {nbytes} bytes)")
                            out.write(chunk)
                            copied += len(chunk)
                    block = _FileMatrix(spill, shape, dtype, fortran)
            yield key, block, {"member": key}
            if isinstance(block, _FileMatrix):
                os.unlink(block.path)
            del block
        shutil.rmtree(tmp, ignore_errors=True)


def ingest_npz(url: str, name: str, path: str | os.PathLike, **options: Any) -> Collection:
    """Ingest a ``.npz`` archive, one block per member array (named after the member)."""
    path = Path(path)
    return _ingest(url, name, _npz_stream(path), **_with_source(_common(options), "npz", path))


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


# ---- safetensors -----------------------------------------------------------

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # widened to float32 below
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


#: Largest safetensors JSON header accepted (the format's own limit is 100 MB).
MAX_SAFETENSORS_HEADER = 100 * 2**20
#: Bytes per element of every safetensors dtype (validation also covers dtypes not ingested).
_ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Parse and validate a safetensors header.

    Every tensor must declare a known dtype, a shape of non-negative integers and
    ``data_offsets`` that lie inside the file's data section, span exactly
    ``prod(shape) * itemsize`` bytes and do not overlap another tensor.

    Returns
    -------
    tensors : dict
        name -> {"dtype", "shape", "data_offsets"} in file order (``__metadata__`` removed).
    data_start : int
        Byte offset of the tensor data.

    Raises
    ------
    SourceFormatError
        Naming the file, the tensor and the problem (truncated file, header over
        :data:`MAX_SAFETENSORS_HEADER` or beyond the file, not a JSON object, bad
        dtype/shape/offsets, overlapping tensors).
    """
    size = os.path.getsize(path)

    def bad(problem: str) -> SourceFormatError:
        return SourceFormatError(f"{path}: invalid safetensors file: {problem}")

    if size < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > MAX_SAFETENSORS_HEADER:
            raise bad(f"header declares {hlen} bytes, over the {MAX_SAFETENSORS_HEADER}-byte limit")
        if hlen > size - 8:
            raise bad(f"header declares {hlen} bytes but the file has only {size - 8} after the length")
        raw = f.read(hlen)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    data_size = size - 8 - hlen
    spans = []
    for name, info in header.items():
        where = f"tensor {name!r}"
        if not isinstance(info, dict):
            raise bad(f"{where}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ST_ITEMSIZE:
            raise bad(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise bad(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise bad(f"{where}: data_offsets {offsets!r} is not a pair of integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise bad(f"{where}: data_offsets [{begin}, {end}] outside the {data_size}-byte data section")
        nbytes = _ST_ITEMSIZE[dtype]
        for d in shape:  # Python ints: no overflow, whatever the header claims
            nbytes *= d
        if end - begin != nbytes:
            raise bad(f"{where}: data_offsets span {end - begin} bytes but shape {shape} x {dtype} needs {nbytes}")
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise bad(f"tensors {n0!r} [{b0}, {e0}] and {n1!r} [{b1}, {e1}] overlap")
    ordered = dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]))
    return ordered, 8 + hlen


#: safetensors dtypes that are cut into column blocks; any other is kept as it is.
ST_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def safetensors_block_problem(info: dict, column_length: int) -> str | None:
    """Why a safetensors tensor cannot be cut into columns of *column_length* (None: it can).

    The reasons are short phrases shown at ingest and kept in the layout record.
    """
    dtype, shape = info["dtype"], list(info["shape"])
    size = 1
    for d in shape:
        size *= int(d)
    if dtype not in ST_FLOAT_DTYPES:
        return f"non-float dtype {dtype}"
    if len(shape) == 0:
        return "scalar"
    if len(shape) == 1:
        return "1-D (bias or norm)"
    if size == 0:
        return "empty"
    if size % column_length:
        return f"size not a multiple of the column length {column_length}"
    return None


def _load_tensor(path: Path, info: dict, data_start: int) -> np.ndarray:
    dtype = _ST_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"{path}: tensor dtype {info['dtype']} is not supported")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end == begin:
        return np.zeros(shape, dtype=dtype)
    arr = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=data_start + begin, shape=shape)
    if info["dtype"] == "BF16":
        # bfloat16 is the upper half of a float32
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr


def _raw_tensor_bytes(path: Path, info: dict, data_start: int) -> Any:
    begin, end = info["data_offsets"]
    if end == begin:
        return b""
    return np.memmap(path, dtype=np.uint8, mode="r", offset=data_start + begin, shape=(end - begin,))


def _safetensors_stream(path: Path, column_length: int, per: str, skipped: list[str], layout: list[dict]) -> Iterator[NamedBlock]:
    """Blocks of the tensors that can be cut into columns, passthrough items for the rest.

    *layout* receives, in file order, one record per tensor: its name, safetensors
    dtype and shape, and either ``{"kind": "columns", "column_length", "blocks": [first,
    count]}`` (block indices in the collection) or ``{"kind": "passthrough", "reason"}``.
    """
    tensors, data_start = read_safetensors_header(path)
    n_blocks = 0
    for key, info in tensors.items():
        shape = list(info["shape"])
        record = {"name": key, "dtype": info["dtype"], "shape": shape}
        problem = safetensors_block_problem(info, column_length)
        if problem:
            skipped.append(key)
            layout.append({**record, "kind": "passthrough", "reason": problem})
            yield key, Passthrough(_raw_tensor_bytes(path, info, data_start), {"tensor": key, "dtype": info["dtype"], "shape": shape, "reason": problem}), None
            continue
        t = _load_tensor(path, info, data_start)
        # consecutive column_length elements (C order) become one column
        cols = t.reshape(-1, column_length).T
        count = 1 if per == "tensor" else int(cols.shape[1])
        layout.append({**record, "kind": "columns", "column_length": column_length, "blocks": [n_blocks, count]})
        n_blocks += count
        if per == "tensor":
            yield key, cols, {"tensor": key, "shape": shape, "dtype": info["dtype"]}
        else:
            for j in range(cols.shape[1]):
                yield f"{key}:{j}", cols[:, j : j + 1], None
        del t, cols


def safetensors_metadata(path: str | os.PathLike) -> dict:
    """The ``__metadata__`` object of a safetensors header ({} if absent or not string-valued)."""
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        if hlen > MAX_SAFETENSORS_HEADER:
            return {}
        try:
            header = json.loads(f.read(hlen))
        except ValueError:
            return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        return {}
    return meta


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


def safetensors_values(raw: bytes, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """A tensor's little-endian bytes as a numpy array (BF16 widened exactly to float32)."""
    if dtype not in _ST_DTYPES:
        raise ValueError(f"safetensors dtype {dtype} has no numpy equivalent")
    arr = np.frombuffer(raw, dtype=np.dtype(_ST_DTYPES[dtype]).newbyteorder("<")).reshape(tuple(shape))
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.dtype(_ST_DTYPES[dtype]), copy=False)


def to_safetensors_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Float values cast to a floating safetensors dtype, little-endian.

    BF16 gives the uint16 bit patterns, rounded to nearest even; values that came from
    a bfloat16/float16 tensor (stored exactly in a float32 collection) come back bit for bit.
    """
    if dtype == "BF16":
        bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    if dtype not in ST_FLOAT_DTYPES:
        raise ValueError(f"cannot cast reconstructed values to non-float dtype {dtype}")
    return np.asarray(values).astype(np.dtype(_ST_DTYPES[dtype]).newbyteorder("<"))


def write_safetensors(path: str | os.PathLike, entries: Sequence[dict], data_of: Any, metadata: dict | None = None) -> None:
    """Write a safetensors file, streaming one tensor at a time (atomically: temp file + rename).

    Parameters
    ----------
    entries : sequence of dict
        ``{"name", "dtype" (safetensors code, e.g. "F32"), "shape"}`` in file order.
    data_of : callable
        ``data_of(entry) -> bytes`` (or a uint8 array): the tensor's little-endian bytes,
        exactly ``prod(shape) * itemsize`` of them.
    metadata : dict of str, optional
        The ``__metadata__`` object.

    Raises
    ------
    ValueError
        An unknown dtype, or bytes of the wrong length for a tensor (named).
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for e in entries:
        if e["dtype"] not in _ST_ITEMSIZE:
            raise ValueError(f"tensor {e['name']!r}: unknown safetensors dtype {e['dtype']!r}")
        nbytes = _ST_ITEMSIZE[e["dtype"]]
        for d in e["shape"]:
            nbytes *= int(d)
        header[e["name"]] = {"dtype": e["dtype"], "shape": [int(d) for d in e["shape"]], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for e in entries:
                data = data_of(e)
                data = memoryview(data if isinstance(data, (bytes, bytearray)) else np.ascontiguousarray(data).view(np.uint8)).cast("B")
                begin, end = header[e["name"]]["data_offsets"]
                if len(data) != end - begin:
                    raise ValueError(f"tensor {e['name']!r}: {len(data)} bytes of data, shape {e['shape']} x {e['dtype']} needs {end - begin}")
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---- HDF5 --------------------------------------------------------------------


def _hdf5_stream(path: Path, dataset: str | None) -> Iterator[NamedBlock]:
    import h5py  # optional extra

    with h5py.File(path, "r") as f:
        node = f[dataset] if dataset else f
        if isinstance(node, h5py.Dataset):
            datasets = [node]
        else:
            found: list = []
            node.visititems(lambda _n, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
            datasets = found
        for ds in datasets:
            dname = ds.name.lstrip("/")
            if ds.ndim == 3:
                for i in range(ds.shape[0]):
                    yield f"{dname}[{i}]", ds[i], {"dataset": dname, "index": i}
            else:
                yield dname, ds, {"dataset": dname}  # sliced lazily by the writer


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


def mimo_block(channel: np.ndarray) -> np.ndarray:
    """Reshape one user's channel (NRB, Nr, Nt, Nc) to (Nr*Nt*Nc, NRB) (C order)."""
    if channel.ndim != 4:
        raise ValueError(f"MIMO layout expects (NRB, Nr, Nt, Nc), got shape {channel.shape}")
    return np.ascontiguousarray(np.moveaxis(channel, 0, -1)).reshape(-1, channel.shape[0])


def _mat_variables(path: Path, keys: Sequence[str] | None) -> Iterator[tuple[str, np.ndarray]]:
    import scipy.io

    try:
        available = [w[0] for w in scipy.io.whosmat(path)]
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        yield from _mat73_variables(path, keys)
        return
    for key in keys or available:
        if key not in available:
            raise KeyError(f"{path}: no variable {key!r} (has {', '.join(available)})")
        yield key, scipy.io.loadmat(path, variable_names=[key])[key]


def _mat73_variables(path: Path, keys: Sequence[str] | None) -> Iterator[tuple[str, np.ndarray]]:
    import h5py

    with h5py.File(path, "r") as f:
        available = [k for k in f.keys() if not k.startswith("#") and isinstance(f[k], h5py.Dataset)]
        for key in keys or available:
            if key not in available:
                raise KeyError(f"{path}: no variable {key!r} (has {', '.join(available)})")
            raw = f[key][()]
            if raw.dtype.names and {"real", "imag"} <= set(raw.dtype.names):
                raw = raw["real"] + 1j * raw["imag"]
            yield key, np.asarray(raw).T  # HDF5 stores MATLAB arrays with axes reversed


def _mat_stream(path: Path, keys: Sequence[str] | None, layout: str | None) -> Iterator[NamedBlock]:
    for key, arr in _mat_variables(path, keys):
        if layout == "mimo":
            if arr.ndim == 4:
                yield key, mimo_block(arr), {"variable": key, "layout": "mimo"}
            elif arr.ndim == 5:
                for u in range(arr.shape[0]):
                    yield f"{key}[{u}]", mimo_block(arr[u]), {"variable": key, "user": u}
            else:
                raise ValueError(f"{path}: variable {key!r} has shape {arr.shape}; mimo needs 4-D or 5-D")
        elif arr.ndim == 3:
            for i in range(arr.shape[0]):
                yield f"{key}[{i}]", arr[i], {"variable": key, "index": i}
        else:
            yield key, arr, {"variable": key}
        del arr


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


def _zarr_stream(arr: Any, label: str) -> Iterator[NamedBlock]:
    if arr.ndim == 2:
        yield label, arr, None
        return
    if arr.ndim != 3:
        raise ValueError(f"zarr array {label}: expected (K, m, n) or (m, n), got shape {arr.shape}")
    for i in range(arr.shape[0]):
        yield f"{label}[{i}]", arr[i], None


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
