"""Compressed artifacts: one shared basis per group, coefficients per block.

Published layout, a Zarr v3 group at ``<root>/artifacts/<collection>/<label>/``::

    bases          (m, R)  group g's basis U_g is bases[:, basis_offsets[g]:basis_offsets[g+1]]
    basis_offsets  (G+1,)  int64
    coefficients   (L,)    flat; block i's V_i is
                           coefficients[coef_offsets[i]:coef_offsets[i+1]].reshape(block_ranks[i], n_i)
                           (C order).  Blocks keep the collection's order, so this is the
                           data's ragged column layout with each block flattened; no padding
                           to a common rank.
    coef_offsets   (K+1,)  int64
    block_ranks    (K,)    rows of V_i (r_C, or m for a group stored raw)
    block_group    (K,)    group label of every block
    group_members, group_member_offsets   the groups as flat + offsets
    group_ranks (G,) int64, group_errors (G,) float64, group_kinds (G,) int8 (0 svd, 1 raw)
    attrs["cmsvd"] = {schema_version, kind="artifact", collection, collection_fingerprint,
                      rows, dtype, n_blocks, n_groups, params, input_nbytes, input_raw_nbytes}
    manifest.json  sha256 and size of every other file; written last = the publish marker

A *raw* group (``basis=None``) stores its blocks as they are (the paper keeps a
singleton uncompressed when no low-rank form is smaller): V_i is the block, U is I.

Writing streams group by group: :func:`create_artifact` records the grouping under
``artifacts/<collection>/.staging/<label>/``, any process may then call
:meth:`ArtifactWriter.write_group` (reopen with :func:`open_artifact_writer`), each
group landing in its own part files plus a done marker; :meth:`ArtifactWriter.finalize`
packs the parts into the layout above in block order with chunk-sized buffers, keeping
in memory only the coefficient parts of groups that still have unpacked blocks, and
publishes like a collection: renamed into place locally (an overwrite swaps directories
atomically); on object stores packed into a fresh version prefix ``<label>/v-<time>-<hex>/``
whose manifest is then written to ``<label>/manifest.json`` with ``"version"`` set: that
object is the pointer, switched last, and older versions are removed afterwards.

Integrity: arrays end with a crc32c codec and every chunk is written; readers go through
:class:`storage._integrity.StrictStore` (missing chunk or checksum mismatch raises,
naming the chunk and the group or block); the manifest is sealed (sha256 of itself) and
the metadata files it lists are re-hashed on open; part files carry sha256 in their done
markers, checked when packing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
from typing import Any, Sequence

import numpy as np
import zarr

from ._integrity import ARRAY_CONFIG, CHECKSUMMED_SCHEMA, StrictStore, parse_json, seal, unseal
from ._location import (
    SCHEMA_VERSION,
    artifact_location,
    Location,
    collect_versions,
    json_dumps,
    new_version_name,
    publish_local,
    resolve,
    sweep_stale,
    switch_pointer,
)
from .collection import _ColumnSink, default_chunks, default_codecs, open_collection, read_passthrough
from .errors import CollectionExistsError, CollectionNotFoundError, CorruptedFileError

MANIFEST = "manifest.json"
_PACK_BYTES = 128 * 2**20  # coefficient buffer while packing an artifact (bounds the client's memory)
_FLAT_CHUNK = 4 * 2**20  # elements per chunk of the flat coefficient array
_KIND_SVD, _KIND_RAW = 0, 1
_PT_CHUNK = 4 * 2**20  # bytes per chunk of the copied passthrough items
_ALL_BASES_BYTES = 512 * 2**20  # decompress_range reads every basis at once up to this size


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _locations(url: str, collection_name: str, label: str, storage_options: dict | None) -> tuple[Location, Location, Location]:
    root = resolve(url, storage_options)
    return (root, artifact_location(root, collection_name, label),
            artifact_location(root, collection_name, label, staging=True))


def _check_groups(groups: Sequence[Sequence[int]], n_blocks: int) -> list[list[int]]:
    """Every block in exactly one non-empty group."""
    seen = np.zeros(n_blocks, dtype=np.int64)
    out = []
    for g, members in enumerate(groups):
        members = [int(i) for i in members]
        if not members:
            raise ValueError(f"group {g} is empty")
        for i in members:
            if not 0 <= i < n_blocks:
                raise ValueError(f"group {g}: block index {i} out of range (collection has {n_blocks} blocks)")
            seen[i] += 1
        out.append(members)
    dup, missing = np.flatnonzero(seen > 1), np.flatnonzero(seen == 0)
    if dup.size:
        raise ValueError(f"blocks in more than one group: {dup[:10].tolist()}")
    if missing.size:
        raise ValueError(f"blocks in no group: {missing[:10].tolist()}")
    return out


def create_artifact(
    url: str,
    collection_name: str,
    label: str,
    *,
    groups: Sequence[Sequence[int]],
    params: dict | None = None,
    dtype: Any = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> "ArtifactWriter":
    """Start writing an artifact for a grouping of a collection's blocks.

    Parameters
    ----------
    groups : list of list of int
        A partition of the collection's block indices.
    params : dict, optional
        Parameters to record (eps, r, algorithm...).
    dtype : float32 or float64, optional
        Stored dtype of bases and coefficients; default the collection's.
    """
    root, final, staging = _locations(url, collection_name, label, storage_options)
    coll = open_collection(url, collection_name, storage_options=storage_options)
    groups = _check_groups(groups, coll.n_blocks)
    if not overwrite and final.exists(MANIFEST):
        raise CollectionExistsError(f"artifact {label!r} of collection {collection_name!r} already exists")
    sweep_stale(artifact_location(root, collection_name, staging=True))  # killed writers (local: by age)
    staging.rm()
    record = {
        "collection": collection_name,
        "label": label,
        "collection_fingerprint": coll.fingerprint(),
        "rows": coll.rows,
        "dtype": np.dtype(dtype or coll.dtype).name,
        "widths": coll.widths.tolist(),
        "groups": groups,
        "params": params or {},
        "input_nbytes": coll.nbytes_stored,
        "input_raw_nbytes": coll.nbytes,
        "overwrite": bool(overwrite),
    }
    layout = source_layout(coll)
    if layout is not None:
        record["source_layout"] = layout
    staging.write_json(record, "writer.json")
    return ArtifactWriter(root, final, staging, record)


def source_layout(coll: Any) -> dict | None:
    """What an artifact needs to give its collection's source back (None: nothing to add).

    ``{"format", "file_name", "metadata", "column_length", "per", "tensors": [...],
    "passthrough": [...]}``: the per-tensor layout recorded at ingest
    (:func:`storage.ingest_safetensors`) and the passthrough items, which the artifact
    copies so that it is self-contained.
    """
    prov = coll.provenance or {}
    tensors = prov.get("tensors")
    if not tensors and not coll.passthrough_entries:
        return None
    return {
        "format": prov.get("format"),
        "file_name": prov.get("file_name"),
        "metadata": prov.get("metadata") or {},
        "column_length": prov.get("column_length"),
        "per": prov.get("per"),
        "tensors": tensors or [],
        "passthrough": [dict(e) for e in coll.passthrough_entries],
    }


def open_artifact_writer(url: str, collection_name: str, label: str, *, storage_options: dict | None = None) -> "ArtifactWriter":
    """Reopen an artifact being written (e.g. from a worker process)."""
    root, final, staging = _locations(url, collection_name, label, storage_options)
    staging.invalidate()
    if not staging.exists("writer.json"):
        raise CollectionNotFoundError(f"no artifact {label!r} being written for collection {collection_name!r}")
    return ArtifactWriter(root, final, staging, staging.read_json("writer.json"))


class ArtifactWriter:
    """Group-by-group writer of an artifact; see the module docstring."""

    def __init__(self, root: Location, final: Location, staging: Location, record: dict) -> None:
        self._root, self._final, self._staging = root, final, staging
        self.record = record
        self.groups: list[list[int]] = record["groups"]
        self.rows = int(record["rows"])
        self.dtype = np.dtype(record["dtype"])
        self.widths = np.asarray(record["widths"], dtype=np.int64)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def _tol(self) -> float:
        return 1e-3 if self.dtype == np.float32 else 1e-8

    def write_group(self, g: int, basis: np.ndarray | None, coefficients: Sequence[np.ndarray] | np.ndarray) -> None:
        """Write one group's basis and its blocks' coefficients.

        Parameters
        ----------
        g : int
            Group index into ``groups``.
        basis : ndarray (m, r) with orthonormal columns, or None
            None stores the group raw: *coefficients* are then the blocks themselves.
        coefficients : list of ndarray (r, n_i) in the group's member order, or one
            ndarray (r, sum n_i) with the members side by side.
        """
        if not 0 <= g < self.n_groups:
            raise IndexError(f"group index {g} out of range ({self.n_groups} groups)")
        members = self.groups[g]
        kind = _KIND_RAW if basis is None else _KIND_SVD
        rank = self.rows if basis is None else self._check_basis(g, basis)
        coef = self._check_coefficients(g, members, rank, coefficients)
        parts = self._staging.child("parts")
        name = f"g{g:08d}"
        marker: dict[str, Any] = {"kind": kind, "rank": 0 if basis is None else rank}
        if basis is not None:
            data = _npy_bytes(np.ascontiguousarray(basis, dtype=self.dtype))
            parts.write_bytes(data, f"{name}.basis.npy")
            marker["basis_sha256"] = hashlib.sha256(data).hexdigest()
        data = _npy_bytes(coef)
        parts.write_bytes(data, f"{name}.coef.npy")
        marker["coef_sha256"] = hashlib.sha256(data).hexdigest()
        # done marker last: a worker dying mid-write leaves the group missing, not torn
        parts.write_json(seal(marker), f"{name}.json")

    def _check_basis(self, g: int, basis: np.ndarray) -> int:
        basis = np.asarray(basis)
        if basis.ndim != 2 or basis.shape[0] != self.rows:
            raise ValueError(f"group {g}: basis shape {basis.shape}, expected ({self.rows}, r)")
        if not np.isfinite(basis).all():
            raise ValueError(f"group {g}: basis contains NaN or Inf")
        b = basis.astype(np.float64)
        gram_err = np.abs(b.T @ b - np.eye(b.shape[1])).max() if b.shape[1] else 0.0
        if gram_err > self._tol():
            raise ValueError(f"group {g}: basis columns are not orthonormal (max |U^T U - I| = {gram_err:.2e})")
        return int(basis.shape[1])

    def _check_coefficients(self, g: int, members: list[int], rank: int, coefficients: Any) -> np.ndarray:
        widths = self.widths[members]
        if isinstance(coefficients, np.ndarray) and coefficients.ndim == 2:
            coef = coefficients  # members already side by side
        else:
            if len(coefficients) != len(members):
                raise ValueError(f"group {g}: {len(coefficients)} coefficient arrays for {len(members)} blocks")
            for i, c in zip(members, coefficients):
                if np.shape(c) != (rank, self.widths[i]):
                    raise ValueError(
                        f"group {g}, block {i}: coefficients shape {np.shape(c)}, expected ({rank}, {self.widths[i]})"
                    )
            coef = np.concatenate([np.asarray(c) for c in coefficients], axis=1)
        if coef.shape != (rank, widths.sum()):
            raise ValueError(f"group {g}: coefficients shape {coef.shape}, expected ({rank}, {int(widths.sum())})")
        if not np.isfinite(coef).all():
            raise ValueError(f"group {g}: coefficients contain NaN or Inf")
        return np.ascontiguousarray(coef, dtype=self.dtype)

    def missing_groups(self) -> list[int]:
        """Groups whose part has not been written (completely) yet."""
        parts = self._staging.child("parts")
        done = {r for r in parts.files() if r.endswith(".json")}
        return [g for g in range(self.n_groups) if f"g{g:08d}.json" not in done]

    def finalize(self, errors: Sequence[float], ranks: Sequence[int] | None = None) -> "Artifact":
        """Pack every group into the published layout and publish it (manifest last).

        Parameters
        ----------
        errors : sequence of float, one per group
            Exact relative error of each group.
        ranks : sequence of int, optional
            Ranks to report; default the basis widths (0 for raw groups).  For
            compressed groups they must equal the basis widths.
        """
        missing = self.missing_groups()
        if missing:
            raise ValueError(f"cannot finalize: {len(missing)} group(s) not written, e.g. {missing[:10]}")
        errors = np.asarray(errors, dtype=np.float64)
        if errors.shape != (self.n_groups,):
            raise ValueError(f"errors: expected {self.n_groups} values, got shape {errors.shape}")
        parts = self._staging.child("parts")
        info = [unseal(parse_json(parts.read_bytes(f"g{g:08d}.json"), parts.child(f"g{g:08d}.json").url), parts.child(f"g{g:08d}.json").url)
                for g in range(self.n_groups)]
        self._part_hashes = {f"g{g:08d}.{k}.npy": p.get(f"{k}_sha256") for g, p in enumerate(info) for k in ("basis", "coef")}
        kinds = np.array([p["kind"] for p in info], dtype=np.int8)
        widths_r = np.array([p["rank"] for p in info], dtype=np.int64)
        if ranks is not None:
            ranks = np.asarray(ranks, dtype=np.int64)
            bad = [g for g in range(self.n_groups) if kinds[g] == _KIND_SVD and ranks[g] != widths_r[g]]
            if ranks.shape != (self.n_groups,) or bad:
                raise ValueError(f"ranks disagree with the written bases for groups {bad[:10]}")
        else:
            ranks = widths_r
        version = None
        if self._final.is_local:
            packed = self._staging.child("packed")
        else:
            version = new_version_name()
            packed = self._final.child(version)  # invisible until the pointer names it
        packed.rm()
        grp = zarr.open_group(store=packed.zarr_store(), mode="w")
        self._pack_small(grp, kinds, widths_r, ranks, errors)
        self._pack_bases(grp, parts, kinds, widths_r)
        self._pack_coefficients(grp, parts, kinds, widths_r)
        self._pack_passthrough(grp)
        grp.attrs.update({"cmsvd": self._attrs()})
        files = [r for r in packed.files() if r != MANIFEST]
        manifest = {
            "kind": "artifact",
            "schema_version": SCHEMA_VERSION,
            "written": _now(),
            "files": {r: {"nbytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for r in files for b in [packed.read_bytes(r)]},
        }
        overwrite = bool(self.record.get("overwrite"))
        try:
            if version is None:
                packed.write_json(seal(manifest), MANIFEST)
                publish_local(packed, self._final, overwrite)
            else:
                manifest["version"] = version
                packed.write_json(seal(manifest), MANIFEST)  # the version is complete
                switch_pointer(self._final, manifest, overwrite, pointer=MANIFEST)
        except FileExistsError:
            packed.rm()
            raise CollectionExistsError(f"artifact {self.record['label']!r} already exists") from None
        if version is not None:
            collect_versions(self._final, version, pointer=MANIFEST)
        self._staging.rm()
        return open_artifact(self._root.url, self.record["collection"], self.record["label"], storage_options=self._root.storage_options)

    def _pack_passthrough(self, grp: zarr.Group) -> None:
        """Copy the collection's passthrough items (checked by sha256) into the artifact."""
        layout = self.record.get("source_layout")
        if not layout or not layout.get("passthrough"):
            return
        coll = open_collection(self._root.url, self.record["collection"], storage_options=self._root.storage_options)
        if coll.fingerprint() != self.record["collection_fingerprint"]:
            raise ValueError(f"collection {self.record['collection']!r} changed while its artifact was written")
        arr = grp.create_array("passthrough", shape=(0,), chunks=(_PT_CHUNK,), dtype=np.uint8,
                               compressors=default_codecs(), fill_value=0, config=ARRAY_CONFIG)
        sink = _ColumnSink(arr, 0)
        for entry in layout["passthrough"]:
            data = coll.passthrough(entry["name"])
            entry["offset"] = int(sink.pos)  # the artifact's own byte range
            sink.write(np.frombuffer(data, dtype=np.uint8))
        sink.close()

    def _attrs(self) -> dict:
        r = self.record
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "artifact",
            "collection": r["collection"],
            "collection_fingerprint": r["collection_fingerprint"],
            "label": r["label"],
            "rows": self.rows,
            "dtype": self.dtype.name,
            "n_blocks": int(self.widths.size),
            "n_groups": self.n_groups,
            "params": r["params"],
            "input_nbytes": r["input_nbytes"],
            "input_raw_nbytes": r["input_raw_nbytes"],
            **({"source_layout": r["source_layout"]} if r.get("source_layout") else {}),
            "created": _now(),
        }

    def _block_layout(self, kinds: np.ndarray, widths_r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block_group = np.empty(self.widths.size, dtype=np.int64)
        for g, members in enumerate(self.groups):
            block_group[members] = g
        block_ranks = np.where(kinds[block_group] == _KIND_RAW, self.rows, widths_r[block_group]).astype(np.int64)
        coef_offsets = np.zeros(self.widths.size + 1, dtype=np.int64)
        np.cumsum(block_ranks * self.widths, out=coef_offsets[1:])
        return block_group, block_ranks, coef_offsets

    def _part(self, parts: Location, name: str) -> np.ndarray:
        data = parts.read_bytes(name)
        expected = getattr(self, "_part_hashes", {}).get(name)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            where = parts.child(name).url
            raise CorruptedFileError(f"artifact {self.record['label']!r}: part file {where} is corrupted (sha256 mismatch)", path=where)
        return _npy_load(data)

    def _pack_small(self, grp: zarr.Group, kinds, widths_r, ranks, errors) -> None:
        block_group, block_ranks, coef_offsets = self._block_layout(kinds, widths_r)
        members = np.concatenate([np.asarray(m, dtype=np.int64) for m in self.groups])
        member_offsets = np.zeros(self.n_groups + 1, dtype=np.int64)
        np.cumsum([len(m) for m in self.groups], out=member_offsets[1:])
        basis_offsets = np.zeros(self.n_groups + 1, dtype=np.int64)
        np.cumsum(widths_r, out=basis_offsets[1:])
        small = {
            "block_group": block_group,
            "block_ranks": block_ranks,
            "block_widths": self.widths,
            "coef_offsets": coef_offsets,
            "group_members": members,
            "group_member_offsets": member_offsets,
            "basis_offsets": basis_offsets,
            "group_ranks": np.asarray(ranks, dtype=np.int64),
            "group_errors": errors,
            "group_kinds": kinds,
        }
        for key, value in small.items():
            arr = grp.create_array(
                key, shape=value.shape, dtype=value.dtype, chunks=(max(1, min(value.size, 2**20)),),
                compressors=default_codecs(), fill_value=0, config=ARRAY_CONFIG,
            )
            arr[...] = value

    def _pack_bases(self, grp: zarr.Group, parts: Location, kinds, widths_r) -> None:
        cr, cc = default_chunks(self.rows, self.dtype)
        arr = grp.create_array("bases", shape=(self.rows, 0), chunks=(cr, cc), dtype=self.dtype, compressors=default_codecs(), fill_value=0, config=ARRAY_CONFIG)
        sink = _ColumnSink(arr, 0)
        for g in range(self.n_groups):
            if kinds[g] == _KIND_SVD and widths_r[g]:
                sink.write(self._part(parts, f"g{g:08d}.basis.npy"))
        sink.close()

    def _pack_coefficients(self, grp: zarr.Group, parts: Location, kinds, widths_r) -> None:
        """Coefficients in block order, written through a buffer of at most _PACK_BYTES.

        Groups interleave in block order, so packing block by block would keep nearly every
        group's part in memory. Instead, for each run of consecutive blocks whose
        coefficients fit the buffer, every group touching it is read once and its blocks'
        slices are copied into place: memory is the buffer plus one part, at the price of
        reading a part once per run it touches."""
        arr = grp.create_array("coefficients", shape=(0,), chunks=(_FLAT_CHUNK,), dtype=self.dtype, compressors=default_codecs(), fill_value=0, config=ARRAY_CONFIG)
        sink = _ColumnSink(arr, 0)
        block_group, _, coef_offsets = self._block_layout(kinds, widths_r)
        # position of each block inside its group's concatenated coefficients
        local = np.zeros(self.widths.size, dtype=np.int64)
        for members in self.groups:
            w = self.widths[members]
            local[members] = np.concatenate([[0], np.cumsum(w)[:-1]])
        per_item = max(1, self.dtype.itemsize)
        start = 0
        while start < self.widths.size:
            # the longest run of blocks from ``start`` within the buffer (at least one block)
            limit = coef_offsets[start] + max(_PACK_BYTES // per_item, 1)
            stop = max(start + 1, int(np.searchsorted(coef_offsets, limit, side="right")) - 1)
            stop = min(stop, self.widths.size)
            buffer = np.empty(int(coef_offsets[stop] - coef_offsets[start]), dtype=self.dtype)
            blocks = np.arange(start, stop)
            for g in np.unique(block_group[blocks]):
                part = self._part(parts, f"g{int(g):08d}.coef.npy")
                for i in blocks[block_group[blocks] == g]:
                    v = part[:, local[i] : local[i] + self.widths[i]]
                    buffer[coef_offsets[i] - coef_offsets[start] : coef_offsets[i + 1] - coef_offsets[start]] = (
                        np.ascontiguousarray(v).reshape(-1))
            sink.write(buffer)
            start = stop
        sink.close()

    def abort(self) -> None:
        """Drop everything written so far for this artifact."""
        self._staging.rm()


def write_artifact(
    url: str,
    collection_name: str,
    label: str,
    *,
    groups: Sequence[Sequence[int]],
    bases: Sequence[np.ndarray | None],
    coefficients: Sequence[np.ndarray],
    errors: Sequence[float],
    ranks: Sequence[int] | None = None,
    params: dict | None = None,
    dtype: Any = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> "Artifact":
    """Write a whole artifact held in memory (wraps :func:`create_artifact`).

    Parameters
    ----------
    groups : list of list of int
        Partition of the block indices.
    bases : list, one (m, r_C) orthonormal array per group (None: stored raw)
    coefficients : list, one (r_C, n_i) array per *block*, indexed by block
    errors, ranks : one value per group
    """
    writer = create_artifact(url, collection_name, label, groups=groups, params=params, dtype=dtype, overwrite=overwrite, storage_options=storage_options)
    try:
        for g, members in enumerate(writer.groups):
            writer.write_group(g, bases[g], [coefficients[i] for i in members])
        return writer.finalize(errors, ranks)
    except BaseException:
        writer.abort()
        raise


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
    if verify:
        art.verify()
    return art


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
        """Bytes on disk of the artifact (all files, manifest included)."""
        return sum(f["nbytes"] for f in self.manifest["files"].values()) + len(json_dumps(self.manifest))

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
        if g not in self._bases_cache:
            if len(self._bases_cache) > 16:
                self._bases_cache.clear()
            sel = (slice(None), slice(int(self.basis_offsets[g]), int(self.basis_offsets[g + 1])))
            self._bases_cache[g] = self._read("bases", sel, f"basis of group {g}")
        return self._bases_cache[g]

    def coefficients(self, i: int) -> np.ndarray:
        """V_i (r, n_i) for block i (the block itself for a raw group)."""
        i = self._block(i)
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
        for g in groups:
            idx = np.flatnonzero(labels == g)
            v = np.concatenate([
                flat[int(self.coef_offsets[first + j]) - c0 : int(self.coef_offsets[first + j + 1]) - c0]
                .reshape(int(self.block_ranks[first + j]), int(widths[j])) for j in idx], axis=1)
            if self.kinds[g] == _KIND_RAW:
                part = v
            else:
                if self._all_bases is not None:
                    u = self._all_bases[:, int(self.basis_offsets[g]) : int(self.basis_offsets[g + 1])]
                else:
                    u = self.basis(int(g))
                part = (u @ v).astype(self.dtype, copy=False)
            at = 0
            for j in idx:
                w = int(widths[j])
                out[:, col[j] : col[j] + w] = part[:, at : at + w]
                at += w
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
