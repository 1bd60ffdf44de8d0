"""Collection reading: :class:`Collection`, :func:`open_collection`,
:func:`list_collections`, :func:`delete_collection` and :func:`read_passthrough`
(see :mod:`storage.collection` for the layout and integrity rules).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import zarr

from pipeline.layout import segment_sums
from pipeline.magnitude import block_shifts, scale_blocks  # the norms2 convention, shared with the numerics

from ._collection_format import MAX_READ_BYTES, _META_KEY, _array_signature
from ._integrity import CHECKSUMMED_SCHEMA, StrictStore, parse_json, unseal
from ._location import SCHEMA_VERSION, Location, json_dumps, resolve
from ._names import check_name
from ._publish import POINTER, read_pointer
from .errors import CollectionNotFoundError, CorruptedFileError, MissingChunkError

if TYPE_CHECKING:
    from ._collection_writer import CollectionWriter

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
        #: 1 when written, one more for every append; ``appends`` lists them (version,
        #: first_block, n_blocks, written and the source's format and path).
        self.version = int(meta.get("version", 1))
        self.appends: list[dict] = [dict(a) for a in (meta.get("appends") or [])]
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

    def batches(self, max_bytes: int = MAX_READ_BYTES):
        """``(first, stop)`` ranges of consecutive blocks of about ``max_bytes`` of data each
        (at least one block each), in order: how readers stream a collection."""
        per_column = max(1, self.rows * self.dtype.itemsize)
        first = 0
        while first < self.n_blocks:
            stop = first + 1
            while stop < self.n_blocks and (self.offsets[stop + 1] - self.offsets[first]) * per_column <= max_bytes:
                stop += 1
            yield first, stop
            first = stop

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
        for first, stop in self.batches():
            s0 = int(self.offsets[first])
            local = self.offsets[first : stop + 1] - s0
            data = self.column_range(s0, int(self.offsets[stop]))
            # every block at its magnitude shift, as ingest computed norms2: one pass per batch
            data = scale_blocks(data, local, block_shifts(data, local))
            norms2 = segment_sums(np.einsum("ij,ij->j", data, data), local)
            bad = np.flatnonzero(~np.isclose(norms2, self.norms2[first:stop], rtol=1e-9, atol=0.0))
            if bad.size:
                i = first + int(bad[0])
                raise CorruptedFileError(
                    f"collection {self.name!r}, block {i} ({self.names[i]!r}): squared norm {norms2[bad[0]]!r} differs "
                    f"from the {self.norms2[i]!r} recorded at ingest: its data is corrupted",
                    path=f"{self._loc.url}/data",
                )
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
        from ._collection_writer import CollectionWriter  # the writer imports this module

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
