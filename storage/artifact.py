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
:meth:`ArtifactWriter.write_groups` (``write_group`` for one, ``write_all`` for a stream; reopen with
:func:`open_artifact_writer`), each call's groups landing in one part (a bases file, a
coefficients file and a done marker listing the groups: a file per group would cost a
file creation, or an object-store request, each); :meth:`ArtifactWriter.finalize` packs
the parts into the layout above in block order with bounded buffers, holding one part
file at a time, and publishes like a collection (or, for writers that know every group's rank up front,
:meth:`ArtifactWriter.start_direct` creates the packed layout at its final shapes, tasks
in any process fill it chunk by chunk and return the chunk files' hashes, and
:meth:`ArtifactWriter.finish_direct` writes the manifest and publishes, with no part
files and no packing pass): renamed into place locally (an overwrite swaps directories
atomically); on object stores packed into a fresh version prefix ``<label>/v-<time>-<hex>/``
whose manifest is then written to ``<label>/manifest.json`` with ``"version"`` set: that
object is the pointer, switched last, and older versions are removed afterwards.

Delta artifacts (an incremental run's, ``create_artifact(..., base=LABEL, base_map=...)``):
``attrs["cmsvd"]["base"]`` names the base artifact (label, sha256 of its manifest, its
block and group counts) and per group the base group it keeps (``group_map``; -1: stored
here). A kept group's basis and its base members' coefficients are read from the base
(``basis_offsets`` and ``coef_offsets`` give them no room here); everything else is
stored as above. Opening a delta opens its base and checks the manifest's sha256.

Integrity: arrays end with a crc32c codec and every chunk is written; readers go through
:class:`storage._integrity.StrictStore` (missing chunk or checksum mismatch raises,
naming the chunk and the group or block); the manifest is sealed (sha256 of itself) and
the metadata files it lists are re-hashed on open; part files carry sha256 in their done
markers, checked when packing.
"""

from __future__ import annotations

# The implementation lives in two private modules; every name stays importable from here
# (private ones too, re-exported by ``x as x``).
from ._artifact_reader import (
    _ALL_BASES_BYTES as _ALL_BASES_BYTES,
    _KIND_RAW as _KIND_RAW,
    _KIND_SVD as _KIND_SVD,
    MANIFEST,
    Artifact,
    _locations as _locations,
    open_artifact,
)
from ._artifact_writer import (
    _FLAT_CHUNK as _FLAT_CHUNK,
    _PACK_BYTES as _PACK_BYTES,
    _PT_CHUNK as _PT_CHUNK,
    ArtifactWriter,
    _check_groups as _check_groups,
    _now as _now,
    _npy_bytes as _npy_bytes,
    _npy_load as _npy_load,
    create_artifact,
    open_artifact_writer,
    source_layout,
    write_artifact,
)

__all__ = [
    "Artifact",
    "ArtifactWriter",
    "MANIFEST",
    "create_artifact",
    "open_artifact",
    "open_artifact_writer",
    "source_layout",
    "write_artifact",
]
