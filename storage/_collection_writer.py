"""Collection writing: :class:`CollectionWriter`, :func:`create_collection` and the
staging / publish / append machinery (see :mod:`storage.collection` for the rules).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import zarr

from pipeline.magnitude import add_scaled_norm2, scaled_norm2  # the norms2 convention, shared with the numerics

from ._collection_format import (
    _META_KEY,
    _PASSTHROUGH_CHUNK,
    _SUPPORTED_DTYPES,
    _VECTOR_CHUNK,
    _array_signature,
    _ColumnSink,
    default_chunks,
    default_codecs,
)
from ._collection_reader import open_collection
from ._integrity import ARRAY_CONFIG, CHECKSUMMED_SCHEMA, seal
from ._location import SCHEMA_VERSION, Location, resolve, utc_now as _now
from ._names import block_name_problem, check_name, short_repr
from ._publish import POINTER, collect_versions, new_version_name, publish_local, sweep_stale, switch_pointer
from .errors import BlockValidationError, CollectionExistsError, EmptyInputError

if TYPE_CHECKING:
    from ._collection_reader import Collection

def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _SUPPORTED_DTYPES:
        raise ValueError(f"collection dtype must be float32 or float64, got {dt}")
    return dt


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
        self._append_source: dict = {}  # what record_append names
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
    def record_append(self, source: dict) -> None:
        """Record this append in the commit record (``version`` + 1 and an ``appends``
        entry naming its first block, its block count and ``source``'s format and path)."""
        self._append_source = {k: source[k] for k in ("format", "source") if k in source}

    def _commit_record(self) -> dict:
        meta = dict(self._meta)
        if self.appending and self.n_blocks > self._base_blocks:
            version = int(meta.get("version", 1)) + 1
            meta["version"] = version
            meta["appends"] = list(meta.get("appends") or []) + [{
                "version": version, "first_block": self._base_blocks, "n_blocks": self.n_blocks - self._base_blocks,
                "written": _now(), **self._append_source}]
        elif not self.appending:
            meta["version"] = 1
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


def _is_published(final: Location) -> bool:
    final.invalidate()
    if final.is_local:
        return final.exists("zarr.json")
    return final.exists(POINTER) or final.exists("zarr.json")
