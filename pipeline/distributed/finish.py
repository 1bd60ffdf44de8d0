"""The last two stages of a :class:`~pipeline.distributed.run.ClusteringRun`: certify
(exact errors from one read of the data) and compress (the artifact).

They are a mixin of the driver: they use its Dask helpers (``_submit``, ``_gather``,
``_track``, ``_timed``), its run, collection and parameters, and its earlier stages
(``_final_groups``, ``merge``).
"""

from __future__ import annotations

import json

import numpy as np

from ..certify import combine_projected
from ..magnitude import group_norms2
from . import tasks
from .compress import certify_with_splits, storage_plan
from .plan import group_ranges, labels_of, pack_groups, unpack_groups

__all__ = ["CertifyAndCompress", "GRAM_BYTES", "CERTIFY_GROUPS", "CERTIFY_WAVE_BYTES"]

GRAM_BYTES = 64 * 2**20  # Gram matrices per group range in certify
CERTIFY_WAVE_BYTES = 2**30  # partial sums alive at once across the cluster while certifying
CERTIFY_GROUPS = 64  # groups per certify task, at most
CERTIFY_RANGES = 32  # certify tasks, at least, groups permitting (room for many workers)
RITZ_RANGE_BYTES = 8 * 2**20  # sums or bases per group range on the Rayleigh-Ritz route
MIN_COEFFICIENT_CHUNK = 2**16  # elements per chunk of the artifact's coefficients, at least
MAX_COEFFICIENT_CHUNK = 2**22  # and at most (a compress task writes one chunk)


def residual_array(residual2: dict[int, float], n_groups: int) -> np.ndarray:
    """The compress tasks' squared residuals per group (0 for a group they did not write)."""
    return np.array([residual2.get(g, 0.0) for g in range(n_groups)], dtype=np.float64)


def relative_errors(residual2: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """sqrt(residual / total) per group, 0 for a group of total 0."""
    return np.sqrt(np.divide(residual2, totals, out=np.zeros_like(residual2), where=totals > 0))


class CertifyAndCompress:
    """The certify and compress stages of the driver (see the module docstring)."""

    # -- certify ---------------------------------------------------------------------------

    def _certify_groups(self, groups: list[list[int]], refs: list | None = None) -> list[tuple]:
        """(error, adaptive rank, basis reference) of the given groups from the stored data.

        Groups with a clustering sketch (``refs[g]``: its (stage, index), or None) go the
        Rayleigh-Ritz route first (:meth:`_certify_projected`): one read, k x k numbers
        per group. The others, and any that route cannot certify, go the Gram route
        (:meth:`_certify_exact`)."""
        certified: list = [None] * len(groups)
        sketched = [g for g in range(len(groups)) if refs is not None and refs[g] is not None]
        if sketched:
            ritz = self._certify_projected([groups[g] for g in sketched], [refs[g] for g in sketched])
            for g, cert in zip(sketched, ritz):
                certified[g] = cert
        rest = [g for g in range(len(groups)) if certified[g] is None]
        for g, cert in zip(rest, self._certify_exact([groups[g] for g in rest]) if rest else []):
            certified[g] = cert
        return certified

    def _certify_exact(self, groups: list[list[int]]) -> list[tuple]:
        """Exact (error, adaptive rank, basis) of the given groups from their Gram matrices,
        in waves of consecutive groups whose partial sums (per group its columns or its
        m x m Gram, whichever is smaller) take at most CERTIFY_WAVE_BYTES across the
        cluster: one read of the batches holding a wave's blocks per wave (one wave unless
        the groups' sums are that large). A group's sum does not depend on the waves."""
        m = self.collection.rows
        columns = np.array([int(self.collection.widths[g].sum()) for g in groups], dtype=np.int64)
        waves = group_ranges(np.minimum(columns, m) * m * 8, CERTIFY_WAVE_BYTES)
        certified: list[tuple] = []
        for wave in range(int(waves.max(initial=-1)) + 1):
            part = [groups[g] for g in np.flatnonzero(waves == wave)]
            # ranges of few groups: their sums and eigen-solves run in parallel. At least two per
            # batch, up to CERTIFY_RANGES, groups permitting: as many as the data can keep busy
            # (small collections pay no task overhead for it; the count depends on the data alone)
            wanted = min(CERTIFY_RANGES, 2 * self.n_batches)
            per_range = int(np.clip(-(-len(part) // max(wanted, 1)), 1, CERTIFY_GROUPS))
            ranges = group_ranges(np.full(len(part), m * m * 8), GRAM_BYTES, max_groups=per_range)
            certified += self._summed_pass("gram", part, ranges, tasks.gram_batch, lambda labels: (),
                                           tasks.combine_range,
                                           lambda stage, sums, members: (tasks.certify_range, stage, sums))
        return certified

    def _certify_projected(self, groups: list[list[int]], refs: list[tuple[str, int]]) -> list[tuple | None]:
        """Rayleigh-Ritz certificates (:func:`pipeline.certify.certify_projected`) of groups
        with clustering sketches: the best rank-r basis inside each sketch's span and its
        exact error, from one read; None for a group this cannot certify."""
        k = self.params["rank"] + self.params["oversampling"]
        by_group = dict(enumerate(refs))

        def batch_args(labels: np.ndarray) -> tuple:
            return ({int(g): by_group[int(g)] for g in np.unique(labels[labels >= 0])},)

        def finish(stage: str, sums, members: np.ndarray) -> tuple:
            return tasks.certify_projected_range, stage, sums, {int(g): by_group[int(g)] for g in members}

        # ranges cut by bytes alone (k x k sums, m x r bases written by the range's task):
        # many groups per range keep the chains of sums short (a few tasks per batch cost
        # more than the sums themselves), while the bases' writes still spread over workers
        rows, rank = self.collection.rows, self.params["rank"]
        ranges = group_ranges(np.full(len(groups), max(k * k, rows * rank) * 8), RITZ_RANGE_BYTES)
        return self._summed_pass("ritz", groups, ranges, tasks.projected_batch, batch_args,
                                 combine_projected, finish)

    def _summed_pass(self, kind: str, groups: list[list[int]], ranges: np.ndarray, batch_task, batch_args,
                     combine, finish) -> list:
        """One read of the data for ``groups``: every batch task (``batch_task``) emits its
        partials per group range, each range adds them up in batch-index order (a chain of
        small tasks that stays on the worker holding the sum, so the bits do not depend on
        the number of workers and only the partials cross the network), and one task per
        range (``finish``) certifies its groups on the workers, checkpointing their bases.
        ``ranges`` gives each group's range, ``batch_args(labels)`` a batch task's extra
        arguments, ``finish(stage, sums, members)`` the range task and its arguments before
        rank and eps."""
        labels = labels_of(groups, self.collection.n_blocks)
        group_shifts = self._group_shifts(groups)
        n_ranges = int(ranges.max(initial=-1)) + 1
        sums: list = [None] * n_ranges
        leaves = []
        for i, (first, stop, part) in enumerate(self._batches_of(labels)):
            leaf = self._submit(kind, i, batch_task, self._handle, first, stop, part, ranges, n_ranges, group_shifts,
                                *batch_args(part))
            leaves.append(leaf)
            for r in range(n_ranges):  # submitted right after the leaf, so sums are formed (and freed) early
                # the range's slice as its own small result: the sum, the larger input, stays put
                piece = self._submit(f"{kind}-piece", f"{r}-{i}", tasks.pick_range, leaf, r, priority=1)
                sums[r] = piece if sums[r] is None else self._submit(
                    f"{kind}-sum", f"{r}-{i}", combine, sums[r], piece, priority=1)
        self._certify_calls += 1  # a split group is certified again: its ranges get new stages
        call = self._certify_calls
        certs = []
        by_range = np.argsort(ranges, kind="stable")
        members = np.split(by_range, np.searchsorted(ranges[by_range], np.arange(1, n_ranges)))
        for r in range(n_ranges):
            func, *args = finish(f"certify-{kind}-{call:02d}-{r:05d}", sums[r], members[r])
            certs.append(self._submit("certify", r, func, self._handle, self._token, *args, self.params["rank"],
                                      self.params["eps"], priority=2))
        self._track("certify", leaves)
        certified: dict[int, tuple] = {}
        for part in self._gather("certify-ranges", certs):
            certified.update(part)
        return [certified[g] for g in range(len(groups))]

    def certify(self) -> dict:
        """Certified rank-r error, adaptive rank and basis of every group (the Rayleigh-Ritz
        route on the group's clustering sketch, else its Gram); groups above eps are split
        and re-certified."""
        self._ensure_merged()

        def compute():
            groups, sketches = self._final_groups()
            bounds = [float(b) for b in sketches.bounds]
            sketch_of = {tuple(g): ref for g, ref in zip(groups, sketches.refs(range(len(groups))))}

            def certify(part: list[list[int]]) -> list[tuple]:  # split halves have no sketch
                return self._certify_groups(part, [sketch_of.get(tuple(g)) for g in part])

            groups, certified, split, splits = certify_with_splits(groups, certify, self.params["eps"])
            bounds = [0.0 if was_split else bounds[g] for g, was_split in enumerate(split)]  # a half has no sketch
            errors = np.array([c[0] for c in certified])
            ranks = np.array([c[1] for c in certified], dtype=np.int64)
            flat, offsets = pack_groups(groups)
            # the bases stay in the range stages the certify tasks wrote: only where they are
            stages = sorted({c[2][0] for c in certified})
            index = {name: i for i, name in enumerate(stages)}
            arrays = {
                "members": flat,
                "group_offsets": offsets,
                "errors": errors,
                "adaptive_ranks": ranks,
                "bounds": np.asarray(bounds, dtype=np.float64),
                "basis_stage": np.array([index[c[2][0]] for c in certified], dtype=np.int64),
                "basis_start": np.array([c[2][1] for c in certified], dtype=np.int64),
            }
            meta = {"n_groups": len(groups), "splits": splits, "max_error": float(errors.max(initial=0.0)),
                    "basis_stages": stages,
                    # groups whose basis the Gram route gave (the Ritz route could not certify them)
                    "gram_route": sum(name.startswith("certify-gram-") for name, _ in (c[2] for c in certified))}
            return arrays, meta

        return self._timed("certify", compute)

    def _ensure_merged(self) -> None:
        if not self.run.is_complete("certify"):
            self.merge()

    # -- compress --------------------------------------------------------------------------

    def _artifact_base(self) -> tuple | None:
        """The artifact the one being written extends (an incremental run's parent), as
        :func:`tasks.stored_bases` takes it; None for a whole artifact."""
        return None

    def stored_ranks(self, certified: dict) -> tuple[list[list[int]], np.ndarray]:
        """The certified groups and the rank compress stores each at (0: as it is), from
        the certify stage's arrays (:meth:`certify`)."""
        groups = unpack_groups(certified["members"], certified["group_offsets"])
        adaptive = np.asarray(certified["adaptive_ranks"])
        compressed = storage_plan(groups, certified["errors"], adaptive, self.collection.widths, self.collection.rows,
                                  self.params["eps"])
        return groups, np.where(compressed, adaptive, 0).astype(np.int64)

    def _write_artifact(self, writer, groups, ranks: np.ndarray, label: str) -> tuple[dict[int, float], dict]:
        """Every block's coefficients and every group's basis written straight into the
        artifact's packed layout by map tasks, one chunk each, in parallel: one read of
        the data and no packing pass on the client. Returns the groups' squared residuals
        and the written chunk files (for the manifest)."""
        coll = self.collection
        itemsize = np.dtype(coll.dtype).itemsize
        labels = labels_of(groups, coll.n_blocks)
        per_block = np.where(ranks[labels] > 0, ranks[labels], coll.rows) * coll.widths
        data_elements = max(1, coll.rows * int(coll.widths.sum()))
        # a chunk's blocks hold about batch_bytes of data on average
        chunk = int(np.clip(int(per_block.sum()) * (self._batch_bytes / itemsize) / data_elements,
                            MIN_COEFFICIENT_CHUNK, MAX_COEFFICIENT_CHUNK))
        layout = writer.start_direct(ranks, chunk)
        group_shifts = self._group_shifts(groups)
        artifact = (coll.url, coll.name, label, json.dumps(coll.storage_options, sort_keys=True))
        total = int(layout.coef_offsets[-1])
        futures = []
        for c in range(-(-total // chunk)):
            low, high = c * chunk, min((c + 1) * chunk, total)
            first = int(np.searchsorted(layout.coef_offsets, low, side="right")) - 1
            stop = int(np.searchsorted(layout.coef_offsets, high, side="left"))
            futures.append(self._submit("coef", c, tasks.coefficient_chunk, self._handle, artifact, c, first, stop,
                                        labels[first:stop], ranks, group_shifts, self._artifact_base()))
        n_basis = -(-int(layout.basis_offsets[-1]) // layout.basis_chunk)
        bases = [self._submit("basis", c, tasks.basis_chunk, self._handle, artifact, c, ranks, self._artifact_base())
                 for c in range(n_basis)]
        self._track("compress", futures + bases)  # one progress count for both kinds
        residual2: dict[int, float] = {}
        files: dict[str, dict] = {}
        for residuals, written in self.client.gather(futures):
            for g, value in residuals.items():  # chunk order: the sums do not depend on the workers
                residual2[g] = residual2.get(g, 0.0) + value
            files.update(written)
        for written in self.client.gather(bases):
            files.update(written)
        return residual2, files

    def compress(self) -> dict:
        """Write the compressed artifact (label = run id) and the realised errors."""
        certified = self.certify()

        def compute():
            storage = tasks.import_storage()
            groups, ranks = self.stored_ranks(certified)
            coll = self.collection
            label = self.run_id
            writer = storage.create_artifact(coll.url, coll.name, label, groups=groups, params=dict(self.params),
                                             overwrite=True, storage_options=coll.storage_options)
            residual2, files = self._write_artifact(writer, groups, ranks, label)
            totals = group_norms2(coll.norms2, self._shifts(), groups)  # at each group's shift, as residual2
            stored_errors = relative_errors(residual_array(residual2, len(groups)), totals)
            self._lease.check()  # publish only while this process is still the run's writer
            artifact = writer.finish_direct(stored_errors.tolist(), files)
            arrays = {"stored_errors": stored_errors, "stored_ranks": ranks}
            return arrays, {"artifact": label, "bytes_compressed": int(artifact.nbytes_stored)}

        stage = self._timed("compress", compute)
        if not self.keep_intermediate:
            self.prune()
        return stage
