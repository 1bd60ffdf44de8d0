"""Direct packing of an artifact: the packed layout created at its final shapes, then
filled chunk by chunk by tasks in any process, then published (the mixin of
:class:`storage._artifact_writer.ArtifactWriter` behind ``start_direct``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import zarr

from ._artifact_reader import _KIND_RAW, _KIND_SVD
from ._integrity import ARRAY_CONFIG
from ._location import Location
from .collection import default_chunks, default_codecs

if TYPE_CHECKING:
    from ._artifact_reader import Artifact


@dataclass(frozen=True)
class DirectLayout:
    """Where each block's coefficients and each group's basis go in the packed layout.

    Attributes
    ----------
    ranks : ndarray of int64, one per group (0: stored as it is)
    coef_offsets : ndarray of int64, one per block + 1
        Block i's coefficients (rank x width, C order) are flat elements
        ``coef_offsets[i]:coef_offsets[i + 1]``.
    basis_offsets : ndarray of int64, one per group + 1
        Group g's basis is columns ``basis_offsets[g]:basis_offsets[g + 1]`` of the bases.
    coefficient_chunk, basis_chunk : int
        Elements per coefficient chunk; columns per basis chunk.
    basis_row_chunks : int
        Chunks along the rows of the bases (1 unless the rows are very many).
    """

    ranks: np.ndarray
    coef_offsets: np.ndarray
    basis_offsets: np.ndarray
    coefficient_chunk: int
    basis_chunk: int
    basis_row_chunks: int


class DirectWriting:
    """``start_direct`` / ``write_coefficient_chunk`` / ``write_basis_chunk`` /
    ``finish_direct`` of an artifact writer (it provides the locations, the record and
    the packing helpers these use)."""

    def start_direct(self, ranks: Sequence[int], coefficient_chunk: int) -> "DirectLayout":
        """Create the packed layout at its final shapes for tasks to fill chunk by chunk
        (:meth:`write_coefficient_chunk`, :meth:`write_basis_chunk`) in any process, with
        no part files and no packing pass; :meth:`finish_direct` publishes it.

        Parameters
        ----------
        ranks : one int per group
            Stored rank; 0 stores the group as it is (its coefficients are its blocks).
        coefficient_chunk : int
            Elements per chunk of the flat coefficient array: a task writes one chunk, so
            this bounds a task's data (about chunk x rows / rank values of it).
        """
        ranks = np.asarray(ranks, dtype=np.int64)
        if ranks.shape != (self.n_groups,) or np.any(ranks < 0) or np.any(ranks > self.rows):
            raise ValueError(f"ranks: expected {self.n_groups} values in 0..{self.rows}")
        kinds = np.where(ranks > 0, _KIND_SVD, _KIND_RAW).astype(np.int8)
        base_ranks = np.asarray((self.record.get("base") or {}).get("ranks", [0] * self.n_groups), dtype=np.int64)
        kept = self.base_groups()
        changed = np.flatnonzero((ranks != base_ranks) & kept)
        if changed.size:
            raise ValueError(f"ranks: group {int(changed[0])} keeps its base artifact's basis, of rank "
                             f"{int(base_ranks[changed[0]])}, not {int(ranks[changed[0]])}")
        packed, version = self._new_packed()
        grp = zarr.open_group(store=packed.zarr_store(), mode="w")
        coef_offsets, basis_offsets = self._pack_small(grp, kinds, ranks, ranks, np.zeros(self.n_groups))
        cr, cc = default_chunks(self.rows, self.dtype)
        for key, shape, chunks in (("bases", (self.rows, int(basis_offsets[-1])), (cr, cc)),
                                   ("coefficients", (int(coef_offsets[-1]),), (max(1, int(coefficient_chunk)),))):
            grp.create_array(key, shape=shape, chunks=chunks, dtype=self.dtype, compressors=default_codecs(),
                             fill_value=0, config=ARRAY_CONFIG)
        self._staging.write_json({"version": version}, "direct.json")  # where the packed layout is
        self._direct = None
        return self.direct_layout()

    def direct_layout(self) -> "DirectLayout":
        """The layout :meth:`start_direct` created (from any process), read once per writer
        from the packed group's own index arrays."""
        return self._opened_direct()[1]

    def _opened_direct(self) -> tuple[Location, DirectLayout]:
        if self._direct is None:
            version = self._staging.read_json("direct.json")["version"]
            packed = self._staging.child("packed") if version is None else self._final.child(version)
            grp = zarr.open_group(store=packed.zarr_store(), mode="r")
            self._direct = (packed, DirectLayout(
                ranks=np.asarray(grp["group_ranks"][...], dtype=np.int64),
                coef_offsets=np.asarray(grp["coef_offsets"][...], dtype=np.int64),
                basis_offsets=np.asarray(grp["basis_offsets"][...], dtype=np.int64),
                coefficient_chunk=int(grp["coefficients"].chunks[0]), basis_chunk=int(grp["bases"].chunks[1]),
                basis_row_chunks=-(-self.rows // int(grp["bases"].chunks[0]))), version)
        return self._direct[0], self._direct[1]

    def _write_chunk(self, key: str, selection: tuple, values: np.ndarray, chunk_files: list[str]) -> dict[str, dict]:
        packed = self._opened_direct()[0]
        # every chunk is written, all-zero ones too (readers treat a missing chunk as damage)
        arr = zarr.open_array(store=packed.zarr_store(), path=key, mode="r+").with_config(ARRAY_CONFIG)
        if not np.isfinite(values).all():
            raise ValueError(f"{key} chunk {chunk_files[0]}: values contain NaN or Inf")
        arr[selection] = np.asarray(values, dtype=self.dtype)
        return {r: {"nbytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for r in chunk_files
                for b in [packed.read_bytes(r)]}

    def write_coefficient_chunk(self, chunk: int, values: np.ndarray) -> dict[str, dict]:
        """Write chunk ``chunk`` of the flat coefficient array (exactly its elements, the
        coefficients of blocks in block order). Returns the written files' sizes and
        sha256, for :meth:`finish_direct`."""
        layout = self.direct_layout()
        start = chunk * layout.coefficient_chunk
        stop = min(start + layout.coefficient_chunk, int(layout.coef_offsets[-1]))
        if np.shape(values) != (stop - start,):
            raise ValueError(f"coefficient chunk {chunk}: {np.shape(values)} values, expected ({stop - start},)")
        return self._write_chunk("coefficients", (slice(start, stop),), values, [f"coefficients/c/{chunk}"])

    def write_basis_chunk(self, chunk: int, columns: np.ndarray) -> dict[str, dict]:
        """Write column chunk ``chunk`` of the side-by-side bases (all its rows)."""
        layout = self.direct_layout()
        start = chunk * layout.basis_chunk
        stop = min(start + layout.basis_chunk, int(layout.basis_offsets[-1]))
        if np.shape(columns) != (self.rows, stop - start):
            raise ValueError(f"basis chunk {chunk}: shape {np.shape(columns)}, expected ({self.rows}, {stop - start})")
        files = [f"bases/c/{i}/{chunk}" for i in range(layout.basis_row_chunks)]
        return self._write_chunk("bases", (slice(None), slice(start, stop)), columns, files)

    def finish_direct(self, errors: Sequence[float], chunk_files: dict[str, dict]) -> "Artifact":
        """Publish a layout filled by the chunk writers; ``chunk_files`` merges what they
        returned. Every chunk must have been written."""
        packed, layout = self._opened_direct()
        errors = np.asarray(errors, dtype=np.float64)
        if errors.shape != (self.n_groups,):
            raise ValueError(f"errors: expected {self.n_groups} values, got shape {errors.shape}")
        expected = {f"coefficients/c/{c}" for c in range(-(-int(layout.coef_offsets[-1]) // layout.coefficient_chunk))}
        expected |= {f"bases/c/{i}/{c}" for c in range(-(-int(layout.basis_offsets[-1]) // layout.basis_chunk))
                     for i in range(layout.basis_row_chunks)}
        missing = sorted(expected - set(chunk_files))
        if missing:
            raise ValueError(f"cannot finish: {len(missing)} chunk(s) not written, e.g. {missing[:5]}")
        grp = zarr.open_group(store=packed.zarr_store(), mode="r+")
        grp["group_errors"].with_config(ARRAY_CONFIG)[...] = errors
        return self._publish(packed, self._direct[2], grp, chunk_files)
