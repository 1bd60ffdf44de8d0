"""Incremental runs: update a finished run's groups and artifact after blocks were appended.

An :class:`UpdateRun` starts from a *parent* run whose artifact is published, on the
collection as it is now (the parent's blocks plus blocks appended since, which keep the
indices after them). Its stages, each checkpointed like a full run's:

1. **absorb** (map over the batches holding new blocks; one read of the new data): every
   new block is routed to the parent groups whose stored bases hold most of its
   strongest direction, and its residual against each candidate's stored basis is
   measured; the client then places blocks where the group's stored error stays <= eps
   (:func:`pipeline.incremental.absorb`). Those groups keep their basis: nothing stored
   for them changes, the new blocks' coefficients are added.
2. **local** and **merge**: the blocks no group took (leftovers) are clustered among
   themselves as a full run clusters all blocks: shards of at most ``shard_size``
   leftovers, ordered by band and by their best parent group, then merge rounds. The
   parent's groups stored raw (too few columns for rank r to pay) that hold a near copy
   of a leftover join this clustering (:meth:`UpdateRun._pull`): a model's column that no
   group fits and the same column of a later checkpoint then share a group, as in a full
   run. A raw group whose blocks end as one group again stays as it was; the others are
   dropped from the artifact, their blocks written in the new groups.
3. **certify**: the new groups only, from their data (as a full run certifies).
4. **compress**: a *delta artifact* (``storage.create_artifact(base=...)``) that reads the
   parent's groups, bases and coefficients from the parent's artifact and holds only the
   new blocks' coefficients and the new groups' bases. Untouched groups cost nothing.

Cost: one read of the new data in absorb and in compress, and of the leftovers in local
and certify; one read of the parent's raw groups (when there are leftovers) to find near
copies, and of the raw groups pulled; worker work O(new blocks x parent bases x m) in the
routing product and O(leftovers x raw blocks x m) in the copy search; client O(new
blocks log). Nothing else of the parent's data is read again.

Every group's stored error is measured on the written numbers and is <= eps: parent
groups that took blocks by the exact residuals of :func:`pipeline.incremental.absorb`,
new groups by certify. For a group that took blocks, ``errors`` reports that stored
error (at least its exact rank-r error), for the others the parent's certified error.

Drift: groups keep their bases, so new blocks that belong to a group but do not fit its
stored basis end in groups of their own, where a full re-cluster would have re-fitted the
basis. :meth:`UpdateRun._estimated_full_ratio` prices those blocks as members of their
group; :func:`needs_full_run` says when the update's compression ratio falls below
``DRIFT_FLOOR`` times that estimate, or when ``MAX_DEPTH`` updates follow one another: the
caller then runs a full re-cluster and says why. Near copies of blocks that a parent
group fits poorly are not seen by the estimate; the drift they cause is bounded by
``MAX_DEPTH`` alone.
"""

from __future__ import annotations

import hashlib
import json
import types
from dataclasses import dataclass

import numpy as np

from ..incremental import absorb
from ..magnitude import band_pure, group_norms2, group_shifts
from ..metrics import compression_ratio, group_params
from . import tasks, update_tasks
from .checkpoints import GroupSketches
from .finish import relative_errors, residual_array
from .plan import labels_of, pack_groups, unpack_groups
from .result import DistributedResult
from .run import STAGES, ClusteringRun, Progress, stage_timings

__all__ = ["UpdateRun", "ParentRun", "needs_full_run", "update_run_id", "DRIFT_FLOOR", "MAX_DEPTH", "UPDATE_CANDIDATES"]

UPDATE_CANDIDATES = 3  # parent groups each new block is offered to, best first
PULL_COLUMNS = 8  # raw parent columns searched for near copies, at most this many times the new columns
DRIFT_FLOOR = 0.97  # an update below this share of the estimated full-run ratio asks for a full run
MAX_DEPTH = 10  # updates in a row before a full run is asked for: bounds the drift no estimate sees, and the deltas read through
_RUN_KEYS = ("rank", "eps", "method", "order", "oversampling", "patience", "tol", "shard_size", "merge_neighbours",
             "batch_bytes")


@dataclass
class ParentRun:
    """What an update needs of a finished run: its groups and per-group numbers, its
    blocks' magnitude shifts, its artifact and its lineage."""

    run_id: str
    params: dict
    artifact: str
    n_blocks: int
    groups: list[list[int]]
    errors: np.ndarray
    bounds: np.ndarray
    adaptive_ranks: np.ndarray
    stored_errors: np.ndarray
    stored_ranks: np.ndarray
    shifts: np.ndarray
    lineage: dict

    @classmethod
    def load(cls, collection, run_id: str) -> "ParentRun":
        """Read a finished run (full or update) of ``collection`` from its run folder.

        Raises
        ------
        storage.RunNotFoundError
            No such run.
        ValueError
            The run has not published its artifact, or the collection no longer starts
            with the run's blocks.
        """
        storage = tasks.import_storage()
        record = storage.read_run_record(collection, run_id)
        run = storage.open_run(collection.url, collection.name, run_id, record["params"], record["input_fingerprint"],
                               storage_options=collection.storage_options)
        if not run.is_complete("compress"):
            raise ValueError(f"run {run_id!r} has not finished (no artifact published): it cannot be updated")
        compressed, meta = run.load_stage("compress")
        if "members" in compressed:  # an update: its compress stage holds every group's numbers
            state, lineage = compressed, dict(meta["lineage"])
        else:
            certified = run.load_stage("certify")[0]
            state = {**certified, **compressed, "shifts": run.load_stage("scan", ["shifts"])[0]["shifts"]}
            lineage = None
        groups = unpack_groups(state["members"], state["group_offsets"])
        n_blocks = len(state["shifts"])
        if n_blocks > collection.n_blocks or not np.array_equal(
                np.asarray(storage.open_artifact(collection.url, collection.name, meta["artifact"],
                                                 storage_options=collection.storage_options).widths),
                collection.widths[:n_blocks]):
            raise ValueError(f"collection {collection.name!r} does not start with the {n_blocks} blocks of run "
                             f"{run_id!r}: only a collection grown by appends can be updated")
        if lineage is None:  # a full run is the root of its lineage
            shape = types.SimpleNamespace(rows=collection.rows, widths=collection.widths[:n_blocks])
            seconds = sum(stage_timings(run).values())
            lineage = {"root_run": run_id, "depth": 0, "root_ratio": compression_ratio(shape, groups, record["params"]["rank"]),
                       "root_seconds": seconds}
        return cls(run_id=run_id, params=dict(record["params"]), artifact=str(meta["artifact"]), n_blocks=n_blocks,
                   groups=groups, errors=np.asarray(state["errors"]), bounds=np.asarray(state["bounds"]),
                   adaptive_ranks=np.asarray(state["adaptive_ranks"]),
                   stored_errors=np.asarray(state["stored_errors"], dtype=np.float64),
                   stored_ranks=np.asarray(state["stored_ranks"], dtype=np.int64),
                   shifts=np.asarray(state["shifts"], dtype=np.int64), lineage=lineage)


@dataclass
class _Layout:
    """An update's grouping: per group its members, the parent group it keeps (-1: none),
    its index among the certified new groups (-1: none) and its stored rank; and the
    parent groups dropped (their raw blocks regrouped with new ones)."""

    groups: list[list[int]]
    parent_of: np.ndarray
    certified_of: np.ndarray
    ranks: np.ndarray
    dropped: list[int]


def update_run_id(parent_run_id: str, collection) -> str:
    """The run id of the update of ``parent_run_id`` to the collection as it is: equal
    updates share one run folder and resume."""
    payload = json.dumps({"parent": parent_run_id, "input": collection.fingerprint()}, sort_keys=True)
    return "update-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


class UpdateRun(ClusteringRun):
    """An incremental run over a finished parent run (see the module docstring).

    Parameters
    ----------
    collection : storage.Collection
        The collection now: the parent's blocks and those appended since.
    parent_run_id : str
        A finished run (full or update) of this collection; its parameters are used.
    client, run_id, progress, lease_wait_s, keep_intermediate
        As for :class:`ClusteringRun`; the default run id is :func:`update_run_id`.
    """

    def __init__(self, collection, *, parent_run_id: str, client=None, run_id: str | None = None,
                 progress: Progress | None = None, lease_wait_s: float = 600.0, keep_intermediate: bool = False):
        self.parent = ParentRun.load(collection, parent_run_id)
        self._current_layout: _Layout | None = None  # the grouping compress writes
        if collection.n_blocks == self.parent.n_blocks:
            raise ValueError(f"collection {collection.name!r} has no blocks beyond the {self.parent.n_blocks} of run "
                             f"{parent_run_id!r}: there is nothing to update")
        super().__init__(collection, **{k: self.parent.params[k] for k in _RUN_KEYS}, client=client,
                         run_id=run_id or update_run_id(parent_run_id, collection), progress=progress,
                         lease_wait_s=lease_wait_s, keep_intermediate=keep_intermediate,
                         lineage={"parent_run": parent_run_id})

    @property
    def n_new(self) -> int:
        return self.collection.n_blocks - self.parent.n_blocks

    def _parent_artifact(self) -> tuple:
        coll = self.collection
        return coll.url, coll.name, self.parent.artifact, json.dumps(coll.storage_options, sort_keys=True)

    # -- absorb --------------------------------------------------------------------------

    def absorb(self) -> dict:
        """Offer every new block to its best parent groups (see the module docstring)."""

        def compute():
            parent, bounds = self.parent, self._batch_bounds
            shifts_of_groups = group_shifts(parent.shifts, parent.groups)
            futures = []
            for b in range(self.n_batches):
                first, stop = max(int(bounds[b]), parent.n_blocks), int(bounds[b + 1])
                if first < stop:
                    futures.append(self._submit("offer", b, update_tasks.offer_batch, self._handle,
                                                self._parent_artifact(), first, stop, shifts_of_groups,
                                                UPDATE_CANDIDATES))
            offers = sorted(self._gather("absorb", futures), key=lambda o: o["first"])
            pick = lambda key: np.concatenate([o[key] for o in offers])  # noqa: E731
            totals = group_norms2(self.collection.norms2, parent.shifts, parent.groups)
            assigned, _, _ = absorb(pick("candidates"), pick("residual2"), pick("norms2"),
                                    parent.stored_errors ** 2 * totals, totals, self.params["eps"])
            taken = assigned >= 0
            arrays = {"shifts": np.concatenate([parent.shifts, pick("shifts")]), "assigned": assigned,
                      "best": pick("candidates")[:, 0], "best_share": pick("share")}
            meta = {"parent_run": parent.run_id, "blocks_added": self.n_new, "absorbed": int(taken.sum()),
                    "groups_touched": int(np.unique(assigned[taken]).size), "leftovers": int((~taken).sum())}
            return arrays, meta

        return self._timed("absorb", compute)

    def scan(self) -> dict:
        """The shifts of every block (the parent's and the new blocks', from absorb)."""
        return self.absorb()

    # -- leftovers: local and merge ------------------------------------------------------

    def _leftovers(self) -> np.ndarray:
        return self.parent.n_blocks + np.flatnonzero(np.asarray(self.absorb()["assigned"]) < 0)

    def local(self) -> dict:
        """The greedy on the leftovers, and on the blocks of the parent's raw groups that
        hold near copies of them (:meth:`_pull`), in shards of one band ordered by best
        parent group (pulled blocks next to their copy)."""
        absorbed = self.absorb()

        def compute():
            n_old = self.parent.n_blocks
            leftovers = self._leftovers()
            pulled, partners = self._pull(leftovers)
            best = np.asarray(absorbed["best"])
            ids = np.concatenate([leftovers, pulled])
            partner = np.concatenate([leftovers, partners])  # a leftover is its own partner
            shifts = np.asarray(absorbed["shifts"])[ids]
            order = np.lexsort((ids < n_old, partner, best[partner - n_old], shifts))
            ordered, ordered_shifts = ids[order], shifts[order]
            shards = []
            for band in np.split(ordered, np.flatnonzero(np.diff(ordered_shifts)) + 1):
                shards += [np.sort(band[i : i + self.shard_size]) for i in range(0, len(band), self.shard_size)]
            futures = [self._submit("local", s, update_tasks.leftover_shard, self._handle, self._token,
                                    dict(self.params), s, ids)
                       for s, ids in enumerate(shards)]
            results = self._gather("local", futures)
            groups = [g for r in results for g in r["groups"]]
            sketches = GroupSketches.of([(r["stage"], i, total, bound) for r in results
                                         for i, (total, bound) in enumerate(zip(r["totals"], r["bounds"]))])
            arrays = {**self._save_groups(groups, sketches), "pulled": pulled, "pulled_key": best[partners - n_old]}
            return arrays, {"n_groups": len(groups), "n_shards": len(shards), "pulled": int(pulled.size)}

        return self._timed("local", compute)

    def _pull(self, leftovers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The blocks of the parent's groups stored raw (too few columns for rank r to pay)
        in which some block has a near copy among the leftovers (1 - eps^2 of its strongest
        direction; say a weight column and the same column of a later checkpoint), and for
        each pulled block the leftover it sits next to in the shards. A full run would
        group such copies with their originals; under frozen bases they would stay apart.
        The raw groups' blocks are read once, on the workers; not at all when they hold
        more than PULL_COLUMNS times the new columns (a mostly incompressible collection:
        the search would cost several updates)."""
        parent, widths = self.parent, self.collection.widths
        raw_groups = [h for h, rank in enumerate(parent.stored_ranks.tolist()) if rank == 0]
        empty = np.zeros(0, dtype=np.int64)
        raw_columns = sum(int(widths[parent.groups[h]].sum()) for h in raw_groups)
        if not leftovers.size or not raw_groups or raw_columns > PULL_COLUMNS * int(widths[parent.n_blocks:].sum()):
            return empty, empty  # nothing to search, or a search that would cost more than the update
        group_of = {b: h for h in raw_groups for b in parent.groups[h]}
        reference = self._submit("pull", "copies", update_tasks.unit_directions, self._handle, leftovers)
        floor = 1.0 - self.params["eps"] ** 2
        futures = [self._submit("pull", b, update_tasks.near_copies, self._handle, ids, reference, floor)
                   for b, ids in enumerate(self._by_batch(np.array(sorted(group_of), dtype=np.int64)))]
        copy_of: dict[int, int] = {}  # per pulled raw group, the copy its first near block has
        for near, copies in self._gather("local", futures):
            for block, copy in zip(near.tolist(), copies.tolist()):
                copy_of.setdefault(group_of[block], copy)
        pulled = [(b, copy_of[h]) for h in sorted(copy_of) for b in parent.groups[h]]
        return np.array([p[0] for p in pulled], dtype=np.int64), np.array([p[1] for p in pulled], dtype=np.int64)

    def _by_batch(self, ids: np.ndarray) -> list[np.ndarray]:
        """Sorted block ids cut where batches end: a task's worth of data each."""
        return [self._batch_bounds[b] + positions for b, positions in self._picks_of(ids)]

    def _bucket_keys(self, groups: list[list[int]], index: int) -> np.ndarray:
        """Merge keys: even rounds the best parent group of a group's first block, odd
        rounds one key per band (buckets then follow energy order)."""
        if index % 2 == 0:
            best, n_old = np.asarray(self.absorb()["best"]), self.parent.n_blocks
            local = self.local()
            pulled = dict(zip(np.asarray(local["pulled"]).tolist(), np.asarray(local["pulled_key"]).tolist()))
            keys = np.array([best[g[0] - n_old] if g[0] >= n_old else pulled[g[0]] for g in groups], dtype=np.int64)
        else:
            keys = np.zeros(len(groups), dtype=np.int64)
        return band_pure(keys, self._group_shifts(groups))

    # -- compress and result -------------------------------------------------------------

    def _layout(self, certified: dict) -> "_Layout":
        """The updated grouping: the parent's groups that stay (with the blocks they took
        appended, in block order), then the new groups. A raw parent group pulled into the
        leftovers (:meth:`_pull`) whose blocks end as one group again stays as it was;
        the others are dropped, their blocks now in new groups."""
        parent, n_old = self.parent, self.parent.n_blocks
        new_groups, new_ranks = self.stored_ranks(certified)
        pulled = set(np.asarray(self.local()["pulled"]).tolist())
        pulled_groups = {h: tuple(sorted(g)) for h, g in enumerate(parent.groups) if g[0] in pulled}
        as_before = {members: h for h, members in pulled_groups.items()}
        back = {k for k, g in enumerate(new_groups) if tuple(sorted(g)) in as_before}  # regrouped as they were
        dropped = sorted(set(pulled_groups) - {as_before[tuple(sorted(new_groups[k]))] for k in back})
        kept = np.setdiff1d(np.arange(len(parent.groups)), dropped)
        joined = np.asarray(self.absorb()["assigned"])
        taken: dict[int, list[int]] = {}
        for position in np.flatnonzero(joined >= 0).tolist():
            taken.setdefault(int(joined[position]), []).append(n_old + position)
        new = [k for k in range(len(new_groups)) if k not in back]
        groups = [parent.groups[h] + taken.get(int(h), []) for h in kept] + [new_groups[k] for k in new]
        ranks = np.concatenate([parent.stored_ranks[kept], new_ranks[new]]).astype(np.int64)
        return _Layout(groups, np.concatenate([kept, np.full(len(new), -1)]).astype(np.int64),
                       np.concatenate([np.full(len(kept), -1), new]).astype(np.int64), ranks, dropped)

    def _artifact_base(self) -> tuple | None:
        layout = self._current_layout
        kept = {g: int(h) for g, h in enumerate(layout.parent_of.tolist()) if h >= 0}
        fresh = {g: int(k) for g, k in enumerate(layout.certified_of.tolist()) if k >= 0}
        return self._parent_artifact(), kept, fresh

    def compress(self) -> dict:
        """Write the delta artifact and every group's numbers (the state a later update
        starts from)."""
        certified = self.certify()

        def compute():
            storage, coll, parent = tasks.import_storage(), self.collection, self.parent
            layout = self._current_layout = self._layout(certified)
            groups, ranks = layout.groups, layout.ranks
            writer = storage.create_artifact(coll.url, coll.name, self.run_id, groups=groups, params=dict(self.params),
                                             overwrite=True, storage_options=coll.storage_options,
                                             base=parent.artifact, base_map=layout.parent_of.tolist())
            residual2, files = self._write_artifact(writer, groups, ranks, self.run_id)
            stored_errors = self._stored_errors(layout, residual2)
            self._lease.check()  # publish only while this process is still the run's writer
            artifact = writer.finish_direct(stored_errors.tolist(), files)
            arrays = self._group_numbers(layout, certified, stored_errors)
            lineage = {**parent.lineage, "depth": int(parent.lineage["depth"]) + 1, "parent_run": parent.run_id}
            meta = {"artifact": self.run_id, "bytes_compressed": int(artifact.nbytes_stored), "lineage": lineage,
                    "raw_regrouped": len(layout.dropped)}
            return arrays, meta

        stage = self._timed("compress", compute)
        if not self.keep_intermediate:
            self.prune()
        return stage

    def _took(self, layout: "_Layout") -> np.ndarray:
        """Which groups are parent groups that took new blocks (under their stored basis)."""
        return np.array([h >= 0 and len(g) > len(self.parent.groups[h]) for g, h in
                         zip(layout.groups, layout.parent_of.tolist())], dtype=bool)

    def _stored_errors(self, layout: "_Layout", residual2: dict[int, float]) -> np.ndarray:
        """Realised error of every group: untouched parent groups keep theirs; a parent
        group that took blocks adds their measured residuals to its stored residual; new
        groups as in a full run. A group above eps (impossible but for a broken invariant)
        is an error, never published."""
        parent, groups = self.parent, layout.groups
        kept = layout.parent_of >= 0
        h = layout.parent_of[kept]
        totals = group_norms2(self.collection.norms2, np.asarray(self.absorb()["shifts"]), groups)
        residual = residual_array(residual2, len(groups))
        parent_totals = group_norms2(self.collection.norms2, parent.shifts, parent.groups)
        residual[kept] += parent.stored_errors[h] ** 2 * parent_totals[h]
        errors = relative_errors(residual, totals)
        took = self._took(layout)
        errors[kept] = np.where(took[kept], errors[kept], parent.stored_errors[h])
        above = np.flatnonzero(took & (errors > self.params["eps"]))
        if above.size:
            g = int(above[0])
            raise RuntimeError(f"group {g} would be stored at error {errors[g]:.6g} > eps = {self.params['eps']} "
                               "after taking new blocks; nothing was published")
        return errors

    def _group_numbers(self, layout: "_Layout", certified: dict, stored_errors: np.ndarray) -> dict:
        """Every group's numbers, as the result and a later update read them: a parent
        group that took blocks reports its stored error (its exact rank-r error is at most
        that) and its stored rank; new groups their certified numbers."""
        parent, took = self.parent, self._took(layout)
        kept, new = layout.parent_of >= 0, layout.certified_of >= 0

        def combined(old, fresh, touched):
            out = np.empty(len(layout.groups), dtype=np.asarray(old).dtype)
            out[kept] = np.where(took[kept], np.asarray(touched)[kept], np.asarray(old)[layout.parent_of[kept]])
            out[new] = np.asarray(fresh)[layout.certified_of[new]]
            return out

        members, offsets = pack_groups(layout.groups)
        return {
            "members": members, "group_offsets": offsets,
            "errors": combined(parent.errors, certified["errors"], stored_errors),
            "bounds": combined(parent.bounds, certified["bounds"], stored_errors),
            "adaptive_ranks": combined(parent.adaptive_ranks, certified["adaptive_ranks"], layout.ranks),
            "stored_errors": stored_errors, "stored_ranks": layout.ranks,
            "shifts": np.asarray(self.absorb()["shifts"]), "took_blocks": took,
        }

    def stage_timings(self) -> dict[str, float]:
        return stage_timings(self.run, ("absorb",) + STAGES)

    def result(self) -> DistributedResult:
        """Run whatever is missing and assemble the result (``lineage`` says what changed)."""
        compressed = self.compress()
        meta, absorbed = compressed["meta"], self.run.stage_meta("absorb")
        result = DistributedResult.assemble(
            self.collection, unpack_groups(compressed["members"], compressed["group_offsets"]),
            errors=compressed["errors"], bounds=compressed["bounds"], adaptive_ranks=compressed["adaptive_ranks"],
            stored_errors=compressed["stored_errors"], stored_ranks=compressed["stored_ranks"],
            timings=self.stage_timings(), bytes_compressed=meta["bytes_compressed"], artifact_label=meta["artifact"],
            run_id=self.run_id, params=dict(self.params),
        )
        seconds = sum(result.timings.values())
        result.lineage = {**meta["lineage"], "blocks_added": absorbed["blocks_added"],
                          "absorbed": absorbed["absorbed"], "groups_touched": absorbed["groups_touched"],
                          "new_groups": len(result.groups) - len(self.parent.groups) + int(meta.get("raw_regrouped", 0)),
                          "raw_regrouped": int(meta.get("raw_regrouped", 0)),
                          "seconds": seconds, "seconds_saved": max(0.0, float(meta["lineage"]["root_seconds"]) - seconds),
                          "estimated_full_ratio": self._estimated_full_ratio(result, compressed)}
        return result

    def _estimated_full_ratio(self, result: DistributedResult, compressed: dict) -> float:
        """The fixed-rank compression ratio a full re-cluster would reach, estimated: the
        update's, with every *missed* new block (one whose strongest direction its best
        parent group holds at least 1 - eps^2 of, but that no group took: a full run,
        free to change that group's basis, would most likely have put it there) priced
        as a member of that group (r columns per column) instead of its share of its own
        group's numbers."""
        absorbed, coll, rank = self.absorb(), self.collection, int(self.params["rank"])
        n_parent, m = self.parent.n_blocks, coll.rows
        missed = np.flatnonzero((np.asarray(absorbed["assigned"]) < 0)
                                & (np.asarray(absorbed["best_share"]) >= 1.0 - self.params["eps"] ** 2))
        if not missed.size:
            return float(result.compression_ratio)
        groups, widths = result.groups, coll.widths
        labels = labels_of(groups, coll.n_blocks)
        columns = np.bincount(labels, weights=widths, minlength=len(groups))
        params = group_params(coll, groups, rank).astype(np.float64)
        blocks = missed + n_parent
        spent = params[labels[blocks]] * widths[blocks] / columns[labels[blocks]]
        saved = float(np.sum(np.maximum(spent - rank * widths[blocks], 0.0)))
        return float(m * widths.sum() / max(params.sum() - saved, 1.0))


def needs_full_run(result: DistributedResult) -> str | None:
    """Why an update's result should be replaced by a full re-cluster, or None."""
    lineage = getattr(result, "lineage", None) or {}
    if not lineage.get("parent_run"):
        return None
    if int(lineage.get("depth", 0)) > MAX_DEPTH:
        return f"{lineage['depth']} updates in a row since the full run {lineage['root_run']!r} (at most {MAX_DEPTH})"
    estimate = float(lineage["estimated_full_ratio"])
    if result.compression_ratio < DRIFT_FLOOR * estimate:
        return (f"compression ratio {result.compression_ratio:.4g} is below {DRIFT_FLOOR} x {estimate:.4g}, the ratio "
                "a full re-cluster is estimated to reach (new blocks that fit existing groups could not join them "
                "under their stored bases)")
    return None

