"""Reading a published artifact: :func:`open_artifact` and :class:`Artifact`.

Opening checks the manifest's seal and the metadata files' hashes; :class:`Artifact`
gives blocks back (:meth:`~Artifact.decompress`, :meth:`~Artifact.decompress_range`)
and, when the ingest recorded a layout, source tensors and safetensors export.  Also
holds the constants and location helper shared with :mod:`storage._artifact_writer`.
The layout is described in :mod:`storage.artifact`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import zarr

from pipeline.layout import column_index

from ._integrity import CHECKSUMMED_SCHEMA, StrictStore, parse_json, unseal
from ._location import Location, artifact_location, json_dumps, resolve
from .collection import read_passthrough
from .errors import CollectionNotFoundError, CorruptedFileError

MANIFEST = "manifest.json"
_KIND_SVD, _KIND_RAW = 0, 1
_ALL_BASES_BYTES = 512 * 2**20  # decompress_range reads every basis at once up to this size


def _locations(url: str, collection_name: str, label: str, storage_options: dict | None) -> tuple[Location, Location, Location]:
    root = resolve(url, storage_options)
    return (root, artifact_location(root, collection_name, label),
            artifact_location(root, collection_name, label, staging=True))


def open_artifact(url: str, collection_name: str, label: str, *, verify: bool = False, storage_options: dict | None = None) -> "Artifact":
    """Open a published artifact (``verify=True`` re-hashes every file first).

    The manifest's seal and the hashes of the metadata files it lists are always
    checked; chunks are checked (crc32c, presence) when read.

    Raises
    ------
    CollectionNotFoundError
        No artifact under that label.
    CorruptedFileError
        The manifest or a metadata file is damaged (the message names it).
    """
    root, final, _ = _locations(url, collection_name, label, storage_options)
    final.invalidate()
    where = final.child(MANIFEST).url
    try:
        raw = final.read_bytes(MANIFEST)
    except FileNotFoundError:
        raise CollectionNotFoundError(f"no artifact {label!r} for collection {collection_name!r} at {root.url}") from None
    manifest = unseal(parse_json(raw, where), where)
    files = manifest.get("files")
    version = manifest.get("version")
    if not isinstance(files, dict) or (version is not None and not (isinstance(version, str) and version.startswith("v-") and "/" not in version)):
        raise CorruptedFileError(f"artifact {label!r}: {where} is corrupted (bad files or version)", path=where)
    base = final.child(version) if version else final
    art = Artifact(base, manifest, label=label)
    if art.meta.get("base"):
        art._attach_base(_open_base(url, collection_name, art, storage_options))
    if verify:
        art.verify()
    return art


def _open_base(url: str, collection_name: str, art: "Artifact", storage_options: dict | None) -> "Artifact":
    """The artifact a delta artifact builds on (see :mod:`storage.artifact`), checked to be
    the very version the delta was written against."""
    record = art.meta["base"]
    label = record.get("label")
    try:
        base = open_artifact(url, collection_name, str(label), storage_options=storage_options)
    except CollectionNotFoundError:
        raise CorruptedFileError(f"artifact {art.label!r} builds on artifact {label!r}, which is missing",
                                 path=art._loc.url) from None
    if manifest_digest(base.manifest) != record.get("manifest_sha256"):
        raise CorruptedFileError(f"artifact {art.label!r} builds on artifact {label!r}, which was replaced or damaged "
                                 "since (its manifest differs)", path=art._loc.url)
    return base


def manifest_digest(manifest: dict) -> str:
    """sha256 of an artifact's manifest: what a delta artifact records of its base."""
    return hashlib.sha256(json_dumps(manifest).encode()).hexdigest()


class Artifact:
    """A published artifact.

    Attributes
    ----------
    n_blocks, n_groups, rows : int
    dtype : numpy.dtype
    groups : list of list of int
    labels : ndarray (K,) group of each block
    errors : ndarray (G,) exact per-group relative error
    ranks : ndarray (G,)
    kinds : ndarray (G,) 0 = shared basis, 1 = stored raw
    params : dict
    input_nbytes : int
        Bytes on disk of the input collection when the artifact was written.
    input_raw_nbytes : int
        Uncompressed size of the input data.
    """

    def __init__(self, loc: Location, manifest: dict, label: str | None = None) -> None:
        self._loc = loc
        self.manifest = manifest
        self.label = label or loc.path.rstrip("/").rsplit("/", 1)[-1]
        # metadata files are small: re-hash them all, so a damaged zarr.json is named
        for rel in sorted(r for r in manifest["files"] if r == "zarr.json" or r.endswith("/zarr.json")):
            self._check_file(rel)
        root_doc = parse_json(loc.read_bytes("zarr.json"), loc.child("zarr.json").url)
        meta = dict(((root_doc.get("attributes") or {}).get("cmsvd")) or {}) if isinstance(root_doc, dict) else {}
        checked = int(meta.get("schema_version", 1) or 1) >= CHECKSUMMED_SCHEMA
        prefix = loc.path.rstrip("/") + "/"
        # pre-checksum artifacts: the manifest lists every chunk that must exist
        expected = None if checked else set(manifest["files"])
        store = StrictStore(loc.zarr_store(read_only=True), loc.url, checksummed=checked, expected=expected)
        del prefix
        try:
            g = zarr.open_group(store=store, mode="r")
        except Exception as exc:  # noqa: BLE001
            raise CorruptedFileError(f"artifact {self.label!r}: {loc.url} cannot be opened ({exc})", path=loc.url) from None
        self._group = g
        self.checksummed = checked
        self.meta = meta
        where = loc.child("zarr.json").url
        try:
            self.collection = meta["collection"]
            self.label = meta["label"]
            self.rows = int(meta["rows"])
            self.dtype = np.dtype(meta["dtype"])
            self.n_blocks = int(meta["n_blocks"])
            self.n_groups = int(meta["n_groups"])
            self.params = meta["params"]
            self.input_nbytes = int(meta["input_nbytes"])
            self.input_raw_nbytes = int(meta["input_raw_nbytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptedFileError(f"artifact {self.label!r}: {where} is corrupted (bad field {exc})", path=where) from None
        small = {k: self._small(k) for k in (
            "block_group", "group_errors", "group_ranks", "group_kinds", "block_ranks", "coef_offsets",
            "basis_offsets", "group_members", "group_member_offsets", "block_widths")}
        self.labels = small["block_group"]
        self.errors = small["group_errors"]
        self.ranks = small["group_ranks"]
        self.kinds = small["group_kinds"]
        self.block_ranks = small["block_ranks"]
        self.coef_offsets = small["coef_offsets"]
        self.basis_offsets = small["basis_offsets"]
        members, moff = small["group_members"], small["group_member_offsets"]
        self.groups = [members[moff[k] : moff[k + 1]].tolist() for k in range(self.n_groups)]
        self.widths = small["block_widths"]
        self._check_layout()
        self._bases_cache: dict[int, np.ndarray] = {}
        self._all_bases: np.ndarray | None = None
        #: The artifact this one builds on (a delta artifact of an incremental run), or
        #: None: blocks and groups below its counts are read from it.
        self.base: Artifact | None = None
        self._base_blocks = self._base_groups = 0
        self._base_group_of = np.full(self.n_groups, -1, dtype=np.int64)  # the base group each group keeps
        #: The source's layout recorded at ingest (safetensors: every tensor's dtype, shape
        #: and block range or passthrough reason), or None.
        self.source_layout: dict | None = meta.get("source_layout") or None
        self._tensors = {t["name"]: t for t in (self.source_layout or {}).get("tensors", [])}
        self._tensor_of_block: dict[int, dict] = {}
        for t in self._tensors.values():
            if t.get("kind") == "columns":
                first, count = (int(x) for x in t["blocks"])
                for b in range(first, first + count):
                    self._tensor_of_block[b] = t

    def _attach_base(self, base: "Artifact") -> None:
        record = self.meta["base"]
        n_blocks, n_groups = int(record["n_blocks"]), int(record["n_groups"])
        if (base.n_blocks, base.n_groups, base.rows, base.dtype) != (n_blocks, n_groups, self.rows, self.dtype):
            raise CorruptedFileError(f"artifact {self.label!r}: its base {base.label!r} does not match the record",
                                     path=self._loc.url)
        self.base, self._base_blocks, self._base_groups = base, n_blocks, n_groups
        group_map = np.asarray(record.get("group_map", range(n_groups)), dtype=np.int64)
        self._base_group_of[: group_map.size] = group_map[: self.n_groups]

    def _in_base(self, blocks: np.ndarray) -> np.ndarray:
        """Which of ``blocks`` the base artifact holds: members of a base group that their
        group here keeps."""
        blocks = np.asarray(blocks, dtype=np.int64)
        held = blocks < self._base_blocks
        kept = self._base_group_of[self.labels[blocks]]
        held[held] &= self.base.labels[blocks[held]] == kept[held]
        return held

    def _check_file(self, rel: str) -> bytes:
        entry = self.manifest["files"][rel]
        where = self._loc.child(rel).url
        try:
            data = self._loc.read_bytes(rel)
        except FileNotFoundError:
            raise CorruptedFileError(f"artifact {self.label!r}: file {where} is missing", path=where) from None
        if len(data) != entry.get("nbytes"):
            raise CorruptedFileError(
                f"artifact {self.label!r}: file {where} is corrupted ({len(data)} bytes, manifest says {entry.get('nbytes')})", path=where
            )
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise CorruptedFileError(f"artifact {self.label!r}: file {where} is corrupted (sha256 mismatch)", path=where)
        return data

    def _read(self, key: str, selection: Any, what: str) -> np.ndarray:
        """A read naming the damaged chunk and what it holds (never wrong numbers)."""
        try:
            return np.asarray(self._group[key][selection])
        except CorruptedFileError as exc:
            raise type(exc)(f"artifact {self.label!r}, {what}: {exc}", path=exc.path) from None
        except KeyError:
            where = self._loc.child(key).url
            raise CorruptedFileError(f"artifact {self.label!r}: array {where} is missing", path=where) from None
        except (ValueError, RuntimeError, TypeError) as exc:
            where = self._loc.child(key).url
            raise CorruptedFileError(f"artifact {self.label!r}, {what}: {where} cannot be decoded, it is corrupted ({exc})", path=where) from None

    def _small(self, key: str) -> np.ndarray:
        return self._read(key, slice(None), f"array {key!r}")

    def _check_layout(self) -> None:
        """Sizes of the small arrays against the attributes (a damaged record is named)."""
        k, g = self.n_blocks, self.n_groups
        expect = {"block_group": k, "block_ranks": k, "block_widths": k, "coef_offsets": k + 1,
                  "basis_offsets": g + 1, "group_member_offsets": g + 1, "group_ranks": g,
                  "group_errors": g, "group_kinds": g, "group_members": k}
        sizes = {"block_group": self.labels, "block_ranks": self.block_ranks, "block_widths": self.widths,
                 "coef_offsets": self.coef_offsets, "basis_offsets": self.basis_offsets, "group_ranks": self.ranks,
                 "group_errors": self.errors, "group_kinds": self.kinds}
        for key, arr in sizes.items():
            if arr.shape != (expect[key],):
                where = self._loc.child(key).url
                raise CorruptedFileError(f"artifact {self.label!r}: {where} has shape {arr.shape}, expected ({expect[key]},)", path=where)

    def __repr__(self) -> str:
        return f"Artifact({self.label!r}, collection={self.collection!r}, n_blocks={self.n_blocks}, n_groups={self.n_groups})"

    @property
    def nbytes_stored(self) -> int:
        """Bytes on disk of the artifact (all files, manifest included; with a base, its
        bytes too: a delta artifact is read through it)."""
        own = sum(f["nbytes"] for f in self.manifest["files"].values()) + len(json_dumps(self.manifest))
        return own + (self.base.nbytes_stored if self.base is not None else 0)

    @property
    def compression_ratio(self) -> float:
        """input_nbytes / nbytes_stored (bytes on disk against bytes on disk)."""
        return self.input_nbytes / max(1, self.nbytes_stored)

    def _block(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < self.n_blocks:
            raise IndexError(f"block index {i!r} out of range for artifact with {self.n_blocks} blocks")
        return int(i)

    def basis(self, g: int) -> np.ndarray:
        """U_g (m, r_g); raises ValueError for a raw group."""
        if not 0 <= g < self.n_groups:
            raise IndexError(f"group index {g} out of range ({self.n_groups} groups)")
        if self.kinds[g] == _KIND_RAW:
            raise ValueError(f"group {g} is stored raw (no basis)")
        if self._base_group_of[g] >= 0:
            return self.base.basis(int(self._base_group_of[g]))
        if g not in self._bases_cache:
            if len(self._bases_cache) > 16:
                self._bases_cache.clear()
            sel = (slice(None), slice(int(self.basis_offsets[g]), int(self.basis_offsets[g + 1])))
            self._bases_cache[g] = self._read("bases", sel, f"basis of group {g}")
        return self._bases_cache[g]

    def all_bases(self) -> tuple[np.ndarray, np.ndarray]:
        """Every group's basis side by side, in the stored dtype, and each group's column
        range in it (``offsets``, G + 1; a raw group has none). A delta's base groups come
        from its base."""
        own = self._read("bases", (slice(None), slice(0, int(self.basis_offsets[-1]))), "bases")
        if self.base is None:
            return own, self.basis_offsets.astype(np.int64)
        older, older_offsets = self.base.all_bases()
        own_offsets = self.basis_offsets.astype(np.int64)
        kept = self._base_group_of >= 0
        starts = own_offsets[:-1] + older.shape[1]  # own columns sit after the base's in the stack below
        starts[kept] = older_offsets[:-1][self._base_group_of[kept]]
        widths = np.diff(own_offsets)
        widths[kept] = np.diff(older_offsets)[self._base_group_of[kept]]
        offsets = np.zeros(self.n_groups + 1, dtype=np.int64)
        np.cumsum(widths, out=offsets[1:])
        columns = np.repeat(starts - offsets[:-1], widths) + np.arange(int(offsets[-1]))
        return np.hstack([older, own])[:, columns], offsets

    def coefficients(self, i: int) -> np.ndarray:
        """V_i (r, n_i) for block i (the block itself for a raw group)."""
        i = self._block(i)
        if self.base is not None and self._in_base([i])[0]:
            return self.base.coefficients(i)
        flat = self._read("coefficients", slice(int(self.coef_offsets[i]), int(self.coef_offsets[i + 1])), f"coefficients of block {i}")
        return flat.reshape(int(self.block_ranks[i]), int(self.widths[i]))

    def decompress(self, i: int, form: str = "original") -> np.ndarray:
        """U_C V_i: the approximation of block i.

        Parameters
        ----------
        form : {"original", "columns"}
            ``"original"`` (default): the block as it was in its source
            when the ingest recorded a layout (safetensors): a block that is a whole
            tensor comes back in the tensor's shape and dtype; a block that is one column
            of a tensor (``--per column``) as its ``column_length`` values, 1-D, in the
            tensor's dtype.  ``"columns"``: the (rows, n_i) column form in the
            artifact dtype (what the error is measured on).  Without a recorded layout
            (every format but safetensors) both forms are the same.  For whole tensors
            see :meth:`tensor`.
        """
        if form not in ("columns", "original"):
            raise ValueError(f"form must be 'columns' or 'original', got {form!r}")
        i = self._block(i)
        g = int(self.labels[i])
        v = self.coefficients(i)
        cols = v if self.kinds[g] == _KIND_RAW else (self.basis(g) @ v).astype(self.dtype, copy=False)
        t = self._tensor_of_block.get(i) if form == "original" else None
        if t is None:
            return cols
        from .ingest import safetensors_values, to_safetensors_dtype

        first, count = (int(x) for x in t["blocks"])
        shape = t["shape"] if count == 1 else [cols.shape[0]]
        raw = to_safetensors_dtype(np.ascontiguousarray(cols.T).reshape(-1), t["dtype"]).tobytes()
        return safetensors_values(raw, t["dtype"], shape)

    def decompress_range(self, first: int, stop: int) -> np.ndarray:
        """Column form of blocks ``first..stop-1`` side by side, in the artifact dtype.

        Equal to concatenating :meth:`decompress` of each block, but with one read of
        their coefficients and one product per group (each basis read once): what whole
        tensors of ``--per column`` collections (thousands of one-column blocks) need.
        """
        if not 0 <= first <= stop <= self.n_blocks:
            raise IndexError(f"block range {first}:{stop} outside 0:{self.n_blocks}")
        if first < self._base_blocks:  # the base's blocks from the base, the rest from here
            middle = min(stop, self._base_blocks)
            older = self.base.decompress_range(first, middle)
            moved = first + np.flatnonzero(~self._in_base(np.arange(first, middle)))
            if moved.size:  # blocks of groups this delta re-wrote
                at = np.concatenate([[0], np.cumsum(self.widths[first:middle])])
                for i in moved.tolist():
                    older[:, at[i - first] : at[i - first + 1]] = self.decompress(i, form="columns")
            return older if middle == stop else np.hstack([older, self.decompress_range(middle, stop)])
        widths = self.widths[first:stop].astype(np.int64)
        col = np.concatenate([[0], np.cumsum(widths)])
        out = np.empty((self.rows, int(col[-1])), dtype=self.dtype)
        c0 = int(self.coef_offsets[first])
        flat = self._read("coefficients", slice(c0, int(self.coef_offsets[stop])), f"coefficients of blocks {first}:{stop}")
        labels = self.labels[first:stop]
        groups = np.unique(labels)
        if groups.size > 16 and self._all_bases is None:
            total = int(self.basis_offsets[-1]) * self.rows * self.dtype.itemsize
            if total <= _ALL_BASES_BYTES:  # many groups: one read of every basis beats a chunk decode per group
                self._all_bases = self._read("bases", (slice(None), slice(0, int(self.basis_offsets[-1]))), "bases")
        starts = self.coef_offsets[first:stop].astype(np.int64) - c0
        for g in groups:
            idx = np.flatnonzero(labels == g)
            # V_C of the group's blocks side by side, gathered in one go: column k of block
            # j sits in its C-order (rank, n_j) segment at start_j + k, then every n_j
            w = widths[idx]
            at = np.repeat(starts[idx] - np.concatenate([[0], np.cumsum(w)[:-1]]), w) + np.arange(int(w.sum()))
            stride = np.repeat(w, w)
            rank = int(self.block_ranks[first + idx[0]])  # one rank per group
            v = flat[at[None, :] + np.arange(rank, dtype=np.int64)[:, None] * stride[None, :]]
            if self.kinds[g] == _KIND_RAW:
                part = v
            else:
                if self._base_group_of[g] >= 0:
                    u = self.basis(int(g))
                elif self._all_bases is not None:
                    u = self._all_bases[:, int(self.basis_offsets[g]) : int(self.basis_offsets[g + 1])]
                else:
                    u = self.basis(int(g))
                part = (u @ v).astype(self.dtype, copy=False)
            out[:, column_index(col, idx)] = part
        return out

    # ---- source tensors (a safetensors layout recorded at ingest) ---------------------

    @property
    def tensor_names(self) -> list[str]:
        """Every source tensor in file order: those cut into blocks and those kept as they
        are (passthrough); [] when the ingest recorded no layout."""
        return list(self._tensors)

    def tensor_info(self, name: str) -> dict:
        """The layout record of a source tensor: ``name``, ``dtype`` (safetensors code),
        ``shape``, ``kind`` ("columns" with ``blocks`` = [first, count], or
        "passthrough" with ``reason``)."""
        try:
            return dict(self._tensors[name])
        except KeyError:
            raise KeyError(f"artifact {self.label!r}: no source tensor {name!r}"
                           + ("" if self._tensors else " (the ingest recorded no tensor layout)")) from None

    def passthrough(self, name: str) -> bytes:
        """Raw bytes of a passthrough item (copied from the collection, sha256-checked)."""
        entries = (self.source_layout or {}).get("passthrough") or []
        return read_passthrough(lambda sel, what: self._read("passthrough", sel, what), entries, name, f"artifact {self.label!r}")

    def tensor_bytes(self, name: str) -> bytes:
        """A source tensor's little-endian bytes in its source dtype: exact for passthrough
        tensors and for tensors whose groups are stored raw, the reconstruction otherwise."""
        t = self.tensor_info(name)
        if t["kind"] == "passthrough":
            return self.passthrough(name)
        from .ingest import to_safetensors_dtype

        first, count = (int(x) for x in t["blocks"])
        cols = self.decompress_range(first, first + count)
        return to_safetensors_dtype(np.ascontiguousarray(cols.T).reshape(-1), t["dtype"]).tobytes()

    def tensor(self, name: str, form: str = "original") -> np.ndarray:
        """A source tensor back from the artifact.

        Parameters
        ----------
        form : {"original", "columns"}
            ``"original"`` (default): the tensor's shape and dtype (bfloat16, which numpy
            lacks, as float32 holding the bfloat16 values exactly).  ``"columns"``: the
            (column_length, n) column form in the artifact dtype (not for passthrough
            tensors, which have no column form).
        """
        if form not in ("columns", "original"):
            raise ValueError(f"form must be 'columns' or 'original', got {form!r}")
        t = self.tensor_info(name)
        if form == "columns":
            if t["kind"] == "passthrough":
                raise ValueError(f"tensor {name!r} is kept as it is ({t.get('reason')}): it has no column form")
            first, count = (int(x) for x in t["blocks"])
            return self.decompress_range(first, first + count)
        from .ingest import safetensors_values

        return safetensors_values(self.tensor_bytes(name), t["dtype"], t["shape"])

    def export_safetensors(self, path: Any) -> dict:
        """Write every source tensor back as a safetensors file (names, order, shapes,
        dtypes and ``__metadata__`` of the source; passthrough tensors byte for byte).

        Returns
        -------
        dict
            ``{"path", "tensors", "passthrough", "bytes"}``.

        Raises
        ------
        ValueError
            The artifact's collection was not ingested from a safetensors file.
        """
        import os

        from .ingest import write_safetensors

        layout = self.source_layout or {}
        if layout.get("format") != "safetensors" or not self._tensors:
            raise ValueError(f"artifact {self.label!r}: its collection was not ingested from a safetensors file "
                             "(no tensor layout recorded): decompress its blocks instead")
        entries = list(self._tensors.values())
        write_safetensors(path, entries, lambda e: self.tensor_bytes(e["name"]), layout.get("metadata"))
        return {"path": str(path), "tensors": len(entries),
                "passthrough": sum(e["kind"] == "passthrough" for e in entries), "bytes": os.path.getsize(path)}

    def verify(self) -> None:
        """Re-hash every file against the manifest.

        Raises
        ------
        IntegrityError
            Naming the first missing, resized or corrupted file.
        """
        for rel in sorted(self.manifest["files"]):
            self._check_file(rel)
        if self.base is not None:
            self.base.verify()
