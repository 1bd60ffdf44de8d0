"""The last two stages of a :class:`~pipeline.distributed.run.ClusteringRun`: certify
(exact errors from one read of the data) and compress (the artifact).

They are a mixin of the driver: they use its Dask helpers (``_submit``, ``_gather``,
``_track``, ``_timed``), its run, collection and parameters, and its earlier stages
(``_final_groups``, ``merge``).
"""

from __future__ import annotations

import json
import math

import numpy as np

from ..layout import offsets_of
from ..magnitude import group_norms2
from . import tasks
from .compress import certify_with_splits, storage_plan
from .plan import group_ranges, labels_of, pack_groups, unpack_groups

__all__ = ["CertifyAndCompress", "GRAM_BYTES", "PASS_BYTES", "WRITE_GROUPS"]

GRAM_BYTES = 64 * 2**20  # Gram matrices per group range in certify
PASS_BYTES = 256 * 2**20  # coefficients held by the cluster in one compress pass
WRITE_GROUPS = 64  # groups per certify and per artifact-write task


class CertifyAndCompress:
    """The certify and compress stages of the driver (see the module docstring)."""

    # -- certify ---------------------------------------------------------------------------

    def _certify_groups(self, groups: list[list[int]]) -> list[tuple]:
        """Exact (error, adaptive rank, basis) of the given groups from the stored data.

        One read of the data: every batch task emits its Gram partials per group range
        (:func:`pipeline.certify.gram_partials`). Each range adds them up in batch-index
        order, a chain of small tasks that stays on the worker holding the sum, so the
        bits do not depend on the number of workers and only the data crosses the
        network; ranges run in parallel and are certified on the workers."""
        m = self.collection.rows
        labels = labels_of(groups, self.collection.n_blocks)
        group_shifts = self._group_shifts(groups)
        # ranges of few groups: their sums and eigen-solves run in parallel
        ranges = group_ranges(np.full(len(groups), m * m * 8), GRAM_BYTES, max_groups=WRITE_GROUPS)
        n_ranges = int(ranges.max(initial=-1)) + 1
        sums: list = [None] * n_ranges
        leaves = []
        for i, (first, stop, part) in enumerate(self._batches_of(labels)):
            leaf = self._submit("gram", i, tasks.gram_batch, self._handle, first, stop, part, ranges, n_ranges,
                                group_shifts)
            leaves.append(leaf)
            for r in range(n_ranges):  # submitted right after the leaf, so sums are formed (and freed) early
                # the range's slice as its own small result: the sum, the larger input, stays put
                piece = self._submit("gram-piece", f"{r}-{i}", tasks.pick_range, leaf, r, priority=1)
                sums[r] = piece if sums[r] is None else self._submit(
                    "gram-sum", f"{r}-{i}", tasks.combine_range, sums[r], piece, priority=1)
        certs = [self._submit("certify", r, tasks.certify_range, sums[r], self.params["rank"],
                              self.params["eps"], priority=2)
                 for r in range(n_ranges)]
        self._track("certify", leaves)
        certified: dict[int, tuple] = {}
        for part in self._gather("certify-ranges", certs):
            certified.update(part)
        return [certified[g] for g in range(len(groups))]

    def certify(self) -> dict:
        """Exact rank-r error of every group; groups above eps are split and re-certified."""
        self._ensure_merged()

        def compute():
            groups, sketches = self._final_groups()
            bounds = [s.error_bound() for s in sketches]
            groups, certified, split, splits = certify_with_splits(groups, self._certify_groups, self.params["eps"])
            bounds = [0.0 if was_split else bounds[g] for g, was_split in enumerate(split)]  # a half has no sketch
            errors = np.array([c[0] for c in certified])
            ranks = np.array([c[1] for c in certified], dtype=np.int64)
            flat, offsets = pack_groups(groups)
            bases = [c[2] for c in certified]
            arrays = {
                "members": flat,
                "group_offsets": offsets,
                "errors": errors,
                "adaptive_ranks": ranks,
                "bounds": np.asarray(bounds, dtype=np.float64),
                "bases": np.hstack(bases) if bases else np.zeros((self.collection.rows, 0)),
            }
            return arrays, {"n_groups": len(groups), "splits": splits, "max_error": float(errors.max(initial=0.0))}

        return self._timed("certify", compute)

    def _ensure_merged(self) -> None:
        if not self.run.is_complete("certify"):
            self.merge()

    # -- compress --------------------------------------------------------------------------

    def _storage_plan(self, certified: dict) -> tuple[list[list[int]], dict[int, np.ndarray | None], np.ndarray]:
        """Per group the basis to store (None: stored as it is) and the stored rank."""
        groups = unpack_groups(certified["members"], certified["group_offsets"])
        adaptive = np.asarray(certified["adaptive_ranks"])
        compressed = storage_plan(groups, certified["errors"], adaptive, self.collection.widths, self.collection.rows,
                                  self.params["eps"])
        starts = offsets_of(adaptive)
        bases = {g: certified["bases"][:, starts[g] : starts[g] + adaptive[g]] if compressed[g] else None
                 for g in range(len(groups))}
        return groups, bases, np.where(compressed, adaptive, 0).astype(np.int64)

    def _write_coefficients(self, groups, bases, ranks, label: str) -> dict[int, float]:
        """Coefficients of every block written into the artifact, one read of the data per
        pass; a pass holds at most about PASS_BYTES of coefficients on the cluster."""
        coll = self.collection
        widths = coll.widths
        itemsize = np.dtype(coll.dtype).itemsize  # coefficients travel in the data's dtype
        per_group = np.array([itemsize * (ranks[g] if bases[g] is not None else coll.rows) * widths[group].sum()
                              for g, group in enumerate(groups)])
        # ranges of few groups: each is one write task, and they run in parallel
        ranges = group_ranges(per_group, GRAM_BYTES, max_groups=WRITE_GROUPS)
        range_bytes = np.bincount(ranges, weights=per_group) if len(groups) else np.zeros(0)
        passes = group_ranges(range_bytes, PASS_BYTES)
        labels = labels_of(groups, coll.n_blocks)
        group_shifts = self._group_shifts(groups)
        artifact = (coll.url, coll.name, label, json.dumps(coll.storage_options, sort_keys=True))
        residual2: dict[int, float] = {}
        for p in np.unique(passes):
            in_pass = np.flatnonzero(passes == p)
            pass_groups = np.flatnonzero(np.isin(ranges, in_pass))
            pass_labels = np.where(np.isin(labels, pass_groups), labels, -1)
            # workers read the bases from the certify checkpoint (they survive a restart)
            parts = [self._submit("coef", first, tasks.coefficient_batch, self._handle, first, stop, part, ranges,
                                  len(range_bytes), ranks, group_shifts)
                     for first, stop, part in self._batches_of(pass_labels)]
            writes = []
            for r in in_pass:
                members = {int(g): groups[g] for g in np.flatnonzero(ranges == r)}
                writes.append(self._submit("write", int(r), tasks.write_range, self._handle, artifact, int(r),
                                           members, ranks, *parts, priority=1))
            self._track("compress", parts)
            for part in self._gather("compress-write", writes):
                residual2.update(part)
        return residual2

    def compress(self) -> dict:
        """Write the compressed artifact (label = run id) and the realised errors."""
        certified = self.certify()

        def compute():
            storage = tasks.import_storage()
            groups, bases, ranks = self._storage_plan(certified)
            coll = self.collection
            label = self.run_id
            storage.create_artifact(coll.url, coll.name, label, groups=groups, params=dict(self.params),
                                    overwrite=True, storage_options=coll.storage_options)
            residual2 = self._write_coefficients(groups, bases, ranks, label)
            totals = group_norms2(coll.norms2, self._shifts(), groups)  # at each group's shift, as residual2
            stored_errors = np.array([
                math.sqrt(residual2[g] / totals[g]) if totals[g] > 0 else 0.0 for g in range(len(groups))
            ])
            writer = storage.open_artifact_writer(coll.url, coll.name, label, storage_options=coll.storage_options)
            self._lease.check()  # publish only while this process is still the run's writer
            artifact = writer.finalize(stored_errors.tolist(), ranks.tolist())
            arrays = {"stored_errors": stored_errors, "stored_ranks": ranks}
            return arrays, {"artifact": label, "bytes_compressed": int(artifact.nbytes_stored)}

        stage = self._timed("compress", compute)
        if not self.keep_intermediate:
            self.prune()
        return stage
