"""Writing an artifact: :func:`create_artifact`, :class:`ArtifactWriter`, :func:`write_artifact`.

Groups land in part files under the staging folder (done marker last);
:meth:`ArtifactWriter.finalize` packs them into the published layout and publishes it
(manifest last).  The layout and atomicity are described in :mod:`storage.artifact`.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import zarr

from ._artifact_direct import DirectLayout, DirectWriting  # noqa: F401  (DirectLayout: public through here)
from ._artifact_reader import _KIND_RAW, _KIND_SVD, MANIFEST, Artifact, _locations, manifest_digest, open_artifact
from ._integrity import ARRAY_CONFIG, parse_json, seal, unseal
from ._location import SCHEMA_VERSION, Location, artifact_location, utc_now as _now
from ._publish import collect_versions, new_version_name, publish_local, sweep_stale, switch_pointer
from .collection import _ColumnSink, default_chunks, default_codecs, open_collection
from .errors import CollectionExistsError, CollectionNotFoundError, CorruptedFileError

_PACK_BYTES = 128 * 2**20  # coefficient buffer while packing an artifact (bounds the client's memory)
_FLAT_CHUNK = 4 * 2**20  # elements per chunk of the flat coefficient array
_PT_CHUNK = 4 * 2**20  # bytes per chunk of the copied passthrough items
_PART_BYTES = 64 * 2**20  # coefficients per part file written by write_all


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)



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
    base: str | None = None,
    base_map: Sequence[int] | None = None,
) -> "ArtifactWriter":
    """Start writing an artifact for a grouping of a collection's blocks.

    Parameters
    ----------
    groups : list of list of int
        A partition of the collection's block indices.
    base : str, optional
        Label of a published artifact of an earlier version of the collection that this
        one extends (a *delta* artifact, written by an incremental run): its groups come
        first, in its order, each with its members first and only blocks it did not have
        added; those groups keep its bases and its blocks keep its coefficients, which are
        read from it, not copied. Only :meth:`ArtifactWriter.start_direct` writes deltas.
    base_map : sequence of int, optional
        With ``base``: per group, the base group whose basis and coefficients it keeps
        (its members first), or -1 for a group written here whole. Default: group g keeps
        base group g for every base group. A base group that no group keeps is dropped:
        its blocks are written here, in the groups that hold them now.
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
    if base is not None:
        record["base"] = _base_record(url, collection_name, base, groups, record, storage_options, base_map)
    elif base_map is not None:
        raise ValueError("base_map needs a base artifact")
    staging.write_json(record, "writer.json")
    return ArtifactWriter(root, final, staging, record)


def _base_record(url: str, collection_name: str, label: str, groups: list[list[int]], record: dict,
                 storage_options: dict | None, base_map: Sequence[int] | None) -> dict:
    """What a delta artifact records of its base, after checking that every group that
    keeps a base group (``base_map``, see :func:`create_artifact`) starts with that base
    group's members."""
    base = open_artifact(url, collection_name, label, storage_options=storage_options)
    if (base.rows, base.dtype.name) != (record["rows"], record["dtype"]):
        raise ValueError(f"base artifact {label!r} holds {base.rows} rows of {base.dtype}, "
                         f"not {record['rows']} of {record['dtype']}")
    if base_map is None:
        if len(groups) < base.n_groups:
            raise ValueError(f"base artifact {label!r} has {base.n_groups} groups; the new grouping only {len(groups)}")
        base_map = list(range(base.n_groups)) + [-1] * (len(groups) - base.n_groups)
    base_map = [int(h) for h in base_map]
    kept = [h for h in base_map if h >= 0]
    if len(base_map) != len(groups) or len(set(kept)) != len(kept) or any(h >= base.n_groups for h in kept):
        raise ValueError(f"base_map: one entry per group, each -1 or a distinct group of base artifact {label!r} "
                         f"(0..{base.n_groups - 1})")
    for g, h in enumerate(base_map):
        if h >= 0 and groups[g][: len(base.groups[h])] != base.groups[h]:
            raise ValueError(f"group {g} does not extend group {h} of base artifact {label!r} "
                             "(that group's members must come first)")
    return {"label": label, "manifest_sha256": manifest_digest(base.manifest), "n_blocks": base.n_blocks,
            "n_groups": base.n_groups, "group_map": base_map,
            "kept_members": [len(base.groups[h]) if h >= 0 else 0 for h in base_map],
            "ranks": [int(base.ranks[h]) if h >= 0 and base.kinds[h] == _KIND_SVD else 0 for h in base_map]}


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


class ArtifactWriter(DirectWriting):
    """Group-by-group writer of an artifact; see the module docstring."""

    def __init__(self, root: Location, final: Location, staging: Location, record: dict) -> None:
        self._root, self._final, self._staging = root, final, staging
        self.record = record
        self.groups: list[list[int]] = record["groups"]
        self.rows = int(record["rows"])
        self.dtype = np.dtype(record["dtype"])
        self.widths = np.asarray(record["widths"], dtype=np.int64)
        self._cache: tuple[str, np.ndarray] | None = None  # the part file read last while packing
        self._direct: tuple | None = None  # (packed location, DirectLayout, version) once direct packing is opened
        self._held: np.ndarray | None = None  # blocks the base artifact holds (held_by_base)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def _base_counts(self) -> tuple[int, int]:
        """Blocks and groups read from the base artifact (0, 0 without one)."""
        base = self.record.get("base") or {}
        return int(base.get("n_blocks", 0)), int(base.get("n_groups", 0))

    @property
    def base_blocks(self) -> int:
        """Blocks below this index may be read from the base artifact (0 without a base)."""
        return self._base_counts[0]

    def base_groups(self) -> np.ndarray:
        """Which groups keep a base artifact's group: its basis and its members' coefficients
        (bool per group)."""
        group_map = (self.record.get("base") or {}).get("group_map")
        return np.zeros(self.n_groups, dtype=bool) if group_map is None else np.asarray(group_map) >= 0

    def held_by_base(self) -> np.ndarray:
        """Which blocks the base artifact holds (bool per block): the base members of groups
        that keep a base group. Their coefficients are not written here."""
        if self._held is None:
            kept_members = (self.record.get("base") or {}).get("kept_members") or []
            self._held = np.zeros(self.widths.size, dtype=bool)
            for g, count in enumerate(kept_members):
                if count:
                    self._held[self.groups[g][:count]] = True
        return self._held

    def _tol(self) -> float:
        return 1e-3 if self.dtype == np.float32 else 1e-8

    def write_group(self, g: int, basis: np.ndarray | None, coefficients: Sequence[np.ndarray] | np.ndarray) -> None:
        """Write one group's basis and its blocks' coefficients (one part of its own).

        Parameters
        ----------
        g : int
            Group index into ``groups``.
        basis : ndarray (m, r) with orthonormal columns, or None
            None stores the group raw: *coefficients* are then the blocks themselves.
        coefficients : list of ndarray (r, n_i) in the group's member order, or one
            ndarray (r, sum n_i) with the members side by side.
        """
        self.write_groups({g: (basis, coefficients)})

    def write_all(self, entries: Iterable[tuple[int, np.ndarray | None, Sequence[np.ndarray] | np.ndarray]]) -> None:
        """Write groups from a stream of (group, basis, coefficients), as for
        :meth:`write_group`, in parts of about 64 MiB of coefficients: few files, and
        memory bounded by one part while the stream computes the next groups."""
        pending: dict[int, tuple] = {}
        size = 0
        for g, basis, coefficients in entries:
            pending[g] = (basis, coefficients)
            size += sum(np.size(c) for c in coefficients) if isinstance(coefficients, list) else np.size(coefficients)
            if size * self.dtype.itemsize >= _PART_BYTES:
                self.write_groups(pending)
                pending, size = {}, 0
        self.write_groups(pending)

    def write_groups(self, entries: Mapping[int, tuple[np.ndarray | None, Sequence[np.ndarray] | np.ndarray]]) -> None:
        """Write several groups as one part: a bases file, a coefficients file and a done
        marker, whatever the number of groups (a file per group costs a file creation each,
        about a millisecond on a local disk and a request on S3).

        Parameters
        ----------
        entries : mapping of group index to (basis, coefficients)
            As for :meth:`write_group`. Writing a group again (in this or another part)
            is allowed; finalize takes the part whose name sorts first.
        """
        if not entries:
            return
        groups = sorted(int(g) for g in entries)
        bases, coefs, listed = [], [], []
        for g in groups:
            if not 0 <= g < self.n_groups:
                raise IndexError(f"group index {g} out of range ({self.n_groups} groups)")
            basis, coefficients = entries[g]
            kind = _KIND_RAW if basis is None else _KIND_SVD
            rank = self.rows if basis is None else self._check_basis(g, basis)
            coef = self._check_coefficients(g, self.groups[g], rank, coefficients)
            if basis is not None:
                bases.append(np.asarray(basis, dtype=self.dtype))
            coefs.append(coef.reshape(-1))
            listed.append([g, kind, 0 if basis is None else rank])
        digest = hashlib.sha256(json.dumps(groups).encode()).hexdigest()[:12]
        name = f"p{groups[0]:08d}-{digest}"  # the same groups always land in the same part
        parts = self._staging.child("parts")
        marker: dict[str, Any] = {"groups": listed}
        for key, arrays in (("basis", bases), ("coef", coefs)):
            if arrays:
                data = _npy_bytes(np.ascontiguousarray(np.concatenate(arrays, axis=arrays[0].ndim - 1)))
                parts.write_bytes(data, f"{name}.{key}.npy")
                marker[f"{key}_sha256"] = hashlib.sha256(data).hexdigest()
        # done marker last: a worker dying mid-write leaves the groups missing, not torn
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

    def _written(self) -> dict[int, dict]:
        """Where each written group lies: its part, kind, rank and offsets into the part's
        bases (columns) and coefficients (elements). A group written twice is taken from
        the part whose name sorts first."""
        parts = self._staging.child("parts")
        where: dict[int, dict] = {}
        for marker_name in (r for r in parts.files() if r.endswith(".json")):
            url = parts.child(marker_name).url
            marker = unseal(parse_json(parts.read_bytes(marker_name), url), url)
            part = marker_name[: -len(".json")]
            basis_at = coef_at = 0
            for g, kind, rank in marker["groups"]:
                columns = int(self.widths[self.groups[g]].sum())
                size = (self.rows if kind == _KIND_RAW else rank) * columns
                where.setdefault(g, {"part": part, "kind": kind, "rank": rank, "basis_at": basis_at,
                                     "coef_at": coef_at, "columns": columns, "marker": marker})
                basis_at += rank if kind == _KIND_SVD else 0
                coef_at += size
        return where

    def missing_groups(self) -> list[int]:
        """Groups whose part has not been written (completely) yet."""
        written = self._written()
        return [g for g in range(self.n_groups) if g not in written]

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
        if self.record.get("base"):
            raise ValueError("a delta artifact (one with a base) is written with start_direct / finish_direct")
        written = self._written()
        missing = [g for g in range(self.n_groups) if g not in written]
        if missing:
            raise ValueError(f"cannot finalize: {len(missing)} group(s) not written, e.g. {missing[:10]}")
        errors = np.asarray(errors, dtype=np.float64)
        if errors.shape != (self.n_groups,):
            raise ValueError(f"errors: expected {self.n_groups} values, got shape {errors.shape}")
        parts = self._staging.child("parts")
        info = [written[g] for g in range(self.n_groups)]
        self._cache = None
        kinds = np.array([p["kind"] for p in info], dtype=np.int8)
        widths_r = np.array([p["rank"] for p in info], dtype=np.int64)
        if ranks is not None:
            ranks = np.asarray(ranks, dtype=np.int64)
            bad = [g for g in range(self.n_groups) if kinds[g] == _KIND_SVD and ranks[g] != widths_r[g]]
            if ranks.shape != (self.n_groups,) or bad:
                raise ValueError(f"ranks disagree with the written bases for groups {bad[:10]}")
        else:
            ranks = widths_r
        packed, version = self._new_packed()
        grp = zarr.open_group(store=packed.zarr_store(), mode="w")
        self._pack_small(grp, kinds, widths_r, ranks, errors)
        self._pack_bases(grp, parts, kinds, widths_r, info)
        self._pack_coefficients(grp, parts, kinds, widths_r, info)
        self._cache = None
        return self._publish(packed, version, grp, {})

    def _new_packed(self) -> tuple[Location, str | None]:
        """An empty folder for the packed layout, and its version name on object stores."""
        version = None
        if self._final.is_local:
            packed = self._staging.child("packed")
        else:
            version = new_version_name()
            packed = self._final.child(version)  # invisible until the pointer names it
        packed.rm()
        return packed, version

    def _publish(self, packed: Location, version: str | None, grp: zarr.Group, hashed: dict[str, dict]) -> "Artifact":
        """Copy the passthrough items, write the attributes and the manifest (files in
        ``hashed`` already hashed where they were written), then publish atomically."""
        self._pack_passthrough(grp)
        grp.attrs.update({"cmsvd": self._attrs()})
        files = [r for r in packed.files() if r != MANIFEST]
        listed = {r: hashed[r] if r in hashed else {"nbytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                  for r in files for b in [b"" if r in hashed else packed.read_bytes(r)]}
        manifest = {"kind": "artifact", "schema_version": SCHEMA_VERSION, "written": _now(), "files": listed}
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
            **({"base": r["base"]} if r.get("base") else {}),
            "created": _now(),
        }

    def _block_layout(self, kinds: np.ndarray, widths_r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block_group = np.empty(self.widths.size, dtype=np.int64)
        for g, members in enumerate(self.groups):
            block_group[members] = g
        block_ranks = np.where(kinds[block_group] == _KIND_RAW, self.rows, widths_r[block_group]).astype(np.int64)
        sizes = block_ranks * self.widths
        sizes[self.held_by_base()] = 0  # a delta holds only what its base lacks
        coef_offsets = np.zeros(self.widths.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=coef_offsets[1:])
        return block_group, block_ranks, coef_offsets

    def _part(self, parts: Location, entry: dict, key: str) -> np.ndarray:
        """A part's bases or coefficients, checked against its marker's sha256 (the last
        one read is kept: groups of one part are packed one after the other)."""
        name = f"{entry['part']}.{key}.npy"
        if self._cache is not None and self._cache[0] == name:
            return self._cache[1]
        data = parts.read_bytes(name)
        if hashlib.sha256(data).hexdigest() != entry["marker"].get(f"{key}_sha256"):
            where = parts.child(name).url
            raise CorruptedFileError(f"artifact {self.record['label']!r}: part file {where} is corrupted (sha256 mismatch)", path=where)
        self._cache = (name, _npy_load(data))
        return self._cache[1]

    def _group_basis(self, parts: Location, entry: dict) -> np.ndarray:
        return self._part(parts, entry, "basis")[:, entry["basis_at"] : entry["basis_at"] + entry["rank"]]

    def _group_coefficients(self, parts: Location, entry: dict) -> np.ndarray:
        """(rank, columns) of one group: raw groups hold their m rows."""
        rows = self.rows if entry["kind"] == _KIND_RAW else entry["rank"]
        flat = self._part(parts, entry, "coef")[entry["coef_at"] : entry["coef_at"] + rows * entry["columns"]]
        return flat.reshape(rows, entry["columns"])

    def _pack_small(self, grp: zarr.Group, kinds, widths_r, ranks, errors) -> tuple[np.ndarray, np.ndarray]:
        """Write the index arrays; returns the coefficient and basis offsets written."""
        block_group, block_ranks, coef_offsets = self._block_layout(kinds, widths_r)
        members = np.concatenate([np.asarray(m, dtype=np.int64) for m in self.groups])
        member_offsets = np.zeros(self.n_groups + 1, dtype=np.int64)
        np.cumsum([len(m) for m in self.groups], out=member_offsets[1:])
        basis_offsets = np.zeros(self.n_groups + 1, dtype=np.int64)
        own_widths = np.where(kinds == _KIND_SVD, widths_r, 0)
        own_widths[self.base_groups()] = 0  # the base's groups keep the base's bases
        np.cumsum(own_widths, out=basis_offsets[1:])
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
        return coef_offsets, basis_offsets

    def _pack_bases(self, grp: zarr.Group, parts: Location, kinds, widths_r, info: list[dict]) -> None:
        cr, cc = default_chunks(self.rows, self.dtype)
        arr = grp.create_array("bases", shape=(self.rows, 0), chunks=(cr, cc), dtype=self.dtype, compressors=default_codecs(), fill_value=0, config=ARRAY_CONFIG)
        sink = _ColumnSink(arr, 0)
        for g in range(self.n_groups):
            if kinds[g] == _KIND_SVD and widths_r[g]:
                sink.write(self._group_basis(parts, info[g]))
        sink.close()

    def _pack_coefficients(self, grp: zarr.Group, parts: Location, kinds, widths_r, info: list[dict]) -> None:
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
                part = self._group_coefficients(parts, info[int(g)])
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
        writer.write_all((g, bases[g], [coefficients[i] for i in members]) for g, members in enumerate(writer.groups))
        return writer.finalize(errors, ranks)
    except BaseException:
        writer.abort()
        raise

