"""Scalable map/merge clustering of a stored collection on a Dask cluster.

The paper's sequential greedy recomputes the residuals of every remaining block for every
group, so its cost grows roughly like K^2. This variant stays near-linear in K by working
in stages, each a plain method over stored state, checkpointed in the run folder
(``runs/<run_id>/<stage>``) so that a re-run skips what is complete:

1. **scan** (map over column batches of the Zarr data): per block its exact squared norm
   and a factor F_i with F_i F_i^T <= A_i A_i^T of at most r + p columns (the block itself
   when narrow, else its top singular directions). Each batch is written by its worker.
2. **partition**: the sequential greedy on a strided sample of about ``shard_size`` blocks
   gives anchor subspaces (each sample group's top-r sketch basis); every block is routed to
   the anchor holding the largest fraction of its energy (one matrix product per batch for
   all anchors), and anchors are packed into shards of at most ``shard_size`` blocks.
   Routing by subspace, rather than by position, puts blocks that can share a basis in the
   same shard, so the local greedy finds large groups and fewer merges are needed.
3. **local** (map over shards): the sequential greedy inside each shard on the factors with
   exact norms. Bounds on factors are certified for the real blocks.
4. **merge** (rounds, each its own stage): candidate pairs of groups by subspace affinity;
   two groups merge when their merged Gram sketch certifies error <= eps (no data read).
5. **certify** (map over batches): every group's exact Gram matrix from the stored data,
   its exact rank-r error and optimal basis; a group above eps (possible only through
   floating point) is split in two and certified again.
6. **compress** (map over batches): coefficients V_i = U_C^T A_i written as the storage
   artifact, with the realised error of every group.

The scan, certify and compress stages read the data in batches aligned to Zarr chunks;
memory per task is bounded by the batch size and by the Gram matrices of the groups of one
group range (both about 64 MiB).
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import numbers
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .bounds import DEFAULT_TOL, GramSketch
from .greedy import check_params, greedy_groups
from .layout import BlockLayout, column_index, offsets_of, segment_sums
from .sharding import (
    anchor_scores,
    block_factors,
    certify_gram,
    group_grams,
    group_sketch,
    merge_groups,
    pack_shards,
)

__all__ = ["cluster_collection", "ClusteringRun", "DistributedResult", "STAGES"]

STAGES = ("scan", "partition", "local", "merge", "certify", "compress")
BATCH_BYTES = 32 * 2**20  # data per map task
GRAM_BYTES = 64 * 2**20  # Gram matrices (or coefficients) per group-range task
MAX_MERGE_ROUNDS = 12
CERTIFY_LANES = 8  # parallel Gram accumulators in certify
SAMPLE_BYTES = 64 * 2**20  # factors of the partition sample held by the client

Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------
# Worker-side access to the store (plain functions so that tasks pickle by reference)


@dataclass(frozen=True)
class _Handle:
    """What a worker needs to reach the collection and the run: small and picklable."""

    url: str
    name: str
    run_id: str
    params_json: str
    fingerprint: str
    storage_options_json: str = "{}"

    @property
    def storage_options(self) -> dict:
        return json.loads(self.storage_options_json)


def _import_storage():
    """The project's ``storage`` package, also on Dask workers with spilling enabled.

    A worker puts its local directory first on ``sys.path``, and its spill folder there is
    named ``storage`` too: with an editable install that empty folder would be imported as
    a namespace package in place of ours. Import from the folder that holds ``pipeline``.
    """
    module = sys.modules.get("storage")
    if module is not None and getattr(module, "__file__", None):
        return module
    sys.modules.pop("storage", None)
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, home)
    try:
        return importlib.import_module("storage")
    finally:
        sys.path.remove(home)


@functools.lru_cache(maxsize=8)
def _collection(handle: _Handle):
    storage = _import_storage()
    return storage.open_collection(handle.url, handle.name, storage_options=handle.storage_options)


@functools.lru_cache(maxsize=8)
def _run(handle: _Handle):
    storage = _import_storage()
    return storage.open_run(
        handle.url,
        handle.name,
        handle.run_id,
        json.loads(handle.params_json),
        handle.fingerprint,
        storage_options=handle.storage_options,
    )


def _read_batch(handle: _Handle, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of blocks first..stop-1 and their offsets relative to the batch."""
    coll = _collection(handle)
    start, end = int(coll.offsets[first]), int(coll.offsets[stop])
    data = coll.column_range(start, end)
    return data, coll.offsets[first : stop + 1] - start


def _check_batch(data: np.ndarray, offsets: np.ndarray, first: int, stored_norms2: np.ndarray, names) -> np.ndarray:
    """Exact squared norms of a batch; NaN/Inf or a norm differing from the one stored at
    ingest (corrupted data) is an error naming the block."""
    norms2 = segment_sums(np.einsum("ij,ij->j", data, data, dtype=np.float64), offsets)
    for local in np.flatnonzero(~np.isfinite(norms2)):
        i = first + int(local)
        raise ValueError(f"block {i} ({names[i]!r}): contains NaN or Inf")
    mismatch = np.abs(norms2 - stored_norms2) > 1e-6 * np.maximum(stored_norms2, 1e-300)
    for local in np.flatnonzero(mismatch & (stored_norms2 > 0)):
        i = first + int(local)
        raise ValueError(
            f"block {i} ({names[i]!r}): squared norm {norms2[local]:.6g} differs from the {stored_norms2[local]:.6g}"
            " recorded at ingest; the stored data is corrupted"
        )
    return norms2


def _scan_batch(handle: _Handle, batch: int, first: int, stop: int, width_cap: int) -> tuple[int, np.ndarray]:
    stage = f"scan-{batch:05d}"
    run = _run(handle)
    if run.is_complete(stage):
        return batch, np.asarray(run.load_stage(stage)[0]["factor_offsets"])
    coll = _collection(handle)
    data, offsets = _read_batch(handle, first, stop)
    norms2 = _check_batch(data, offsets, first, coll.norms2[first:stop], coll.names)
    factors, factor_offsets = block_factors(data, offsets, width_cap)
    run.save_stage(stage, {"factors": factors, "factor_offsets": factor_offsets, "norms2": norms2})
    return batch, factor_offsets


def _load_factors(handle: _Handle, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays, _ = _run(handle).load_stage(f"scan-{batch:05d}")
    return arrays["factors"], arrays["factor_offsets"], arrays["norms2"]


def _route_batch(handle: _Handle, batch: int, anchors: np.ndarray, anchor_rank: int) -> np.ndarray:
    factors, offsets, norms2 = _load_factors(handle, batch)
    captured = anchor_scores(anchors, anchor_rank, factors, offsets)
    return np.argmax(captured, axis=0).astype(np.int64)  # ties: lowest anchor id


def _split_batch(handle: _Handle, batch: int, first: int, shards: np.ndarray) -> list[int]:
    """Cut a batch's factors by shard into the stage ``split-<batch>`` (arrays suffixed by
    shard), so each local task later reads only its own blocks; returns the shards present.

    Going through the store keeps worker memory bounded by one batch or one shard, however
    large the collection (an in-memory all-to-all would hold every factor at once)."""
    stage = f"split-{batch:05d}"
    run = _run(handle)
    present = [int(s) for s in np.unique(shards)]
    if run.is_complete(stage):
        return present
    factors, offsets, norms2 = _load_factors(handle, batch)
    arrays = {}
    for shard in present:
        local = np.flatnonzero(shards == shard)
        arrays[f"ids_{shard}"] = first + local
        arrays[f"factors_{shard}"] = factors[:, column_index(offsets, local)]
        arrays[f"offsets_{shard}"] = offsets_of(offsets[local + 1] - offsets[local])
        arrays[f"norms2_{shard}"] = norms2[local]
    run.save_stage(stage, arrays)
    return present


def _load_shard(handle: _Handle, shard: int, batches: list[int]) -> tuple[np.ndarray, BlockLayout]:
    """A shard's factors (with exact norms) gathered from the split stages of its batches."""
    run = _run(handle)
    names = ("ids", "factors", "offsets", "norms2")
    parts = [run.load_stage(f"split-{b:05d}", [f"{n}_{shard}" for n in names])[0] for b in batches]
    ids = np.concatenate([p[f"ids_{shard}"] for p in parts])
    widths = np.concatenate([np.diff(p[f"offsets_{shard}"]) for p in parts])
    layout = BlockLayout(
        np.hstack([p[f"factors_{shard}"] for p in parts]),
        offsets_of(widths),
        np.concatenate([p[f"norms2_{shard}"] for p in parts]),
    )
    return ids, layout


def _local_shard(handle: _Handle, params: dict, shard: int, batches: list[int]) -> dict:
    """The sequential greedy inside one shard; groups in global block ids plus sketches."""
    ids, layout = _load_shard(handle, shard, batches)
    clusters, bounds, states = greedy_groups(layout, **params)
    sketches = [
        state if isinstance(state, GramSketch)
        else group_sketch(layout, group, params["rank"], params["oversampling"], params["tol"])
        for group, state in zip(clusters, states)
    ]
    return {"groups": [ids[g].tolist() for g in clusters], "sketches": sketches}


def _gram_lane(handle: _Handle, batches: list[tuple[int, int, np.ndarray]]) -> dict[int, np.ndarray]:
    """Gram matrices of the groups (labels >= 0) over a lane of batches read one after the
    other, so a task holds one batch and one set of Grams, never one per batch."""
    total: dict[int, np.ndarray] = {}
    for first, stop, labels in batches:
        data, offsets = _read_batch(handle, first, stop)
        keep = np.flatnonzero(labels >= 0)
        if keep.size:
            x = data[:, column_index(offsets, keep)]
            part = group_grams(x, offsets_of(offsets[keep + 1] - offsets[keep]), labels[keep])
            total = _sum_grams(total, part)
    return total


def _sum_grams(*parts: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    total: dict[int, np.ndarray] = {}
    for part in parts:
        for label, gram in part.items():
            if label in total:
                total[label] = total[label] + gram
            else:
                total[label] = gram
    return total


def _certify_grams(grams: dict[int, np.ndarray], rank: int, eps: float) -> dict[int, tuple]:
    out = {}
    for label, gram in grams.items():
        cert = certify_gram(gram, rank, eps)
        out[label] = (cert.error, cert.adaptive_rank, cert.basis)
    return out


def _coefficient_batch(handle: _Handle, first: int, stop: int, labels: np.ndarray, bases: dict) -> dict:
    """Coefficients U_g^T A_i (or the raw block when the group is stored raw) and the
    squared residual ||A_i - U_g V_i||^2 of every block in the batch, keyed by group.
    One product per group present, over all its blocks in the batch."""
    data, offsets = _read_batch(handle, first, stop)
    out: dict[int, list] = {}
    for g in np.unique(labels[labels >= 0]):
        blocks = np.flatnonzero(labels == g)
        sub_offsets = offsets_of(offsets[blocks + 1] - offsets[blocks])
        x = data[:, column_index(offsets, blocks)]
        basis = bases[int(g)]
        if basis is None:
            coef, residual2 = x, np.zeros(len(blocks))
        else:
            x = x.astype(np.float64)
            coef = basis.T @ x
            residual = x - basis @ coef
            residual2 = segment_sums(np.einsum("ij,ij->j", residual, residual), sub_offsets)
        out[int(g)] = [
            (first + int(b), coef[:, sub_offsets[j] : sub_offsets[j + 1]], float(residual2[j]))
            for j, b in enumerate(blocks)
        ]
    return out


def _write_groups(artifact: tuple, groups: dict[int, list[int]], bases: dict, *parts: dict) -> dict[int, float]:
    """Write the groups of one range into the artifact; returns their residual energies."""
    storage = _import_storage()
    url, name, label, storage_options_json = artifact
    writer = storage.open_artifact_writer(url, name, label, storage_options=json.loads(storage_options_json))
    collected: dict[int, dict[int, tuple]] = {g: {} for g in groups}
    for part in parts:
        for g, entries in part.items():
            for block, coef, residual2 in entries:
                collected[g][block] = (coef, residual2)
    residuals = {}
    for g, members in groups.items():
        coefs = [collected[g][b][0] for b in members]
        writer.write_group(g, bases[g], coefs)
        residuals[g] = float(sum(collected[g][b][1] for b in members))
    return residuals


# ---------------------------------------------------------------------------------------
# The driver


@dataclass
class DistributedResult:
    """Outcome of :func:`cluster_collection`.

    Attributes
    ----------
    groups : list of list of int
        Block indices per group.
    errors : ndarray
        Certified exact relative rank-r error per group (from the stored data).
    bounds : ndarray
        Certified sketch bound each group was formed under (0 for groups split at certify).
    ranks : ndarray
        Adaptive rank r_C per group (0 for a group stored as it is).
    stored_errors : ndarray
        Realised relative error of what the artifact stores, per group.
    compression_ratio, compression_ratio_adaptive : float
        The paper's ratio at fixed rank r, and with per-group ranks (DESIGN section 4).
    max_error : float
        Largest realised error of the stored artifact.
    timings : dict
        Seconds per stage (merge rounds summed under "merge").
    bytes_input, bytes_compressed : int
        Bytes on disk of the collection and of the compressed artifact.
    """

    groups: list[list[int]]
    errors: np.ndarray
    bounds: np.ndarray
    ranks: np.ndarray
    stored_errors: np.ndarray
    compression_ratio: float
    compression_ratio_adaptive: float
    max_error: float
    timings: dict
    bytes_input: int
    bytes_compressed: int
    artifact_label: str
    run_id: str
    params: dict = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return len(self.groups)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _batches(offsets: np.ndarray, chunk_columns: int, bytes_per_column: int, batch_bytes: int) -> np.ndarray:
    """Block boundaries of map batches: about ``batch_bytes`` each, cut at the first block
    boundary after a multiple of the chunk width so that few chunks are read twice."""
    n_columns = int(offsets[-1])
    columns = max(1, batch_bytes // max(bytes_per_column, 1))
    per_batch = max(1, columns // chunk_columns * chunk_columns if columns >= chunk_columns else columns)
    targets = np.arange(per_batch, n_columns, per_batch)
    cuts = np.searchsorted(offsets, targets, side="left")
    return np.unique(np.concatenate([[0], cuts, [len(offsets) - 1]])).astype(np.int64)


def _pack_flat(groups: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    flat = np.array([b for g in groups for b in g], dtype=np.int64)
    return flat, offsets_of(np.array([len(g) for g in groups], dtype=np.int64))


def _unpack_flat(flat: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [flat[offsets[g] : offsets[g + 1]].tolist() for g in range(len(offsets) - 1)]


def _range_of_groups(sizes: np.ndarray, per_group_bytes: np.ndarray) -> np.ndarray:
    """Consecutive group ranges of about GRAM_BYTES each: range index per group."""
    ranges = np.empty(len(sizes), dtype=np.int64)
    current, filled = 0, 0
    for g, nbytes in enumerate(per_group_bytes):
        if filled and filled + nbytes > GRAM_BYTES:
            current, filled = current + 1, 0
        ranges[g] = current
        filled += int(nbytes)
    return ranges


class ClusteringRun:
    """Stage-by-stage scalable clustering of a stored collection (see the module doc).

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
        Candidate partners per group in a merge round.
    batch_bytes : int
        Data read per map task; bounds worker memory in scan, certify and compress.
    keep_intermediate : bool
        Keep the per-batch factor checkpoints after the artifact is written (see
        :meth:`prune`).
    progress : callable(stage, done, total), optional
        Called as map tasks finish.

    Every stage method returns quickly, loading its checkpoint, when the stage is complete.
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
        shard_size: int = 4000,
        merge_neighbours: int = 8,
        batch_bytes: int = BATCH_BYTES,
        keep_intermediate: bool = False,
        progress: Progress | None = None,
    ):
        import storage

        self.params = check_params(rank, eps, method, order, patience, oversampling, tol)
        shard_size = _check_int("shard_size", shard_size, 2)
        merge_neighbours = _check_int("merge_neighbours", merge_neighbours, 1)
        batch_bytes = _check_int("batch_bytes", batch_bytes, 1)
        self.collection = collection
        self._client = client
        self.shard_size = shard_size
        self.merge_neighbours = merge_neighbours
        self.progress = progress
        self.keep_intermediate = bool(keep_intermediate)
        self.run_id = run_id or time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        # everything that can change the groups is part of the run's fingerprint
        run_params = dict(self.params, shard_size=shard_size, merge_neighbours=merge_neighbours, batch_bytes=batch_bytes)
        self._handle = _Handle(
            collection.url,
            collection.name,
            self.run_id,
            json.dumps(run_params, sort_keys=True),
            collection.fingerprint(),
            json.dumps(collection.storage_options, sort_keys=True),
        )
        self.run = storage.open_run(
            collection.url,
            collection.name,
            self.run_id,
            run_params,
            self._handle.fingerprint,
            storage_options=collection.storage_options,
        )
        itemsize = np.dtype(collection.dtype).itemsize
        self._batch_bounds = _batches(collection.offsets, collection.chunks[1], collection.rows * itemsize, batch_bytes)

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

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def _track(self, stage: str, futures: list) -> None:
        """Wait for futures, reporting progress as they finish; results stay on the workers."""
        from distributed import as_completed

        done = 0
        self._report(stage, 0, len(futures))
        for _ in as_completed(futures):
            done += 1
            self._report(stage, done, len(futures))

    def _gather(self, stage: str, futures: list) -> list:
        """Results of futures in submission order (only for small results)."""
        self._track(stage, futures)
        return self.client.gather(futures)

    def _timed(self, stage: str, compute: Callable[[], dict]) -> dict:
        """Load a complete stage, or compute it and checkpoint it with its duration."""
        if self.run.is_complete(stage):
            arrays, meta = self.run.load_stage(stage)
            return {**arrays, "meta": meta}
        start = time.perf_counter()
        arrays, meta = compute()
        meta["seconds"] = time.perf_counter() - start
        self.run.save_stage(stage, arrays, meta)
        self._report(stage, 1, 1)
        return {**arrays, "meta": meta}

    def _batch_labels(self, labels: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """(first, stop, labels of its blocks) for every batch holding a labelled block."""
        out = []
        for first, stop in zip(self._batch_bounds[:-1], self._batch_bounds[1:]):
            part = labels[first:stop]
            if np.any(part >= 0):
                out.append((int(first), int(stop), part))
        return out

    # -- stages --------------------------------------------------------------------------

    def scan(self) -> dict:
        """Per block: exact squared norm and a factor of at most r + p columns."""

        def compute():
            bounds = self._batch_bounds
            futures = [
                self.client.submit(
                    _scan_batch, self._handle, b, int(bounds[b]), int(bounds[b + 1]), self.width_cap,
                    key=f"cmsvd-scan-{self.run_id}-{b}", pure=False,
                )
                for b in range(len(bounds) - 1)
            ]
            results = sorted(self._gather("scan", futures))
            factor_widths = np.concatenate([np.diff(offs) for _, offs in results])
            return {"batch_bounds": bounds, "factor_widths": factor_widths}, {"batches": len(bounds) - 1}

        return self._timed("scan", compute)

    def _sample_anchors(self) -> tuple[np.ndarray, int]:
        """Anchor bases from the sequential greedy on a strided sample of about shard_size
        blocks (evenly spaced batches, then every j-th block in them), capped so that the
        sample's factors fit in SAMPLE_BYTES."""
        n_batches = len(self._batch_bounds) - 1
        blocks_per_batch = max(1, self.collection.n_blocks // max(n_batches, 1))
        # at most shard_size blocks, and at most SAMPLE_BYTES of factors in the client
        factor_bytes = 8 * self.collection.rows * max(1.0, float(np.mean(self.scan()["factor_widths"])))
        sample_size = max(2, min(self.shard_size, int(SAMPLE_BYTES // factor_bytes)))
        wanted = max(1, min(n_batches, math.ceil(sample_size / blocks_per_batch)))
        chosen = np.unique(np.linspace(0, n_batches - 1, wanted).round().astype(int))
        data, widths, norms2 = [], [], []
        stride = max(1, (len(chosen) * blocks_per_batch) // sample_size)
        for b in chosen:
            factors, offsets, batch_norms2 = _load_factors(self._handle, int(b))
            picked = np.arange(0, len(batch_norms2), stride)
            data.append(factors[:, column_index(offsets, picked)])
            widths.append(np.diff(offsets)[picked])
            norms2.append(batch_norms2[picked])
        widths = np.concatenate(widths)
        layout = BlockLayout(np.hstack(data), offsets_of(widths), np.concatenate(norms2))
        params = dict(self.params, method="approximate", order="residual")
        clusters, _, states = greedy_groups(layout, **params)
        rank = self.params["rank"]
        heads = []
        for group, state in zip(clusters, states):
            sketch = state if isinstance(state, GramSketch) else group_sketch(
                layout, group, rank, self.params["oversampling"], self.params["tol"])
            head = sketch.basis[:, :rank]
            if head.shape[1] == rank:
                heads.append(head)
            elif head.shape[1]:  # pad narrow anchors with zero columns: they capture nothing
                heads.append(np.hstack([head, np.zeros((head.shape[0], rank - head.shape[1]))]))
        if not heads:
            heads.append(np.zeros((self.collection.rows, rank)))
        return np.hstack(heads), rank

    def partition(self) -> dict:
        """Route blocks to anchor subspaces and pack them into shards."""
        self.scan()

        def compute():
            n_blocks = self.collection.n_blocks
            if n_blocks <= self.shard_size:
                return {"shards": np.zeros(n_blocks, dtype=np.int64)}, {"n_shards": 1, "anchors": 0}
            anchors, anchor_rank = self._sample_anchors()
            anchors_future = self.client.scatter(anchors, broadcast=True)
            futures = [
                self.client.submit(_route_batch, self._handle, b, anchors_future, anchor_rank, pure=False)
                for b in range(len(self._batch_bounds) - 1)
            ]
            best = np.concatenate(self._gather("partition", futures))
            shards = pack_shards(best, self.shard_size)
            meta = {"n_shards": int(shards.max()) + 1, "anchors": anchors.shape[1] // anchor_rank}
            return {"shards": shards}, meta

        return self._timed("partition", compute)

    def _save_groups(self, groups: list[list[int]], sketches: list[GramSketch]) -> dict:
        flat, offsets = _pack_flat(groups)
        widths = np.array([s.basis.shape[1] for s in sketches], dtype=np.int64)
        return {
            "members": flat,
            "group_offsets": offsets,
            "bases": np.hstack([s.basis for s in sketches]) if sketches else np.zeros((self.collection.rows, 0)),
            "basis_widths": widths,
            "eigenvalues": np.concatenate([s.eigenvalues for s in sketches]) if sketches else np.zeros(0),
            "totals": np.array([s.total for s in sketches]),
            "slacks": np.array([s.slack for s in sketches]),
        }

    def _load_groups(self, arrays: dict) -> tuple[list[list[int]], list[GramSketch]]:
        groups = _unpack_flat(arrays["members"], arrays["group_offsets"])
        starts = offsets_of(arrays["basis_widths"])
        sketches = [
            GramSketch.from_parts(
                arrays["bases"][:, starts[g] : starts[g + 1]],
                arrays["eigenvalues"][starts[g] : starts[g + 1]],
                arrays["totals"][g],
                self.params["rank"],
                oversampling=self.params["oversampling"],
                tol=self.params["tol"],
                slack=arrays["slacks"][g],
            )
            for g in range(len(groups))
        ]
        return groups, sketches

    def local(self) -> dict:
        """The sequential greedy inside every shard, in parallel."""
        shards = self.partition()["shards"]

        def compute():
            n_shards = int(shards.max()) + 1
            bounds = self._batch_bounds
            splits = [
                self.client.submit(_split_batch, self._handle, b, int(bounds[b]), shards[bounds[b] : bounds[b + 1]],
                                   pure=False)
                for b in range(len(bounds) - 1)
            ]
            present = self._gather("split", splits)
            batches_of = [[b for b, shards_in in enumerate(present) if shard in shards_in] for shard in range(n_shards)]
            futures = [
                self.client.submit(_local_shard, self._handle, dict(self.params), shard, batches_of[shard], pure=False)
                for shard in range(n_shards)
            ]
            results = self._gather("local", futures)
            groups = [g for r in results for g in r["groups"]]
            sketches = [s for r in results for s in r["sketches"]]
            return self._save_groups(groups, sketches), {"n_groups": len(groups), "n_shards": n_shards}

        return self._timed("local", compute)

    def merge_round(self, index: int) -> bool:
        """Merge round ``index`` (stage ``merge-<index>``); returns whether anything merged.

        A round with no merge means later rounds would not change anything either.
        """
        previous = self.local() if index == 0 else self._merge_stage(index - 1)
        groups, sketches = self._load_groups(previous)
        if index > 0 and previous["meta"].get("merges", 1) == 0:
            return False

        def compute():
            new_groups, new_sketches, merges = merge_groups(
                groups, sketches, rank=self.params["rank"], eps=self.params["eps"], neighbours=self.merge_neighbours
            )
            return self._save_groups(new_groups, new_sketches), {"merges": merges, "n_groups": len(new_groups)}

        stage = self._timed(f"merge-{index:03d}", compute)
        return stage["meta"]["merges"] > 0

    def _merge_stage(self, index: int) -> dict:
        name = f"merge-{index:03d}"
        if not self.run.is_complete(name):
            self.merge_round(index)
        arrays, meta = self.run.load_stage(name)
        return {**arrays, "meta": meta}

    def merge(self, max_rounds: int = MAX_MERGE_ROUNDS) -> int:
        """Merge rounds until one merges nothing (or ``max_rounds``); returns rounds run."""
        for index in range(max_rounds):
            if not self.merge_round(index):
                return index + 1
        return max_rounds

    def _final_groups(self) -> tuple[list[list[int]], list[GramSketch]]:
        names = sorted(s for s in self.run.stages() if s.startswith("merge-") and self.run.is_complete(s))
        arrays = self._merge_stage(int(names[-1].split("-")[1])) if names else self.local()
        return self._load_groups(arrays)

    def _certify_groups(self, groups: list[list[int]]) -> dict[int, tuple]:
        """Exact (error, adaptive rank, basis) of the given groups from the stored data."""
        n_blocks = self.collection.n_blocks
        labels = np.full(n_blocks, -1, dtype=np.int64)
        for g, group in enumerate(groups):
            labels[group] = g
        m = self.collection.rows
        ranges = _range_of_groups(np.array([len(g) for g in groups]), np.full(len(groups), m * m * 8))
        certified: dict[int, tuple] = {}
        for r in np.unique(ranges):
            in_range = np.where(labels >= 0, ranges[np.maximum(labels, 0)] == r, False)
            batches = self._batch_labels(np.where(in_range, labels, -1))
            # a fixed number of lanes: bounded memory, and a summation order that does
            # not depend on the number of workers
            lanes = np.array_split(np.arange(len(batches)), min(len(batches), CERTIFY_LANES))
            lane_futures = [
                self.client.submit(_gram_lane, self._handle, [batches[i] for i in lane], pure=False)
                for lane in lanes
            ]
            self._track("certify", lane_futures)
            total = _tree_reduce(self.client, _sum_grams, lane_futures)
            certified.update(self.client.submit(
                _certify_grams, total, self.params["rank"], self.params["eps"], pure=False).result())
        return certified

    def certify(self) -> dict:
        """Exact rank-r error of every group; groups above eps are split and re-certified."""
        self._ensure_merged()

        def compute():
            groups, sketches = self._final_groups()
            bounds = [s.error_bound() for s in sketches]
            eps = self.params["eps"]
            pending = list(range(len(groups)))
            results: dict[int, tuple] = {}
            splits = 0
            while pending:
                certified = self._certify_groups([groups[g] for g in pending])
                retry = []
                for local, g in enumerate(pending):
                    error, r_c, basis = certified[local]
                    if error > eps and len(groups[g]) > 1:  # only through floating point
                        half = len(groups[g]) // 2
                        groups.append(groups[g][half:])
                        groups[g] = groups[g][:half]
                        bounds[g] = 0.0
                        bounds.append(0.0)
                        retry += [g, len(groups) - 1]
                        splits += 1
                    else:
                        results[g] = (error, r_c, basis)
                pending = retry
            errors = np.array([results[g][0] for g in range(len(groups))])
            ranks = np.array([results[g][1] for g in range(len(groups))], dtype=np.int64)
            flat, offsets = _pack_flat(groups)
            bases = [results[g][2] for g in range(len(groups))]
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

    def _storage_plan(self, certified: dict) -> tuple[list[list[int]], dict[int, np.ndarray | None], np.ndarray]:
        """Per group the basis to store (None: stored as it is) and the stored rank."""
        groups = _unpack_flat(certified["members"], certified["group_offsets"])
        m, eps = self.collection.rows, self.params["eps"]
        widths = self.collection.widths
        starts = offsets_of(certified["adaptive_ranks"])
        bases, ranks = {}, np.zeros(len(groups), dtype=np.int64)
        for g, group in enumerate(groups):
            r_c = int(certified["adaptive_ranks"][g])
            columns = int(widths[group].sum())
            fits = certified["errors"][g] <= eps or len(group) > 1
            if fits and r_c * (m + columns) < m * columns:
                bases[g] = certified["bases"][:, starts[g] : starts[g] + r_c]
                ranks[g] = r_c
            else:
                bases[g] = None  # raw is smaller, or a single block no rank-r form fits
        return groups, bases, ranks

    def compress(self) -> dict:
        """Write the compressed artifact (label = run id) and the realised errors."""
        certified = self.certify()

        def compute():
            import storage

            groups, bases, ranks = self._storage_plan(certified)
            coll = self.collection
            label = self.run_id
            storage.create_artifact(
                coll.url, coll.name, label, groups=groups, params=dict(self.params), overwrite=True,
                storage_options=coll.storage_options,
            )
            labels = np.empty(coll.n_blocks, dtype=np.int64)
            for g, group in enumerate(groups):
                labels[group] = g
            widths = coll.widths
            per_group_bytes = np.array(
                [8 * (ranks[g] if bases[g] is not None else coll.rows) * widths[group].sum() for g, group in enumerate(groups)]
            )
            ranges = _range_of_groups(np.array([len(g) for g in groups]), per_group_bytes)
            handle_artifact = (coll.url, coll.name, label, json.dumps(coll.storage_options, sort_keys=True))
            residual2 = {}
            for r in np.unique(ranges):
                in_range = {g for g in range(len(groups)) if ranges[g] == r}
                range_labels = np.where(np.isin(labels, list(in_range)), labels, -1)
                range_bases = {g: bases[g] for g in in_range}
                bases_future = self.client.scatter(range_bases, broadcast=True)
                parts = [
                    self.client.submit(_coefficient_batch, self._handle, first, stop, part, bases_future, pure=False)
                    for first, stop, part in self._batch_labels(range_labels)
                ]
                self._track("compress", parts)
                members = {g: groups[g] for g in in_range}
                residual2.update(self.client.submit(
                    _write_groups, handle_artifact, members, range_bases, *parts, pure=False).result())
            norms2 = coll.norms2
            stored_errors = np.array([
                math.sqrt(residual2[g] / norms2[group].sum()) if norms2[group].sum() > 0 else 0.0
                for g, group in enumerate(groups)
            ])
            writer = storage.open_artifact_writer(coll.url, coll.name, label, storage_options=coll.storage_options)
            artifact = writer.finalize(stored_errors.tolist(), ranks.tolist())
            arrays = {"stored_errors": stored_errors, "stored_ranks": ranks}
            meta = {"artifact": label, "bytes_compressed": int(artifact.nbytes_stored)}
            return arrays, meta

        stage = self._timed("compress", compute)
        if not self.keep_intermediate:
            self.prune()
        return stage

    def prune(self) -> int:
        """Delete the per-batch checkpoints (``scan-*``, ``split-*``) once certify is
        complete: no later stage reads them, and together they hold about twice the data.
        The stage manifests stay, so a re-run still skips every stage. Returns the number
        of checkpoints removed."""
        if not self.run.is_complete("certify"):
            return 0
        pieces = [s for s in self.run.stages() if s.startswith(("scan-", "split-"))]
        for stage in pieces:
            self.run.delete_stage(stage)
        return len(pieces)

    def stage_timings(self) -> dict[str, float]:
        """Compute seconds of every completed stage (merge rounds summed under "merge")."""
        timings: dict[str, float] = {}
        for stage in self.run.stages():
            name = "merge" if stage.startswith("merge-") else stage
            if name in STAGES:
                timings[name] = timings.get(name, 0.0) + float(self.run.stage_meta(stage).get("seconds", 0.0))
        return {k: timings[k] for k in STAGES if k in timings}

    def result(self) -> DistributedResult:
        """Run whatever is missing and assemble the result."""
        from .metrics import adaptive_compression_ratio, compression_ratio

        compressed = self.compress()
        certified = self.certify()
        groups = _unpack_flat(certified["members"], certified["group_offsets"])
        layout = self.collection
        stored_errors = np.asarray(compressed["stored_errors"])
        timings = self.stage_timings()
        return DistributedResult(
            groups=groups,
            errors=np.asarray(certified["errors"]),
            bounds=np.asarray(certified["bounds"]),
            ranks=np.asarray(certified["adaptive_ranks"]),
            stored_errors=stored_errors,
            compression_ratio=compression_ratio(layout, groups, self.params["rank"]),
            compression_ratio_adaptive=adaptive_compression_ratio(
                layout, groups, np.asarray(compressed["stored_ranks"])
                + np.where(np.asarray(compressed["stored_ranks"]) == 0, self.collection.rows, 0)
            ),
            max_error=float(stored_errors.max(initial=0.0)),
            timings=timings,
            bytes_input=int(self.collection.nbytes_stored),
            bytes_compressed=int(compressed["meta"]["bytes_compressed"]),
            artifact_label=str(compressed["meta"]["artifact"]),
            run_id=self.run_id,
            params=dict(self.params),
        )


def _tree_reduce(client, combine, futures: list, fan_in: int = 8):
    """Combine futures pairwise-ish in a tree on the cluster; returns one future."""
    if not futures:
        return client.submit(combine, pure=False)
    while len(futures) > 1:
        futures = [client.submit(combine, *futures[i : i + fan_in], pure=False) for i in range(0, len(futures), fan_in)]
    return futures[0]


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
    shard_size: int = 4000,
    batch_bytes: int = BATCH_BYTES,
    progress: Progress | None = None,
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
        run = ClusteringRun(
            collection, rank=rank, eps=eps, method=method, order=order, oversampling=oversampling,
            patience=patience, client=client, run_id=run_id, shard_size=shard_size, batch_bytes=batch_bytes,
            progress=progress,
        )
        return run.result()
    finally:
        if own_client:
            client.close()
            cluster.close()
