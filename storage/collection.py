"""Chunked Zarr v3 matrix collections: streaming writer, atomic append, reader.

Layout of one collection (a Zarr v3 group at ``<root>/<name>``)::

    data      (m, N) float32|float64, chunks (chunk_rows, chunk_columns), Blosc-zstd
    offsets   (K+1,) int64   block i is data[:, offsets[i]:offsets[i+1]]
    norms2    (K,)   float64 squared Frobenius norm of each block, computed in float64 on
                     2^-s A at the block's magnitude shift s (pipeline.magnitude; s = 0,
                     the plain norm, unless the block's largest entry is below 2^-401
                     or at least 2^399), so that it never under- or overflows
    attrs["cmsvd"] = {schema_version, kind, rows, dtype, n_blocks, n_columns, names,
                      block_provenance, provenance}

``attrs["cmsvd"]`` (the group's root ``zarr.json``) is the *commit record*: readers only
trust ``offsets[:n_blocks+1]``, ``norms2[:n_blocks]`` and ``data[:, :n_columns]``.
This is what makes appends atomic: an append writes its new columns beyond the
committed extent (the chunk shared with the old tail is rewritten with the old values
unchanged, and each chunk write replaces one object atomically), then the new
``offsets``/``norms2`` entries (beyond the committed ones), and finally rewrites the
root ``zarr.json`` in a single object write.  A failure before that last write leaves
the collection exactly as it was; the writer then shrinks ``data`` back to the
committed extent (best effort, and harmless if it cannot).

New collections are written under ``<root>/.staging/`` and renamed into place on local
disk (an overwrite swaps directories atomically).  On object stores the group lives in a
version prefix ``<root>/<name>/v-<time>-<hex>/`` and ``<root>/<name>/current.json``
points at it; an ingest writes a fresh version and switches the pointer last, then
removes older versions.  A failed or killed ingest therefore leaves the old collection
(or nothing) visible, never a mixture; its leftovers are removed by later writers.

Integrity (schema 2): every array ends its codec chain with crc32c and every chunk is
written, reads go through :class:`storage._integrity.StrictStore` (a missing chunk or a
checksum mismatch raises an error naming the chunk and the blocks it holds), and the
commit record carries a sha256 seal.  Stores written before schema 2 still open, without
these checks.

Writers assume a single writer per collection; readers may run concurrently.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import Any, Iterable, Sequence

import numpy as np
import zarr

from pipeline.magnitude import add_scaled_norm2, scaled_norm2  # the norms2 convention, shared with the numerics

from ._integrity import (
    ARRAY_CONFIG,
    CHECKSUMMED_SCHEMA,
    StrictStore,
    checked_codecs,
    parse_json,
    seal,
    unseal,
)
from ._location import (
    POINTER,
    SCHEMA_VERSION,
    Location,
    block_name_problem,
    check_name,
    collect_versions,
    json_dumps,
    new_version_name,
    publish_local,
    read_pointer,
    resolve,
    short_repr,
    sweep_stale,
    switch_pointer,
)
from .errors import (
    BlockValidationError,
    CollectionExistsError,
    CollectionNotFoundError,
    CorruptedFileError,
    EmptyInputError,
    MissingChunkError,
)

#: Target size of one stored chunk; a chunk is also the writer's buffer.
TARGET_CHUNK_BYTES = 16 * 2**20
#: Below this many columns per chunk at full height, rows are chunked too.
MIN_CHUNK_COLUMNS = 64
#: Upper bound on the bytes fetched by one read of consecutive chunks in ``blocks``.
MAX_READ_BYTES = 64 * 2**20
_META_KEY = "cmsvd"
_VECTOR_CHUNK = 65536
_SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: Bytes per chunk of the ``passthrough`` array (items kept as they are, see
#: :meth:`CollectionWriter.add_passthrough`).
_PASSTHROUGH_CHUNK = 4 * 2**20


def default_codecs() -> list:
    """Blosc + zstd with byte shuffle (multi-threaded, good on floats), then crc32c."""
    return checked_codecs()


def default_chunks(
    rows: int, dtype: np.dtype, chunk_columns: int | None = None, chunk_rows: int | None = None
) -> tuple[int, int]:
    """Pick (chunk_rows, chunk_columns) for ``data``.

    Chunks hold about :data:`TARGET_CHUNK_BYTES`; rows are split only when a full-height
    chunk would have fewer than :data:`MIN_CHUNK_COLUMNS` columns (very tall blocks).
    Chunk boundaries need not align with blocks.
    """
    itemsize = np.dtype(dtype).itemsize
    if chunk_rows is None:
        fits = rows * itemsize * MIN_CHUNK_COLUMNS <= TARGET_CHUNK_BYTES
        chunk_rows = rows if fits else max(1, TARGET_CHUNK_BYTES // (itemsize * MIN_CHUNK_COLUMNS))
    chunk_rows = int(min(max(1, chunk_rows), max(rows, 1)))
    if chunk_columns is None:
        chunk_columns = max(1, TARGET_CHUNK_BYTES // (chunk_rows * itemsize))
        if chunk_columns >= 256:
            chunk_columns -= chunk_columns % 256  # round figures read better in listings
    return chunk_rows, int(max(1, chunk_columns))


def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _SUPPORTED_DTYPES:
        raise ValueError(f"collection dtype must be float32 or float64, got {dt}")
    return dt


class _ColumnSink:
    """Sequential writer along the last axis of a Zarr array, one chunk buffered.

    Starts at column *start* (possibly inside a chunk: the chunk's existing head is
    loaded so that rewriting it keeps the old values).  Memory: one chunk.
    """

    def __init__(self, array: zarr.Array, start: int, head: np.ndarray | None = None) -> None:
        self.array = array
        self.cc = int(array.chunks[-1])
        self.buf_start = (start // self.cc) * self.cc
        self.fill = start - self.buf_start
        self.pos = start
        self.buf = np.zeros(array.shape[:-1] + (self.cc,), dtype=array.dtype)
        if self.fill:
            # *head* comes from a checked read: rewriting an unverified chunk would give
            # damaged values a fresh, valid checksum
            self.buf[..., : self.fill] = array[..., self.buf_start : start] if head is None else head

    def _ensure(self, stop: int) -> None:
        if self.array.shape[-1] < stop:
            self.array.resize(self.array.shape[:-1] + (stop,))

    def write(self, piece: np.ndarray) -> None:
        w = piece.shape[-1]
        done = 0
        while done < w:
            if self.fill == 0 and w - done >= self.cc:
                # whole chunks go straight to the store, no extra copy
                k = (w - done) // self.cc * self.cc
                self._ensure(self.buf_start + k)
                self.array[..., self.buf_start : self.buf_start + k] = piece[..., done : done + k]
                self.buf_start += k
                done += k
                continue
            take = min(self.cc - self.fill, w - done)
            self.buf[..., self.fill : self.fill + take] = piece[..., done : done + take]
            self.fill += take
            done += take
            if self.fill == self.cc:
                self._flush()
        self.pos += w

    def _flush(self) -> None:
        stop = self.buf_start + self.fill
        self._ensure(stop)
        self.array[..., self.buf_start : stop] = self.buf[..., : self.fill]
        if self.fill == self.cc:
            self.buf_start += self.cc
            self.fill = 0

    def close(self) -> int:
        """Write the partial last chunk, trim the array to the written extent."""
        if self.fill:
            self._flush()
        if self.array.shape[-1] != self.pos:
            self.array.resize(self.array.shape[:-1] + (self.pos,))
        self.buf = np.zeros((0,))
        return self.pos


def _target_dtype(src: np.dtype, dst: np.dtype, stack_complex: bool) -> str | None:
    """Return a problem description if *src* cannot go losslessly into *dst*."""
    if src.kind == "c":
        if not stack_complex:
            return f"complex dtype {src} needs stack_complex=True (real rows over imaginary rows)"
        src = np.finfo(src).dtype  # component dtype: complex64 -> float32
    if src.kind not in "iuf":
        return f"non-numeric dtype {src}"
    if not np.can_cast(src, dst, "safe"):
        return f"dtype {src} cannot be stored losslessly in a {dst} collection"
    return None


class CollectionWriter:
    """Stream blocks into a new collection (or append to a published one).

    Use :func:`create_collection` or :meth:`Collection.appender` to obtain one.
    ``append`` validates and writes one block, buffering at most one chunk; if it
    raises, the writer is *poisoned* (nothing more can be appended or published) and
    :meth:`discard` undoes its work.  As a context manager the writer publishes on a
    clean exit and discards on an exception.
    """

    def __init__(
        self,
        root: Location,
        name: str,
        group: zarr.Group,
        meta: dict,
        *,
        offsets: Sequence[int],
        staging: Location | None,
        overwrite: bool,
        stack_complex: bool,
        version: str | None = None,
        head: np.ndarray | None = None,
    ) -> None:
        self._root = root
        self.name = name
        self._group = group
        self._meta = meta
        self._staging = staging
        self._version = version
        self._overwrite = overwrite
        self.stack_complex = stack_complex
        self.rows = int(meta["rows"])
        self.dtype = np.dtype(meta["dtype"])
        self._base_blocks = int(meta["n_blocks"])
        self._base_columns = int(meta["n_columns"])
        self._data = group["data"].with_config(ARRAY_CONFIG)
        self._sink = _ColumnSink(self._data, self._base_columns, head)
        self._offsets = [int(offsets[-1])] if len(offsets) else [0]
        self._norms2: list[float] = []
        self._names: list[str] = []
        self._prov: list[Any] = []
        self._known = set(meta["names"])
        self._state = "open"
        self._pt_sink: _ColumnSink | None = None
        self._pt_entries: list[dict] = []

    # ---- properties -------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        """Blocks in the collection once published (existing + appended)."""
        return self._base_blocks + len(self._names)

    @property
    def appending(self) -> bool:
        return self._staging is None

    # ---- writing ----------------------------------------------------------
    def append(self, block: Any, name: str | None = None, provenance: Any = None) -> int:
        """Validate and write one block; return its index in the collection.

        Parameters
        ----------
        block : array-like, 2-D (rows x n)
            ndarray, memmap, h5py or zarr array: it is read in chunk-wide column
            slices, so a memory-mapped block is never loaded whole.
        name : str, optional
            Unique block name; default ``"block-<index>"``.
        provenance : JSON-serialisable, optional
            Stored per block in the collection attributes.

        Raises
        ------
        BlockValidationError
            NaN/Inf, wrong rows, non-numeric or lossy dtype, complex without
            ``stack_complex``, empty block, duplicate or non-string name.
        """
        if self._state != "open":
            raise RuntimeError(f"collection writer for {self.name!r} is {self._state}")
        index = self.n_blocks
        name = f"block-{index}" if name is None else name
        try:
            self._check_name(index, name)
            width, norm2 = self._write_block(index, name, block)
        except BaseException:
            self._state = "failed"
            raise
        self._offsets.append(self._offsets[-1] + width)
        self._norms2.append(norm2)
        self._names.append(name)
        self._known.add(name)
        self._prov.append(provenance)
        return index

    def extend(self, blocks: Iterable[Any], names: Iterable[str] | None = None) -> "CollectionWriter":
        """Append every block of an iterable (names zipped when given)."""
        name_iter = iter(names) if names is not None else None
        for block in blocks:
            self.append(block, None if name_iter is None else next(name_iter))
        return self

    def _check_name(self, index: int, name: Any) -> None:
        problem = block_name_problem(name)
        if problem:
            # the name is shown shortened: it may be 100k characters or hold a newline
            raise BlockValidationError(index, None, f"invalid block name {short_repr(name)}: {problem}")
        if name in self._known:
            raise BlockValidationError(index, name, "duplicate block name")

    def _write_block(self, index: int, name: str, block: Any) -> tuple[int, float]:
        shape = getattr(block, "shape", None)
        dtype = getattr(block, "dtype", None)
        if shape is None or dtype is None:
            block = np.asarray(block)
            shape, dtype = block.shape, block.dtype
        dtype = np.dtype(dtype)
        if len(shape) != 2:
            raise BlockValidationError(index, name, f"expected a 2-D array, got shape {tuple(shape)}")
        problem = _target_dtype(dtype, self.dtype, self.stack_complex)
        if problem:
            raise BlockValidationError(index, name, problem)
        rows = shape[0] * (2 if dtype.kind == "c" else 1)
        if rows != self.rows:
            raise BlockValidationError(index, name, f"has {rows} rows, the collection has {self.rows}")
        width = int(shape[1])
        if width == 0:
            raise BlockValidationError(index, name, "has no columns")
        norm2: tuple[int | None, float] = (None, 0.0)  # (magnitude shift, squared norm at it)
        step = self._sink.cc
        for a in range(0, width, step):
            piece = np.asarray(block[:, a : a + step])
            if piece.dtype.kind == "c":
                piece = np.concatenate([piece.real, piece.imag], axis=0)
            if not np.isfinite(piece).all():
                bad = "NaN" if np.isnan(piece).any() else "Inf"
                raise BlockValidationError(index, name, f"contains {bad} (column {a + int(np.argwhere(~np.isfinite(piece))[0][1])})")
            if piece.dtype.kind in "iu" and piece.dtype.itemsize >= 8 and piece.size:
                # numpy calls int64 -> float64 "safe", but integers beyond 2^53 are rounded
                limit = piece.dtype.type(2**53)
                big = (piece > limit) | (piece < -limit) if piece.dtype.kind == "i" else piece > limit
                if big.any():
                    r, c = np.argwhere(big)[0]
                    raise BlockValidationError(
                        index, name,
                        f"holds integer {int(piece[r, c])} (column {a + int(c)}) beyond 2^53, which "
                        f"{self.dtype} cannot store exactly (lossless casts only)",
                    )
            piece = piece.astype(self.dtype, copy=False)
            norm2 = add_scaled_norm2(norm2, scaled_norm2(piece))
            self._sink.write(piece)
        return width, norm2[1]

    def add_passthrough(self, name: str, data: Any, info: dict | None = None) -> None:
        """Keep a source item that is not a block (a 1-D bias, an integer tensor...) as raw bytes.

        Passthrough items are not part of ``data``: clustering never sees them, and
        they come back byte for byte (:meth:`Collection.passthrough`), so a round trip
        restores the whole source file.  They live in the ``passthrough`` array (uint8,
        crc32c-checked chunks) with their name, byte range, sha256 and *info* (for
        instance the source dtype, shape and why the item is not a block) in the
        commit record.

        Parameters
        ----------
        name : str
            Unique among the passthrough items (source names, e.g. tensor names).
        data : array-like or bytes
            Read as its raw bytes (C order); pass little-endian data for portability.
        info : dict, optional
            JSON-serialisable description stored with the item.

        Raises
        ------
        ValueError
            An append (passthrough items belong to a new collection), a duplicate or
            invalid name.
        """
        if self._state != "open":
            raise RuntimeError(f"collection writer for {self.name!r} is {self._state}")
        if self.appending:
            raise ValueError(f"collection {self.name!r}: passthrough item {short_repr(name)} can only be added to a new collection")
        problem = block_name_problem(name)
        if problem:
            raise ValueError(f"collection {self.name!r}: invalid passthrough name {short_repr(name)}: {problem}")
        if any(e["name"] == name for e in self._pt_entries):
            raise ValueError(f"collection {self.name!r}: duplicate passthrough item {name!r}")
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                raw = np.frombuffer(data, dtype=np.uint8)
            else:
                raw = np.ascontiguousarray(np.asarray(data)).reshape(-1).view(np.uint8)
            if self._pt_sink is None:
                arr = self._group.create_array(
                    "passthrough", shape=(0,), chunks=(_PASSTHROUGH_CHUNK,), dtype=np.uint8,
                    compressors=default_codecs(), fill_value=0, config=ARRAY_CONFIG)
                self._pt_signature = _array_signature(arr)
                self._pt_sink = _ColumnSink(arr.with_config(ARRAY_CONFIG), 0)
            start = self._pt_sink.pos
            digest = hashlib.sha256()
            for a in range(0, raw.size, _PASSTHROUGH_CHUNK):
                piece = np.array(raw[a : a + _PASSTHROUGH_CHUNK])  # one copy: memmaps page in here
                digest.update(piece.tobytes())
                self._pt_sink.write(piece)
        except BaseException:
            self._state = "failed"
            raise
        self._pt_entries.append({**(info or {}), "name": name, "offset": int(start), "nbytes": int(raw.size),
                                 "sha256": digest.hexdigest()})

    # ---- finishing --------------------------------------------------------
    def _commit_record(self) -> dict:
        meta = dict(self._meta)
        meta["n_blocks"] = self.n_blocks
        meta["n_columns"] = self._offsets[-1]
        meta["names"] = list(self._meta["names"]) + self._names
        prov = self._meta.get("block_provenance")
        if prov is not None or any(p is not None for p in self._prov):
            prov = list(prov) if prov is not None else [None] * self._base_blocks
            meta["block_provenance"] = prov + self._prov
        if self._pt_entries:
            meta["passthrough"] = list(self._meta.get("passthrough") or []) + self._pt_entries
            meta["array_sha256"] = {**(self._meta.get("array_sha256") or {}), "passthrough": self._pt_signature}
        meta["modified"] = _now()
        return meta  # sealed by publish, once complete

    def _write_vectors(self) -> None:
        k0, k1 = self._base_blocks, self.n_blocks
        offsets = self._group["offsets"].with_config(ARRAY_CONFIG)
        norms2 = self._group["norms2"].with_config(ARRAY_CONFIG)
        if offsets.shape[0] != k1 + 1:
            offsets.resize((k1 + 1,))
        if norms2.shape[0] != k1:
            norms2.resize((k1,))
        if k1 > k0:
            offsets[k0 : k1 + 1] = np.asarray(self._offsets, dtype=np.int64)
            norms2[k0:k1] = np.asarray(self._norms2, dtype=np.float64)

    def publish(self) -> "Collection":
        """Finish writing and make the blocks visible; return the opened collection.

        For a new collection this moves the staging group into place (failing with
        :class:`CollectionExistsError` if another one was published meanwhile and
        ``overwrite`` is false).  For an append it commits the new extent with one
        metadata write.

        Raises
        ------
        EmptyInputError
            A new collection without any block.
        """
        if self._state != "open":
            raise RuntimeError(f"collection writer for {self.name!r} is {self._state}; cannot publish")
        if not self.appending and not self._names:
            self.discard()
            raise EmptyInputError(f"collection {self.name!r}: no blocks to ingest")
        try:
            self._sink.close()
            if self._pt_sink is not None:
                self._pt_sink.close()
            self._write_vectors()
            meta = self._commit_record()
            if not self.appending:
                meta["state"] = "published"
            if int(meta.get("schema_version", 1)) >= CHECKSUMMED_SCHEMA:
                meta = seal(meta)
            self._group.attrs.update({_META_KEY: meta})  # the commit point
            if not self.appending:
                self._publish_new()
        except BaseException:
            self._state = "failed"
            self.discard()
            raise
        self._state = "published"
        return open_collection(self._root.url, self.name, storage_options=self._root.storage_options)

    def _publish_new(self) -> None:
        final = self._root.child(self.name)
        try:
            if final.is_local:
                publish_local(self._staging, final, self._overwrite)
                return
            if not self._overwrite and final.exists("zarr.json"):  # a pre-versioning copy
                raise FileExistsError(final.url)
            record = {"kind": "collection", "version": self._version, "written": _now()}
            switch_pointer(final, record, self._overwrite)
        except FileExistsError:
            raise CollectionExistsError(f"collection {self.name!r} already exists at {self._root.url}") from None
        self._staging = None  # the version is published: never discard it now
        collect_versions(final, self._version)

    def discard(self) -> None:
        """Drop everything written by this writer (the staging group, or appended columns)."""
        if self._state == "published":
            return
        self._state = "discarded"
        if self._staging is not None:
            self._staging.rm()
            return
        try:  # appended columns sit beyond the committed extent: trim them
            self._data.resize((self.rows, self._base_columns))
        except Exception:  # pragma: no cover - invisible to readers anyway
            pass

    def __enter__(self) -> "CollectionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._state == "open":
            self.publish()
        elif self._state not in ("published", "discarded"):
            self.discard()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def create_collection(
    url: str,
    name: str,
    rows: int,
    dtype: Any = np.float64,
    *,
    chunk_columns: int | None = None,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    stack_complex: bool = False,
    provenance: dict | None = None,
    storage_options: dict | None = None,
) -> CollectionWriter:
    """Start a new collection, written under a staging prefix until published.

    Parameters
    ----------
    url : str
        Root URL (local path, ``file://``, ``memory://``, ``s3://``).
    name : str
        Collection name (a safe path component).
    rows : int
        Row count m shared by every block (after complex stacking).
    dtype : float32 or float64
        Stored dtype; blocks are cast only when lossless.
    chunk_columns, chunk_rows : int, optional
        Chunk shape of ``data``; default from :func:`default_chunks` (~16 MiB).
    overwrite : bool
        Replace an existing collection when publishing.
    stack_complex : bool
        Accept complex blocks, stored as real rows over imaginary rows.
    provenance : dict, optional
        Collection-level provenance stored in the attributes.
    storage_options : dict, optional
        fsspec options (e.g. S3 endpoint).

    Returns
    -------
    CollectionWriter
    """
    check_name(name, "collection name")
    dt = _check_dtype(dtype)
    rows = int(rows)
    if rows <= 0:
        raise ValueError(f"collection {name!r}: rows must be positive, got {rows}")
    root = resolve(url, storage_options)
    final = root.child(name)
    if not overwrite and _is_published(final):
        raise CollectionExistsError(f"collection {name!r} already exists at {root.url}")
    version = None
    if final.is_local:
        sweep_stale(root.child(".staging"))  # folders of killed ingests
        staging = root.child(".staging", new_version_name(f"{name}-"))
    else:
        version = new_version_name()
        staging = final.child(version)  # invisible until the pointer names it
    cr, cc = default_chunks(rows, dt, chunk_columns, chunk_rows)
    group = zarr.open_group(store=staging.zarr_store(), mode="w")
    opts = {"compressors": default_codecs(), "fill_value": 0, "config": ARRAY_CONFIG}
    group.create_array("data", shape=(rows, 0), chunks=(cr, cc), dtype=dt, **opts)
    offsets = group.create_array("offsets", shape=(1,), chunks=(_VECTOR_CHUNK,), dtype=np.int64, **opts)
    offsets[:] = 0  # written explicitly: every chunk of a schema-2 array exists
    group.create_array("norms2", shape=(0,), chunks=(_VECTOR_CHUNK,), dtype=np.float64, **opts)
    signatures = {k: _array_signature(group[k]) for k in ("data", "offsets", "norms2")}
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": "collection",
        "state": "staging",
        "rows": rows,
        "dtype": dt.name,
        "n_blocks": 0,
        "n_columns": 0,
        "names": [],
        "block_provenance": None,
        "provenance": provenance or {},
        "chunks": [cr, cc],
        "array_sha256": signatures,
        "created": _now(),
    }
    group.attrs.update({_META_KEY: meta})
    return CollectionWriter(
        root, name, group, meta, offsets=[0], staging=staging, overwrite=overwrite, stack_complex=stack_complex,
        version=version,
    )


def _array_signature(arr: zarr.Array) -> str:
    """sha256 of an array's metadata except its shape (which appends change)."""
    md = {k: v for k, v in arr.metadata.to_dict().items() if k not in ("shape", "attributes")}
    return hashlib.sha256(json_dumps(md).encode()).hexdigest()


def _is_published(final: Location) -> bool:
    final.invalidate()
    if final.is_local:
        return final.exists("zarr.json")
    return final.exists(POINTER) or final.exists("zarr.json")


def _current(final: Location, name: str, root: Location) -> Location:
    """Location of the published group: the pointer's version, else the legacy in-place group."""
    if not final.is_local:
        pointer = read_pointer(final)
        if pointer is not None:
            return final.child(pointer["version"])
    if not final.exists("zarr.json"):
        if final.is_local and final.exists("data"):  # published folders always hold zarr.json
            where = final.child("zarr.json").url
            raise CorruptedFileError(f"collection {name!r}: {where} is missing (damaged or half-deleted collection)", path=where)
        raise CollectionNotFoundError(f"no collection {name!r} at {root.url}")
    return final


def open_collection(url: str, name: str, *, storage_options: dict | None = None) -> "Collection":
    """Open a published collection for reading.

    Schema-2 collections are checked on open (sealed commit record, array metadata,
    offsets and norms consistent with it) and on every read (crc32c, chunk presence).

    Raises
    ------
    CollectionNotFoundError
        Nothing published under that name (staging leftovers are ignored).
    CorruptedFileError
        A metadata file is unreadable or inconsistent (the message names it).
    """
    check_name(name, "collection name")
    root = resolve(url, storage_options)
    final = root.child(name)
    final.invalidate()
    loc = _current(final, name, root)
    where = loc.child("zarr.json").url
    try:
        raw = loc.read_bytes("zarr.json")
    except FileNotFoundError:  # the pointer names a version that is not there
        raise CorruptedFileError(f"collection {name!r}: {where} is missing", path=where) from None
    doc = parse_json(raw, where)
    meta = doc.get("attributes", {}).get(_META_KEY) if isinstance(doc, dict) and isinstance(doc.get("attributes"), dict) else None
    if not isinstance(meta, dict) or meta.get("kind") != "collection":
        raise CorruptedFileError(f"collection {name!r}: {where} holds no cmsvd commit record (damaged, or not a cmsvd collection)", path=where)
    sealed = "sha256" in meta
    meta = unseal(meta, where)  # a present seal is checked before any field is trusted
    try:
        schema = int(meta.get("schema_version", -1))
    except (TypeError, ValueError):
        raise CorruptedFileError(f"collection {name!r}: {where} is corrupted (bad schema_version)", path=where) from None
    if schema > SCHEMA_VERSION:
        raise ValueError(f"collection {name!r} has schema {schema}, newer than {SCHEMA_VERSION}: upgrade cmsvd")
    checked = schema >= CHECKSUMMED_SCHEMA
    if checked and not sealed:
        raise CorruptedFileError(f"collection {name!r}: {where} is corrupted (its sha256 seal is missing)", path=where)
    store = loc.zarr_store(read_only=True)
    if checked:
        store = StrictStore(store, loc.url, checksummed=True)
    try:
        group = zarr.open_group(store=store, mode="r")
    except Exception as exc:  # noqa: BLE001 - any parse failure of the metadata
        raise CorruptedFileError(f"collection {name!r}: {where} is corrupted ({exc})", path=where) from None
    return Collection(root, name, group, meta, loc=loc, checked=checked)


class Collection:
    """Read access to a published collection (see the module docstring for the layout).

    Attributes
    ----------
    url, name : str
    rows, n_blocks, n_columns : int
    dtype : numpy.dtype
    offsets : ndarray of int64, shape (K+1,)
    widths : ndarray of int64, shape (K,)
    norms2 : ndarray of float64, shape (K,)
    names : list of str
    provenance : dict
    block_provenance : list or None
    chunks : tuple of int
        Zarr chunk shape of ``data``.
    """

    def __init__(
        self, root: Location, name: str, group: zarr.Group, meta: dict, *, loc: Location | None = None, checked: bool = False
    ) -> None:
        self._root = root
        self._loc = loc if loc is not None else root.child(name)
        self.url = root.url
        self.name = name
        self._group = group
        self._meta = meta
        self.checksummed = checked
        record = self._loc.child("zarr.json").url
        try:
            self.rows = int(meta["rows"])
            self.dtype = np.dtype(meta["dtype"])
            self.n_blocks = int(meta["n_blocks"])
            self.n_columns = int(meta["n_columns"])
            self.names: list[str] = list(meta["names"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptedFileError(f"collection {name!r}: {record} is corrupted (bad field {exc})", path=record) from None
        self.provenance: dict = dict(meta.get("provenance") or {})
        self.block_provenance = meta.get("block_provenance")
        #: Items kept as they are, outside ``data`` (see :meth:`passthrough`).
        self.passthrough_entries: list[dict] = [dict(e) for e in (meta.get("passthrough") or [])]
        self._data = self._array("data")
        offsets_arr, norms_arr = self._array("offsets"), self._array("norms2")
        self._check_arrays(self._data, offsets_arr, norms_arr)
        # only the committed prefix is trusted (an append may have written beyond it)
        self.offsets = self._read(offsets_arr, slice(0, self.n_blocks + 1), "offsets").astype(np.int64, copy=False)
        self.norms2 = self._read(norms_arr, slice(0, self.n_blocks), "norms2").astype(np.float64, copy=False)
        self.widths = np.diff(self.offsets)
        self.chunks = tuple(int(c) for c in self._data.chunks)
        self._check_vectors()

    # ---- checks ------------------------------------------------------------
    def _array(self, key: str) -> zarr.Array:
        where = self._loc.child(key, "zarr.json").url
        try:
            arr = self._group[key]
        except KeyError:
            raise CorruptedFileError(f"collection {self.name!r}: array {key!r} is missing ({where})", path=where) from None
        except Exception as exc:  # noqa: BLE001 - unparsable array metadata
            raise CorruptedFileError(f"collection {self.name!r}: {where} is corrupted ({exc})", path=where) from None
        if not isinstance(arr, zarr.Array):
            raise CorruptedFileError(f"collection {self.name!r}: {where} is not an array", path=where)
        return arr

    def _check_arrays(self, data: zarr.Array, offsets: zarr.Array, norms2: zarr.Array) -> None:
        """Array metadata must agree with the commit record (catches damaged zarr.json)."""
        problems = []
        if data.dtype != self.dtype or data.ndim != 2 or data.shape[0] != self.rows or data.shape[1] < self.n_columns:
            problems.append(("data", f"shape {data.shape} {data.dtype}, record says ({self.rows}, >={self.n_columns}) {self.dtype}"))
        elif self._meta.get("chunks") is not None and list(data.chunks) != list(self._meta["chunks"]):
            problems.append(("data", f"chunks {data.chunks}, record says {tuple(self._meta['chunks'])}"))
        if offsets.dtype != np.int64 or offsets.ndim != 1 or offsets.shape[0] < self.n_blocks + 1:
            problems.append(("offsets", f"shape {offsets.shape} {offsets.dtype}, record says >= {self.n_blocks + 1} int64"))
        if norms2.dtype != np.float64 or norms2.ndim != 1 or norms2.shape[0] < self.n_blocks:
            problems.append(("norms2", f"shape {norms2.shape} {norms2.dtype}, record says >= {self.n_blocks} float64"))
        signatures = self._meta.get("array_sha256") or {}
        for key, arr in (("data", data), ("offsets", offsets), ("norms2", norms2)):
            if key in signatures and _array_signature(arr) != signatures[key]:
                problems.append((key, "metadata differs from the one recorded at creation"))
        if self.checksummed:
            for key, arr in (("data", data), ("offsets", offsets), ("norms2", norms2)):
                codecs = [c.to_dict()["name"] for c in arr.metadata.codecs]
                if not codecs or codecs[-1] != "crc32c":
                    problems.append((key, f"codecs {codecs} lack the crc32c checksum"))
        if problems:
            key, what = problems[0]
            where = self._loc.child(key, "zarr.json").url
            raise CorruptedFileError(f"collection {self.name!r}: {where} is corrupted or inconsistent: {what}", path=where)

    def _check_vectors(self) -> None:
        off, k = self.offsets, self.n_blocks
        where = self._loc.url
        if off.size != k + 1 or off[0] != 0 or off[-1] != self.n_columns or (k and (np.diff(off) <= 0).any()):
            raise CorruptedFileError(
                f"collection {self.name!r}: offsets are inconsistent with the commit record "
                f"(must rise from 0 to {self.n_columns} over {k} blocks) in {where}/offsets",
                path=f"{where}/offsets",
            )
        if not np.isfinite(self.norms2).all() or (self.norms2 < 0).any():
            raise CorruptedFileError(f"collection {self.name!r}: norms2 holds negative or non-finite values ({where}/norms2)", path=f"{where}/norms2")
        if len(self.names) != k:
            raise CorruptedFileError(f"collection {self.name!r}: {len(self.names)} names for {k} blocks ({where}/zarr.json)", path=f"{where}/zarr.json")

    def _blocks_of_columns(self, start: int, stop: int) -> str:
        if not hasattr(self, "offsets") or stop <= start:
            return ""
        a = int(np.searchsorted(self.offsets, start, side="right")) - 1
        b = int(np.searchsorted(self.offsets, stop, side="left")) - 1
        a, b = max(a, 0), min(max(b, a), self.n_blocks - 1)
        if a == b:
            return f"block {a} ({self.names[a]!r})"
        return f"blocks {a} ({self.names[a]!r}) to {b} ({self.names[b]!r})"

    def _chunk_blocks(self, path: str | None) -> str:
        """Blocks held by a damaged ``data`` chunk, from its key ``.../data/c/<r>/<c>``."""
        if not path or "/data/c/" not in path or not hasattr(self, "offsets"):
            return ""
        try:
            c = int(path.rstrip("/").rsplit("/", 1)[-1])
        except ValueError:
            return ""
        cc = int(self._data.chunks[1])
        start, stop = c * cc, min((c + 1) * cc, self.n_columns)
        held = self._blocks_of_columns(start, stop)
        return f"; it holds columns {start}:{stop}, {held}" if held else ""

    def _replaced(self) -> str:
        if self._loc.is_local or self._loc is self._root.child(self.name):
            return ""
        try:
            pointer = read_pointer(self._root.child(self.name))
        except Exception:  # noqa: BLE001 - only a hint
            return ""
        if pointer is None or self._loc.path.rstrip("/").endswith("/" + str(pointer.get("version"))):
            return ""
        return " (the collection was replaced while being read: reopen it)"

    def _read(self, arr: zarr.Array, selection: Any, what: str) -> np.ndarray:
        """A read that names the damaged chunk and blocks instead of returning wrong numbers."""
        try:
            return np.asarray(arr[selection])
        except MissingChunkError as exc:
            raise MissingChunkError(f"collection {self.name!r}, {what}: {exc}{self._chunk_blocks(exc.path)}{self._replaced()}", path=exc.path) from None
        except CorruptedFileError as exc:
            raise CorruptedFileError(f"collection {self.name!r}, {what}: {exc}{self._chunk_blocks(exc.path)}", path=exc.path) from None
        except (ValueError, RuntimeError, TypeError) as exc:  # pre-checksum stores: codec errors
            raise CorruptedFileError(
                f"collection {self.name!r}, {what}: stored chunk cannot be decoded, it is corrupted ({exc})", path=self._loc.url
            ) from None

    def __len__(self) -> int:
        return self.n_blocks

    @property
    def passthrough_names(self) -> list[str]:
        """Names of the items kept as they are (not blocks), in source order."""
        return [e["name"] for e in self.passthrough_entries]

    def passthrough(self, name: str) -> bytes:
        """The raw bytes of a passthrough item, checked against the sha256 recorded at ingest.

        Raises
        ------
        KeyError
            No passthrough item of that name.
        CorruptedFileError
            The bytes differ from those ingested (or a chunk is damaged or missing).
        """
        def read(selection: Any, what: str) -> np.ndarray:
            try:
                arr = self._group["passthrough"]
            except KeyError:
                where = self._loc.child("passthrough").url
                raise CorruptedFileError(f"collection {self.name!r}: array {where} is missing", path=where) from None
            return self._read(arr, selection, what)

        return read_passthrough(read, self.passthrough_entries, name, f"collection {self.name!r}")

    def __repr__(self) -> str:
        return (
            f"Collection({self.name!r}, rows={self.rows}, n_blocks={self.n_blocks}, "
            f"n_columns={self.n_columns}, dtype={self.dtype})"
        )

    @property
    def storage_options(self) -> dict:
        return dict(self._root.storage_options)

    @property
    def nbytes(self) -> int:
        """Uncompressed size of the data (rows x n_columns x itemsize)."""
        return self.rows * self.n_columns * self.dtype.itemsize

    @property
    def nbytes_stored(self) -> int:
        """Bytes on disk / in the bucket of the published version."""
        return self._loc.du()

    def _index(self, i: Any) -> int:
        try:
            j = int(i)
        except (TypeError, ValueError):
            raise IndexError(f"block index {i!r} is not an integer") from None
        if j != i or not 0 <= j < self.n_blocks:
            raise IndexError(f"block index {i!r} out of range for collection {self.name!r} with {self.n_blocks} blocks")
        return j

    def block(self, i: int) -> np.ndarray:
        """Block *i* as an (rows x width) array."""
        i = self._index(i)
        return self._read(self._data, (slice(None), slice(int(self.offsets[i]), int(self.offsets[i + 1]))), f"block {i} ({self.names[i]!r})")

    def column_range(self, start: int, stop: int) -> np.ndarray:
        """Columns ``start:stop`` of the concatenated data."""
        if not 0 <= start <= stop <= self.n_columns:
            raise IndexError(f"column range {start}:{stop} outside 0:{self.n_columns}")
        what = f"columns {start}:{stop} ({self._blocks_of_columns(start, stop)})"
        return self._read(self._data, (slice(None), slice(start, stop)), what)

    def blocks(self, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Gather many blocks side by side, in the order given.

        Every chunk column needed is read once (consecutive chunks in one request of
        at most :data:`MAX_READ_BYTES`), not once per block.

        Returns
        -------
        data : ndarray, shape (rows, sum of widths)
        offsets : ndarray of int64, shape (len(indices)+1,)
            Block ``indices[j]`` is ``data[:, offsets[j]:offsets[j+1]]``.
        """
        idx = [self._index(i) for i in indices]
        out_off = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(self.widths[idx] if idx else [], out=out_off[1:])
        out = np.empty((self.rows, int(out_off[-1])), dtype=self.dtype)
        first: dict[int, int] = {}
        for j, i in enumerate(idx):
            first.setdefault(i, int(out_off[j]))
        runs = self._runs(sorted(first))
        cur, cur_data = None, None
        for i in sorted(first):
            s, e, d = int(self.offsets[i]), int(self.offsets[i + 1]), first[i]
            col = s
            while col < e:
                run = runs[col // self.chunks[1]]
                if run != cur:
                    what = f"columns {run[0]}:{run[1]} ({self._blocks_of_columns(run[0], run[1])})"
                    cur, cur_data = run, self._read(self._data, (slice(None), slice(run[0], run[1])), what)
                stop = min(e, run[1])
                out[:, d + col - s : d + stop - s] = cur_data[:, col - run[0] : stop - run[0]]
                col = stop
        for j, i in enumerate(idx):  # repeated indices: copy from the first occurrence
            if out_off[j] != first[i]:
                out[:, out_off[j] : out_off[j + 1]] = out[:, first[i] : first[i] + self.widths[i]]
        return out, out_off

    def _runs(self, sorted_blocks: list[int]) -> dict[int, tuple[int, int]]:
        """Map each needed chunk column to the (start, stop) columns of its read."""
        cc = self.chunks[1]
        needed: set[int] = set()
        for i in sorted_blocks:
            s, e = int(self.offsets[i]), int(self.offsets[i + 1])
            needed.update(range(s // cc, (e - 1) // cc + 1))
        per_run = max(1, MAX_READ_BYTES // max(1, self.rows * cc * self.dtype.itemsize))
        runs: dict[int, tuple[int, int]] = {}
        chunk_ids = sorted(needed)
        k = 0
        while k < len(chunk_ids):
            j = k
            while j + 1 < len(chunk_ids) and chunk_ids[j + 1] == chunk_ids[j] + 1 and j + 1 - k < per_run:
                j += 1
            bounds = (chunk_ids[k] * cc, min((chunk_ids[j] + 1) * cc, self.n_columns))
            for c in chunk_ids[k : j + 1]:
                runs[c] = bounds
            k = j + 1
        return runs

    def to_dask(self) -> Any:
        """Dask array of ``data[:, :n_columns]`` with chunks equal to the Zarr chunks."""
        import dask.array as da

        return da.from_zarr(self._data)[:, : self.n_columns]

    def verify(self) -> dict:
        """Read every committed chunk (checksums, presence) and recompute every block's norm.

        Returns
        -------
        dict
            ``blocks``, ``columns``, ``checksummed`` (False for a pre-schema-2 store,
            whose damaged chunks are caught only when they no longer decode or change a
            block's norm).

        Raises
        ------
        CorruptedFileError
            Naming the first damaged chunk or block.
        """
        first = 0
        per_column = max(1, self.rows * self.dtype.itemsize)
        while first < self.n_blocks:
            stop = first + 1
            while stop < self.n_blocks and (self.offsets[stop + 1] - self.offsets[first]) * per_column <= MAX_READ_BYTES:
                stop += 1
            s0 = int(self.offsets[first])
            data = self.column_range(s0, int(self.offsets[stop]))
            for i in range(first, stop):
                n2 = scaled_norm2(data[:, int(self.offsets[i]) - s0 : int(self.offsets[i + 1]) - s0])[1]
                if not np.isclose(n2, self.norms2[i], rtol=1e-9, atol=0.0):
                    raise CorruptedFileError(
                        f"collection {self.name!r}, block {i} ({self.names[i]!r}): squared norm {n2!r} differs from "
                        f"the {self.norms2[i]!r} recorded at ingest: its data is corrupted",
                        path=f"{self._loc.url}/data",
                    )
            first = stop
        for name in self.passthrough_names:  # raw items: their sha256 from ingest
            self.passthrough(name)
        out = {"blocks": self.n_blocks, "columns": self.n_columns, "checksummed": self.checksummed}
        if self.passthrough_entries:
            out["passthrough"] = len(self.passthrough_entries)
        return out

    def fingerprint(self) -> str:
        """Cheap content fingerprint (shape, dtype, names, offsets, norms2)."""
        h = hashlib.sha256()
        h.update(json_dumps([self.rows, self.dtype.name, self.n_blocks, self.n_columns, self.names]).encode())
        h.update(self.offsets.astype("<i8").tobytes())
        h.update(self.norms2.astype("<f8").tobytes())
        return h.hexdigest()

    def appender(self, *, stack_complex: bool = False) -> CollectionWriter:
        """A writer that appends blocks to this collection atomically (see module doc)."""
        group = zarr.open_group(store=self._loc.zarr_store(), mode="r+")
        meta = {k: v for k, v in self._meta.items()}  # already unsealed and checked
        cc = int(self._data.chunks[1])
        tail = (self.n_columns // cc) * cc
        head = None
        if tail < self.n_columns:  # the shared chunk is rewritten: read it verified
            head = self._read(self._data, (slice(None), slice(tail, self.n_columns)), "the last chunk (append)")
        return CollectionWriter(
            self._root, self.name, group, meta, offsets=self.offsets[-1:], staging=None, overwrite=False,
            stack_complex=stack_complex, head=head,
        )

    def append_blocks(
        self, blocks: Iterable[Any], names: Iterable[str] | None = None, *, stack_complex: bool = False
    ) -> "Collection":
        """Append blocks atomically (all or nothing) and return the reopened collection."""
        with self.appender(stack_complex=stack_complex) as w:
            w.extend(blocks, names)
        return open_collection(self.url, self.name, storage_options=self.storage_options)


def read_passthrough(read: Any, entries: list[dict], name: str, what: str) -> bytes:
    """Bytes of passthrough item *name*, sha256-checked; ``read(selection, what)`` reads the
    ``passthrough`` array.  Shared by collections and artifacts (which copy the items of
    their collection).
    """
    entry = next((e for e in entries if e.get("name") == name), None)
    if entry is None:
        raise KeyError(f"{what}: no passthrough item {name!r}")
    start, nbytes = int(entry["offset"]), int(entry["nbytes"])
    if nbytes == 0:
        data = b""
    else:
        data = np.asarray(read(slice(start, start + nbytes), f"passthrough item {name!r}")).tobytes()
    if len(data) != nbytes or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CorruptedFileError(f"{what}: passthrough item {name!r} is corrupted (sha256 differs from the one recorded at ingest)", path=what)
    return data


def delete_collection(url: str, name: str, *, storage_options: dict | None = None) -> None:
    """Remove a collection (pointer or marker first, so it disappears before its data)."""
    check_name(name, "collection name")
    loc = resolve(url, storage_options).child(name)
    if not loc.is_local:
        loc.rm(POINTER)
    loc.rm("zarr.json")
    loc.rm()


def list_collections(url: str, *, storage_options: dict | None = None) -> list[str]:
    """Names of the published collections under a root URL."""
    root = resolve(url, storage_options)
    root.invalidate()
    try:
        entries = root.fs.ls(root.path, detail=False)
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        base = entry.rstrip("/").rsplit("/", 1)[-1]
        if base.startswith(".") or base in ("runs", "artifacts"):
            continue
        if root.exists(base, "zarr.json") or (not root.is_local and root.exists(base, POINTER)):
            names.append(base)
    return sorted(names)
