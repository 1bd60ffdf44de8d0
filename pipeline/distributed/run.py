"""The ``ClusteringRun`` driver: one method per stage over the checkpointed run folder,
tasks on a Dask cluster, small bookkeeping on the client (see the package docstring)."""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np

from .._threads import single_threaded_blas
from ..bounds import DEFAULT_TOL
from ..magnitude import band_pure, group_shifts
from ..params import CHECKPOINT_VERSION, DEFAULT_BATCH_BYTES, ClusteringParams
from ..sharding import group_anchor_keys, merge_buckets, pack_shards
from . import tasks
from .checkpoints import GroupSketches, group_stage_arrays, group_stage_of
from .finish import GRAM_BYTES, CertifyAndCompress  # noqa: F401  (re-exported)
from .plan import batch_bounds, labels_of, unpack_groups
from .result import DistributedResult

STAGES = ("scan", "partition", "local", "merge", "certify", "compress")
BATCH_BYTES = DEFAULT_BATCH_BYTES  # data per map task
SAMPLE_BYTES = 64 * 2**20  # factors of the partition sample
SAMPLE_BLOCKS = 2000  # most blocks per partition sample (the first, and up to two of orphans): bounds the anchors
ORPHAN_SHARE = 0.5  # a block whose best anchor holds less of its strongest direction is an orphan
ORPHAN_ROUNDS = 2  # extra samples drawn from the orphans, at most
ORPHAN_MIN_FRACTION = 0.01  # fewer orphans than this share of K go with their best anchor as they are
ORPHAN_PROBE = 250  # held-out orphans of the probe that tells missed subspaces from structureless data
MAX_MERGE_ROUNDS = 12
MERGE_BUCKET = 64  # most groups compared pairwise in one merge bucket
MERGE_TASK_GROUPS = 128  # groups per merge task: enough tasks to keep 16 workers busy at ~2,000 groups

Progress = Callable[[str, int, int], None]


class ClusteringRun(CertifyAndCompress):
    """Stage-by-stage scalable clustering of a stored collection (see the package doc).

    Parameters
    ----------
    collection : storage.Collection
        From ``storage.open_collection``.
    rank, eps, method, order, oversampling, patience, tol
        As for :func:`pipeline.cluster`; ``method`` and ``order`` drive the local greedy.
    client : distributed.Client, optional
        Where the map stages run. May be None when every stage asked for is already
        complete (e.g. to read the result of a finished run).
    run_id : str, optional
        Run folder name; a new unique id when None. Re-using an id resumes the run and
        is refused if the parameters or the collection changed.
    shard_size : int
        Most blocks per shard (the local greedy costs about shard_size^2 per shard).
    merge_neighbours : int
        Candidate partners per group inside a merge bucket.
    batch_bytes : int
        Data read per map task; bounds worker memory in scan, certify and compress.
    keep_intermediate : bool
        Keep the per-batch factor checkpoints after the artifact is written (see
        :meth:`prune`).
    progress : callable(stage, done, total), optional
        Called as map tasks finish.
    lease_wait_s : float
        How long a stage waits for another process writing the same run (a nightly
        deployment and a dashboard run with the same parameters derive the same run id)
        before failing with ``storage.RunLeaseError`` naming the holder.

    Every stage method returns quickly, loading its checkpoint, when the stage is complete.
    A stage is computed only under the run's writer lease (``storage.run_lease``), and
    checked again once the lease is held: two processes on one run id never write at the
    same time, and each stage is computed once.
    """

    def __init__(
        self,
        collection,
        *,
        rank: int,
        eps: float,
        method: str = "approximate",
        order: str = "residual",
        oversampling: int = 5,
        patience: int = 10,
        tol: float = DEFAULT_TOL,
        client=None,
        run_id: str | None = None,
        shard_size: int = 1000,
        merge_neighbours: int = 8,
        batch_bytes: int = BATCH_BYTES,
        keep_intermediate: bool = False,
        progress: Progress | None = None,
        lease_wait_s: float = 600.0,
        lineage: dict | None = None,
    ):
        spec = ClusteringParams(rank=rank, eps=eps, method=method, order=order, oversampling=oversampling,
                                patience=patience, tol=tol, shard_size=shard_size, merge_neighbours=merge_neighbours,
                                batch_bytes=batch_bytes)
        self.params = spec.greedy_kwargs()
        shard_size, merge_neighbours, batch_bytes = spec.shard_size, spec.merge_neighbours, spec.batch_bytes
        self.collection = collection
        self._client = client
        self.shard_size = shard_size
        self.merge_neighbours = merge_neighbours
        self.progress = progress
        self.keep_intermediate = bool(keep_intermediate)
        self.lease_wait_s = float(lease_wait_s)
        self._lease = None  # the writer lease while a stage is being computed
        self._anchors = None  # the sample greedy's future, once the scan has started it
        self._groups_cache: tuple[str, tuple] | None = None  # the group stage loaded last (_groups_after)
        self._certify_calls = 0  # certify's calls so far (each writes its ranges' basis stages)
        self.run_id = run_id or time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        # everything that can change the groups is part of the run's fingerprint
        run_params = {**spec.as_dict(), "checkpoint_version": CHECKPOINT_VERSION, **(lineage or {})}
        self._handle = tasks.Handle(
            collection.url, collection.name, self.run_id, json.dumps(run_params, sort_keys=True),
            collection.fingerprint(), json.dumps(collection.storage_options, sort_keys=True),
        )
        self.run = tasks.import_storage().open_run(
            collection.url, collection.name, self.run_id, run_params, self._handle.fingerprint,
            storage_options=collection.storage_options,
        )
        itemsize = np.dtype(collection.dtype).itemsize
        self._batch_bytes = batch_bytes
        self._batch_bounds = batch_bounds(collection.offsets, collection.chunks[1], collection.rows * itemsize, batch_bytes)

    # -- helpers -----------------------------------------------------------------------

    @property
    def client(self):
        """The Dask client; only stages that still have to be computed need one."""
        if self._client is None:
            raise ValueError("this stage has to run on a Dask cluster: pass client=distributed.Client(...)")
        return self._client

    @property
    def width_cap(self) -> int:
        return self.params["rank"] + self.params["oversampling"]

    @property
    def n_batches(self) -> int:
        return len(self._batch_bounds) - 1

    def _submit(self, stage: str, index, func, *args, priority: int = 0):
        """Submit one task under a key naming the stage (the dashboard's task prefix), the
        store, collection and run (:attr:`tasks.Handle.digest`) and the index."""
        key = f"cmsvd-{stage}-{self._handle.digest}-{index}-{uuid.uuid4().hex[:8]}"
        return self.client.submit(func, *args, key=key, pure=False, priority=priority)

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def _finishing(self, stage: str, futures: list) -> Iterator:
        """The futures as they finish, progress reported for each."""
        from distributed import as_completed

        self._report(stage, 0, len(futures))
        for done, future in enumerate(as_completed(futures), 1):
            self._report(stage, done, len(futures))
            yield future

    def _track(self, stage: str, futures: list) -> None:
        """Wait for futures, reporting progress as they finish; results stay on the workers."""
        for _ in self._finishing(stage, futures):
            pass

    def _gather(self, stage: str, futures: list) -> list:
        """Results of futures in submission order (only for small results)."""
        self._track(stage, futures)
        return self.client.gather(futures)

    def _timed(self, stage: str, compute: Callable[[], tuple[dict, dict]]) -> dict:
        """Load a complete stage, or compute it and checkpoint it with its duration.

        The client's own numerics run with one BLAS thread: they are small, and the
        workers keep the cores busy meanwhile."""
        if not self.run.is_complete(stage):
            with self._writing():
                if not self.run.is_complete(stage):  # another writer may have finished it meanwhile
                    start = time.perf_counter()
                    with single_threaded_blas():
                        arrays, meta = compute()
                    meta["seconds"] = time.perf_counter() - start
                    self.run.save_stage(stage, arrays, meta)
                    self._report(stage, 1, 1)
                    return {**arrays, "meta": meta}
        arrays, meta = self.run.load_stage(stage)
        return {**arrays, "meta": meta}

    @contextlib.contextmanager
    def _writing(self):
        """Hold the run's writer lease (re-entrant within this object)."""
        if self._lease is not None:
            yield self._lease
            return
        with self.run.lease(wait_s=self.lease_wait_s) as lease:
            self._lease = lease
            try:
                yield lease
            finally:
                self._lease = None

    @property
    def _token(self) -> str | None:
        """The lease token worker tasks commit under (see ``storage.Run.require_lease``)."""
        return None if self._lease is None else self._lease.token

    def _batches_of(self, labels: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """(first, stop, labels of its blocks) for every batch holding a labelled block."""
        out = []
        for first, stop in zip(self._batch_bounds[:-1], self._batch_bounds[1:]):
            part = labels[first:stop]
            if np.any(part >= 0):
                out.append((int(first), int(stop), part))
        return out

    # -- scan and partition ----------------------------------------------------------------

    def scan(self) -> dict:
        """Per block: exact squared norm and a factor of at most r + p columns."""

        def compute():
            bounds = self._batch_bounds
            picks = self._sample_picks() if self._wants_sample() else []
            raw = bool(picks) and self._sample_reads_blocks()
            if raw:  # submitted before the scan: one worker starts the sample greedy at once
                self._anchors = self._sample_anchors(picks, "0", raw=True)
            first = {b for b, _ in picks}  # scanned first, so that the sample starts early
            futures: list = [None] * self.n_batches
            # submitted first too: workers take tasks as they arrive, before later priorities are seen
            for b in sorted(range(self.n_batches), key=lambda b: b not in first):
                futures[b] = self._submit("scan", b, tasks.scan_batch, self._handle, self._token, b, int(bounds[b]),
                                          int(bounds[b + 1]), self.width_cap, self.params["eps"],
                                          priority=int(b in first))
            if not raw:
                self._start_sample(picks, futures)
            try:
                results = sorted(self._gather("scan", futures), key=lambda r: r[0])
            except BaseException:
                self._anchors = None  # it waits on the failed scan
                raise
            shifts = np.concatenate([s for _, s in results]).astype(np.int64)
            meta = {"batches": self.n_batches, "magnitude_bands": int(np.unique(shifts).size)}
            return {"shifts": shifts}, meta

        return self._timed("scan", compute)

    def _sample_picks(self) -> list[tuple[int, np.ndarray]]:
        """A strided sample of at most SAMPLE_BLOCKS blocks from evenly spaced batches, capped
        so that its factors take at most SAMPLE_BYTES. A factor has at most min(width, r + p,
        m) columns: known before the scan, so the sample can start while it runs."""
        blocks_per_batch = max(1, self.collection.n_blocks // max(self.n_batches, 1))
        sample_size = self._sample_size()
        wanted = max(1, min(self.n_batches, math.ceil(sample_size / blocks_per_batch)))
        chosen = np.unique(np.linspace(0, self.n_batches - 1, wanted).round().astype(int))
        stride = max(1, (len(chosen) * blocks_per_batch) // sample_size)
        sizes = np.diff(self._batch_bounds)
        return [(int(b), np.arange(0, int(sizes[b]), stride)) for b in chosen]

    def _sample_size(self) -> int:
        """Blocks in a sample: at most SAMPLE_BLOCKS, and at most SAMPLE_BYTES of factors."""
        coll = self.collection
        factor_widths = np.minimum(coll.widths, min(self.width_cap, coll.rows))
        factor_bytes = 8 * coll.rows * max(1.0, float(np.mean(factor_widths)) if len(factor_widths) else 1.0)
        return max(2, min(SAMPLE_BLOCKS, int(SAMPLE_BYTES // factor_bytes)))

    def _sample_reads_blocks(self) -> bool:
        """Whether the sample can be read from the stored blocks rather than the scan's
        factors (:func:`tasks.sample_part_raw`): when no block is wider than its factor
        (narrow blocks, single columns), where the scan is short and the sample greedy
        would otherwise run after it, alone on one worker."""
        coll = self.collection
        return bool(coll.n_blocks) and int(coll.widths.max()) <= min(self.width_cap, coll.rows)

    def _wants_sample(self) -> bool:
        """Whether the partition still has to run its sample greedy."""
        return self.collection.n_blocks > self.shard_size and not self.run.is_complete("partition")

    def _start_sample(self, picks: list[tuple[int, np.ndarray]], scans: list) -> None:
        """Submit the partition's sample greedy to run as soon as the batches it reads are
        scanned (they are scanned first), alongside the rest of the scan: it overlaps the
        scan instead of leaving all workers but one idle after it. :meth:`partition` picks
        the future up."""
        if picks:
            self._anchors = self._sample_anchors(picks, "0", scans)

    def _sample_anchors(self, picks: list[tuple[int, np.ndarray]], tag: str, scans: list | None = None,
                        raw: bool = False):
        """A future of the anchors from the greedy on the sampled blocks ``picks`` ((batch,
        positions) pairs): one task per batch reads and reduces its share
        (:func:`tasks.sample_part`, after the batch's scan future when ``scans`` is given),
        one task runs the greedy on them all; when ``raw``, one task reads the stored
        blocks and runs the greedy (:func:`tasks.sample_anchors_raw`)."""
        params = dict(self.params)
        if raw:
            return self._submit("anchors", tag, tasks.sample_anchors_raw, self._handle, params,
                                [(int(self._batch_bounds[b]), picked) for b, picked in picks], priority=2)
        parts = [self._submit("sample", f"{tag}-{b}", tasks.sample_part, self._handle, params, b,
                              int(self._batch_bounds[b]), picked, *([scans[b]] if scans is not None else []),
                              priority=2)
                 for b, picked in picks]
        return self._submit("anchors", tag, tasks.sample_anchors, params, *parts, priority=2)

    def _shifts(self) -> np.ndarray:
        """Every block's magnitude shift (:mod:`pipeline.magnitude`), from the scan."""
        return np.asarray(self.scan()["shifts"])

    def _group_shifts(self, groups: list[list[int]]) -> np.ndarray:
        """Each group's common shift: the largest of its blocks' (one value in practice:
        shards and merge buckets never mix shifts)."""
        return group_shifts(self._shifts(), groups)

    def partition(self) -> dict:
        """Route blocks to anchor subspaces (their best two) and pack them into shards."""
        self.scan()

        def compute():
            n_blocks = self.collection.n_blocks
            if n_blocks <= self.shard_size:
                arrays = {"shards": band_pure(np.zeros(n_blocks, dtype=np.int64), self._shifts()),
                          "block_anchors": np.zeros((n_blocks, 2), dtype=np.int64)}
                return arrays, {"n_shards": int(arrays["shards"].max(initial=0)) + 1, "anchors": 0}
            # the sample's greedy runs on a worker: the client stays free of dense numerics
            # a computed future, not scattered data: a restarted worker recomputes it
            anchors, self._anchors = self._anchors, None  # started by the scan, if this process ran it
            if anchors is None:
                anchors = self._sample_anchors(self._sample_picks(), "0")
            best_two, shares, anchor_offsets = self._route(None, anchors, "all")
            n_anchors, columns, orphans = len(anchor_offsets) - 1, int(anchor_offsets[-1]), []
            for round_ in range(ORPHAN_ROUNDS):
                found = np.flatnonzero(shares[:, 0] < ORPHAN_SHARE)
                orphans.append(int(found.size))
                if found.size < max(2, ORPHAN_MIN_FRACTION * n_blocks):
                    break
                # once the first probe found missed subspaces, the data has subspaces to find:
                # later rounds adopt without a probe (one anchors task less on the critical path)
                if round_ == 0 and not self._orphans_are_missed(found, str(n_anchors)):
                    break
                added, added_columns = self._adopt_orphans(found, best_two, shares, n_anchors)
                n_anchors, columns = n_anchors + added, columns + added_columns
            # inside an anchor, by second anchor and the share there: near-copies stay together
            shards = band_pure(pack_shards(best_two[:, 0], self.shard_size, within=(best_two[:, 1], -shares[:, 1])),
                               self._shifts())
            meta = {"n_shards": int(shards.max()) + 1, "anchors": n_anchors, "anchor_columns": columns,
                    "orphans": orphans}
            return {"shards": shards, "block_anchors": best_two}, meta

        return self._timed("partition", compute)

    def _picks_of(self, ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Sorted block ids as (batch, positions in the batch), the form tasks read."""
        batch_of = np.searchsorted(self._batch_bounds, ids, side="right") - 1
        return [(int(b), ids[batch_of == b] - self._batch_bounds[b]) for b in np.unique(batch_of)]

    def _anchors_of(self, ids: np.ndarray, tag: str):
        """A future of the anchors from the greedy on the blocks ``ids`` (sorted)."""
        return self._sample_anchors(self._picks_of(ids), tag)

    def _route(self, ids: np.ndarray | None, anchors, tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best two anchors of the blocks ``ids`` (sorted; None: every block) and their
        shares, on the workers; and the anchors' column offsets (the bases themselves stay
        on the workers and in the run store)."""
        picks = [(b, None) for b in range(self.n_batches)] if ids is None else self._picks_of(ids)
        # waited for here, so the route tasks depend on no future: a task that does is placed
        # on the worker holding it, and all of them would queue there
        saved = self._submit("anchors-save", tag, tasks.save_anchors, self._handle, self._token, tag, anchors,
                             priority=2).result()
        futures = [self._submit("route", f"{tag}-{b}", tasks.route_batch, self._handle, b, saved, picked)
                   for b, picked in picks]
        routed = self._gather("partition", futures)
        return np.concatenate([r[0] for r in routed]), np.concatenate([r[1] for r in routed]), saved[1]

    def _orphans_are_missed(self, orphans: np.ndarray, tag: str) -> bool:
        """Whether anchors from some orphans hold most of other orphans (a held-out probe of
        about 4 x ORPHAN_PROBE blocks for anchors and ORPHAN_PROBE to route): true when the
        sample missed subspaces, false for data with no subspace structure for anchors to
        hold (single columns of weights). A probe of P blocks finds a held-out block's
        subspace with probability about 1 - exp(-P / missed subspaces)."""
        probe = orphans[:: max(1, orphans.size // (5 * ORPHAN_PROBE))]
        held = np.arange(probe.size) % 5 == 4
        trial, held_out = probe[~held], probe[held]
        if held_out.size == 0:
            return False
        shares = self._route(held_out, self._anchors_of(trial, f"probe-{tag}"), f"probe-{tag}")[1]
        return bool(np.mean(shares[:, 0] >= ORPHAN_SHARE) >= 0.5)

    def _adopt_orphans(self, orphans: np.ndarray, best_two: np.ndarray, shares: np.ndarray,
                       n_anchors: int) -> tuple[int, int]:
        """Anchors from a sample of the orphans (blocks no anchor represents: a sample of
        K_s blocks misses subspaces with fewer than about K / K_s blocks), and the orphans
        routed again over the old and new anchors; ``best_two`` and ``shares`` are updated
        in place. Returns the number of anchors and anchor columns added."""
        tag = f"orphans-{n_anchors}"
        extra = self._anchors_of(orphans[:: max(1, -(-orphans.size // self._sample_size()))], tag)
        new_ids, new_shares, offsets = self._route(orphans, extra, tag)
        ids = np.hstack([best_two[orphans], new_ids + n_anchors])
        candidates = np.hstack([shares[orphans], new_shares]).astype(np.float64)
        candidates[:, 1][ids[:, 1] == ids[:, 0]] = -1.0  # a single anchor names itself twice
        candidates[:, 3][ids[:, 3] == ids[:, 2]] = -1.0
        top = np.argsort(-candidates, axis=1, kind="stable")[:, :2]  # ties: the older anchor
        best_two[orphans] = np.take_along_axis(ids, top, axis=1)
        shares[orphans] = np.take_along_axis(candidates, top, axis=1)
        return len(offsets) - 1, int(offsets[-1])

    # -- local and merge -------------------------------------------------------------------

    def _save_groups(self, groups: list[list[int]], sketches: GroupSketches) -> dict:
        return group_stage_arrays(groups, sketches)

    def _load_groups(self, arrays: dict) -> tuple[list[list[int]], GroupSketches]:
        return group_stage_of(arrays)

    def _groups_after(self, index: int) -> tuple[list[list[int]], GroupSketches, dict, str]:
        """Groups, sketches and meta after merge round ``index`` (-1: the local stage), and
        the stage that stores them (a round that merged nothing refers to an earlier one).
        The last one loaded stays in memory: the next round starts from it."""
        name = "local" if index < 0 else f"merge-{index:03d}"
        if self._groups_cache is not None and self._groups_cache[0] == name:
            return self._groups_cache[1]
        stage = self.local() if index < 0 else self._merge_stage(index)
        source = stage["meta"].get("same_as", name)
        groups, sketches = self._load_groups(stage if source == name else self.run.load_stage(source)[0])
        self._groups_cache = (name, (groups, sketches, stage["meta"], source))
        return self._groups_cache[1]

    def local(self) -> dict:
        """The sequential greedy inside every shard, in parallel."""
        shards = self.partition()["shards"]

        def compute():
            n_shards = int(shards.max()) + 1
            bounds = self._batch_bounds
            splits = [self._submit("split", b, tasks.split_batch, self._handle, self._token, b, int(bounds[b]),
                                   shards[bounds[b] : bounds[b + 1]])
                      for b in range(self.n_batches)]
            present = self._gather("split", splits)
            batches_of = [[b for b, shards_in in enumerate(present) if shard in shards_in] for shard in range(n_shards)]
            futures = [self._submit("local", shard, tasks.local_shard, self._handle, self._token, dict(self.params),
                                    shard, batches_of[shard])
                       for shard in range(n_shards)]
            results, refilled = self._refill(futures)
            groups = [g for r in results for g in r["groups"]]
            sketches = GroupSketches.of([(r["stage"], i, total, bound) for r in results
                                         for i, (total, bound) in enumerate(zip(r["totals"], r["bounds"]))])
            return self._save_groups(groups, sketches), {"n_groups": len(groups), "n_shards": n_shards,
                                                         "refilled": refilled}

        return self._timed("local", compute)

    def _refill(self, futures: list) -> tuple[list[dict], list[int]]:
        """The local tasks' results (``futures``, in shard order), refilled.

        Each shard's end cuts its last group short. The last groups of consecutive shards
        of one band (neighbours in anchor order) are pooled, at most ``shard_size`` blocks
        a pool, and the greedy runs on each pool on the workers (:func:`tasks.refill_shard`),
        submitted as soon as the pool's shards are in: pools run beside the last shards.
        A pool's groups replace its shards' last groups where they are fewer; otherwise the
        last groups stay. Returns the results with the replaced last groups dropped and the
        pools' groups appended, and per pool the groups it saved (0: kept as they were).
        Depends on the shards alone, never on the workers or on the order tasks finish."""
        shifts = self._shifts()
        position = {f.key: k for k, f in enumerate(futures)}
        results: list = [None] * len(futures)
        pools, refills, pool, size, band, ready = [], [], [], 0, None, 0

        def close(pool: list[int]) -> None:
            if len(pool) > 1:
                refills.append(self._submit("refill", len(pools), tasks.refill_shard, self._handle, self._token,
                                            dict(self.params), len(pools), [results[k]["stage"] for k in pool],
                                            priority=1))
                pools.append(pool)

        for future in self._finishing("local", futures):
            results[position[future.key]] = future.result()
            while ready < len(results) and results[ready] is not None:  # shards in order, as they come in
                tail = results[ready]["groups"][-1] if results[ready]["groups"] else None
                if tail is not None:
                    if pool and (int(shifts[tail[0]]) != band or size + len(tail) > self.shard_size):
                        close(pool)
                        pool, size = [], 0
                    band = int(shifts[tail[0]])
                    pool.append(ready)
                    size += len(tail)
                ready += 1
        close(pool)
        saved, replaced = [], set()
        out = [dict(r) for r in results]
        for pool, refill in zip(pools, self._gather("local", refills)):
            gain = len(pool) - len(refill["groups"])
            saved.append(max(gain, 0))
            if gain <= 0:
                continue
            replaced.update(pool)
            out.append(refill)
        for k in replaced:  # the shard's last group now lives in its pool's groups
            out[k] = {**out[k], **{key: out[k][key][:-1] for key in ("groups", "totals", "bounds")}}
        return out, saved

    def _bucket_keys(self, groups: list[list[int]], index: int) -> np.ndarray:
        """Merge keys of round ``index``: even rounds group by the anchor a group's blocks
        vote for most, odd rounds by its two best anchors as an unordered pair (two halves
        of one subspace that the sample split over two anchors meet there)."""
        block_anchors = self.partition()["block_anchors"]
        labels = labels_of(groups, self.collection.n_blocks)
        keys = group_anchor_keys(labels, block_anchors, np.asarray(self.collection.norms2), len(groups))
        if index % 2 == 0:
            keys = keys[:, 0]
        else:
            low, high = keys.min(axis=1), keys.max(axis=1)
            keys = low * (int(block_anchors.max(initial=0)) + 1) + high
        return band_pure(keys, self._group_shifts(groups))

    def merge_round(self, index: int) -> bool:
        """Merge round ``index`` (stage ``merge-<index>``); returns whether a later round
        may still merge (False after two rounds in a row, one of each key, merged nothing).

        Candidates come from disjoint buckets of at most MERGE_BUCKET groups (see
        :meth:`_bucket_keys`), merged on the workers; no pair of groups outside a bucket
        is ever compared, and the result does not depend on the number of workers.
        """
        groups, sketches, previous_meta, previous_stage = self._groups_after(index - 1)
        if index > 0 and previous_meta.get("idle_rounds", 0) >= 2:
            return False

        def compute():
            keys = self._bucket_keys(groups, index)
            buckets = merge_buckets(keys, sketches.totals, MERGE_BUCKET)
            futures, batch, size = [], [], 0
            for bucket in buckets + [None]:
                if bucket is None or (batch and size + len(bucket) > MERGE_TASK_GROUPS):
                    if batch:
                        out = f"sketches-merge-{index:03d}-{len(futures):05d}"  # where the task puts new sketches
                        futures.append(self._submit("merge", f"{index}-{len(futures)}", tasks.merge_bucket_batch,
                                                    self._handle, self._token, out,
                                                    [sketches.refs(b) for b in batch], self.merge_neighbours))
                    batch, size = [], 0
                if bucket is not None:
                    batch.append(bucket)
                    size += len(bucket)
            results = [r for part in self._gather("merge", futures) for r in part]
            new_groups, new_sketches, merges = _apply_merges(groups, sketches, buckets, results)
            idle = 0 if merges else (previous_meta.get("idle_rounds", 0) + 1 if index > 0 else 1)
            meta = {"merges": merges, "n_groups": len(new_groups), "buckets": len(buckets), "idle_rounds": idle}
            made.extend([new_groups, new_sketches])
            if not merges:  # the same groups: point at where they are stored instead of a copy
                return {}, {**meta, "same_as": previous_stage}
            return self._save_groups(new_groups, new_sketches), meta

        name, made = f"merge-{index:03d}", []
        stage = self._timed(name, compute)
        if made:  # computed here: the next round starts from these without reading them back
            self._groups_cache = (name, (*made, stage["meta"], stage["meta"].get("same_as", name)))
        return stage["meta"]["idle_rounds"] < 2

    def _merge_stage(self, index: int) -> dict:
        name = f"merge-{index:03d}"
        if not self.run.is_complete(name):
            self.merge_round(index)
        arrays, meta = self.run.load_stage(name)
        return {**arrays, "meta": meta}

    def merge(self, max_rounds: int = MAX_MERGE_ROUNDS) -> int:
        """Merge rounds until no later round can merge (or ``max_rounds``); returns rounds run."""
        for index in range(max_rounds):
            if not self.merge_round(index):
                return index + 1
        return max_rounds

    def _final_groups(self) -> tuple[list[list[int]], GroupSketches]:
        names = sorted(s for s in self.run.stages() if s.startswith("merge-") and self.run.is_complete(s))
        groups, sketches, _, _ = self._groups_after(int(names[-1].split("-")[1]) if names else -1)
        return groups, sketches

    def prune(self) -> int:
        """Delete the intermediate checkpoints (``scan-*``, ``split-*``, ``sketches-*``,
        ``anchors-*``) once certify is complete: no later stage reads them. The stage
        manifests stay, so a re-run still skips every stage. Returns the number of
        checkpoints removed."""
        if not self.run.is_complete("certify"):
            return 0
        pieces = [s for s in self.run.stages() if s.startswith(("scan-", "split-", "sketches-", "anchors-"))]
        if pieces:
            with self._writing():
                for stage in pieces:
                    self.run.delete_stage(stage)
        return len(pieces)

    def stage_timings(self) -> dict[str, float]:
        """Compute seconds of every completed stage (merge rounds summed under "merge")."""
        return stage_timings(self.run)

    def result(self) -> DistributedResult:
        """Run whatever is missing and assemble the result."""
        compressed = self.compress()
        certified = self.certify()
        return DistributedResult.assemble(
            self.collection, unpack_groups(certified["members"], certified["group_offsets"]),
            errors=certified["errors"], bounds=certified["bounds"], adaptive_ranks=certified["adaptive_ranks"],
            stored_errors=compressed["stored_errors"], stored_ranks=compressed["stored_ranks"],
            timings=self.stage_timings(), bytes_compressed=compressed["meta"]["bytes_compressed"],
            artifact_label=compressed["meta"]["artifact"], run_id=self.run_id, params=dict(self.params),
        )


def stage_timings(run, stages: tuple[str, ...] = STAGES) -> dict[str, float]:
    """Compute seconds of every completed stage of a run folder among ``stages``, in that
    order (merge rounds summed under "merge")."""
    timings: dict[str, float] = {}
    for stage in run.stages():
        name = "merge" if stage.startswith("merge-") else stage
        if name in stages:
            timings[name] = timings.get(name, 0.0) + float(run.stage_meta(stage).get("seconds", 0.0))
    return {k: timings[k] for k in stages if k in timings}


def _apply_merges(groups, sketches: GroupSketches, buckets, results) -> tuple[list[list[int]], GroupSketches, int]:
    """New groups after a round: each bucket's merged groups replace its members; groups
    are ordered by their smallest former index, so the order is stable across rounds."""
    replaced = np.zeros(len(groups), dtype=bool)
    entries: list[tuple[int, list[int], tuple]] = []
    merges = 0

    def kept(g: int) -> tuple:
        return sketches.stages[g], int(sketches.index[g]), float(sketches.totals[g]), float(sketches.bounds[g])

    for bucket, (local_groups, made) in zip(buckets, results):
        replaced[bucket] = True
        merges += len(bucket) - len(local_groups)
        for positions, sketch in zip(local_groups, made):
            members = [b for p in positions for b in groups[int(bucket[p])]]
            first = int(min(bucket[p] for p in positions))
            entries.append((first, members, kept(first) if sketch is None else tuple(sketch)))  # None: unchanged
    entries += [(int(g), groups[g], kept(int(g))) for g in np.flatnonzero(~replaced)]
    entries.sort(key=lambda e: e[0])
    return [e[1] for e in entries], GroupSketches.of([e[2] for e in entries]), merges


def cluster_collection(
    collection,
    *,
    rank: int,
    eps: float,
    method: str = "approximate",
    order: str = "residual",
    oversampling: int = 5,
    patience: int = 10,
    client=None,
    run_id: str | None = None,
    shard_size: int = 1000,
    batch_bytes: int = BATCH_BYTES,
    progress: Progress | None = None,
    parent_run_id: str | None = None,
) -> DistributedResult:
    """Cluster and compress a stored collection on a Dask cluster with certified errors.

    Parameters
    ----------
    collection : storage.Collection
        From ``storage.open_collection(url, name)``.
    rank, eps, method, order, oversampling, patience
        As for :func:`pipeline.cluster`.
    client : distributed.Client, optional
        When None, a LocalCluster of two single-threaded worker processes on 127.0.0.1 is
        started for the call and closed afterwards.
    run_id : str, optional
        Checkpoint folder; re-running with the same id skips completed stages.
    shard_size : int
        Most blocks per shard of the local stage.
    batch_bytes : int
        Data read per map task (scan, certify, compress).
    progress : callable(stage, done, total), optional
    parent_run_id : str, optional
        Update this finished run incrementally instead (:mod:`pipeline.distributed.update`):
        the collection must be the run's collection grown by appends, and the parameters
        must be the run's (``shard_size`` and ``batch_bytes`` are the run's too). When the
        update drifts (:func:`~pipeline.distributed.update.needs_full_run`) a full run
        replaces it, and ``result.lineage["full_reason"]`` says why.

    Returns
    -------
    DistributedResult
        After it returns, every group's exact error on the stored data is <= eps (single
        blocks that no rank-r form fits are stored as they are).
    """
    own_client = client is None
    if own_client:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0")
        client = Client(cluster)
    try:
        full = dict(rank=rank, eps=eps, method=method, order=order, oversampling=oversampling, patience=patience,
                    client=client, shard_size=shard_size, batch_bytes=batch_bytes, progress=progress)
        if parent_run_id is None:
            return ClusteringRun(collection, run_id=run_id, **full).result()
        return _update_or_full(collection, parent_run_id, run_id, full)
    finally:
        if own_client:
            client.close()
            cluster.close()


def _update_or_full(collection, parent_run_id: str, run_id: str | None, full: dict) -> DistributedResult:
    """An incremental update of ``parent_run_id``, or a full run when the update drifted."""
    from .update import UpdateRun, needs_full_run

    parent_params = tasks.import_storage().read_run_record(collection, parent_run_id)["params"]
    wanted = ClusteringParams(**{k: full[k] for k in ("rank", "eps", "method", "order", "oversampling", "patience")},
                              tol=parent_params["tol"]).greedy_kwargs()
    differ = sorted(k for k, v in wanted.items() if parent_params.get(k) != v)
    if differ:
        raise ValueError(f"run {parent_run_id!r} was made with other parameters ({', '.join(differ)}): "
                         "an update keeps its parent's parameters")
    update = UpdateRun(collection, parent_run_id=parent_run_id, client=full["client"], run_id=run_id,
                       progress=full["progress"])
    result = update.result()
    reason = needs_full_run(result)
    if reason is None:
        return result
    replacement = ClusteringRun(collection, **{**full, "shard_size": update.shard_size,
                                               "batch_bytes": update._batch_bytes}).result()
    replacement.lineage = {"full_reason": reason, "parent_run": parent_run_id, "replaced_update": update.run_id}
    return replacement
