"""Worker tasks of the distributed clustering: plain module-level functions (they pickle
by reference) over a small :class:`Handle` to the store, each reading and writing only
its own batch, shard, bucket or group range."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import sys
from dataclasses import dataclass

import numpy as np

from .._threads import single_threaded_blas
from ..bounds import GramSketch
from ..certify import (
    certify_partial,
    certify_projected,
    combine_partials,
    gram_partials,
    group_coefficients,
    projected_partials,
)
from ..greedy import greedy_groups
from ..layout import BlockLayout, offsets_of, segment_sums, take_columns
from ..magnitude import block_shifts, scale_blocks
from ..sharding import (
    FLOAT32_ROUNDOFF,
    anchor_basis,
    anchor_fractions,
    best_two_anchors,
    block_factors,
    dominant_factors,
    group_sketches,
    leading_directions,
    merge_groups,
    round_factors,
    unround_factors,
)
from .checkpoints import groups_from_arrays, groups_to_arrays


@dataclass(frozen=True)
class Handle:
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

    @functools.cached_property
    def digest(self) -> str:
        """Names this store, collection, run and parameters in Dask task keys, so that runs
        sharing a scheduler never collide, whatever their run ids."""
        return hashlib.sha256(
            "\0".join([self.url, self.name, self.fingerprint, self.run_id, self.params_json]).encode()
        ).hexdigest()[:16]


def import_storage():
    """The project's ``storage`` package, also on Dask workers with spilling enabled.

    A worker puts its local directory first on ``sys.path``, and its spill folder there is
    named ``storage`` too: with an editable install that empty folder would be imported as
    a namespace package in place of ours. Import from the folder that holds ``pipeline``.
    """
    module = sys.modules.get("storage")
    if module is not None and getattr(module, "__file__", None):
        return module
    sys.modules.pop("storage", None)
    home = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, home)
    try:
        return importlib.import_module("storage")
    finally:
        sys.path.remove(home)


@functools.lru_cache(maxsize=8)
def collection_of(handle: Handle):
    return import_storage().open_collection(handle.url, handle.name, storage_options=handle.storage_options)


@functools.lru_cache(maxsize=8)
def run_of(handle: Handle):
    return import_storage().open_run(
        handle.url, handle.name, handle.run_id, json.loads(handle.params_json), handle.fingerprint,
        storage_options=handle.storage_options,
    )


def read_batch(handle: Handle, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of blocks first..stop-1 and their offsets relative to the batch."""
    coll = collection_of(handle)
    start, end = int(coll.offsets[first]), int(coll.offsets[stop])
    return coll.column_range(start, end), coll.offsets[first : stop + 1] - start


def check_batch(data: np.ndarray, offsets: np.ndarray, ids: np.ndarray, stored_norms2: np.ndarray, names) -> np.ndarray:
    """Exact squared norms of the blocks ``ids`` (global ids, their columns side by side in
    ``data``); NaN/Inf or a norm differing from the one stored at ingest (corrupted data) is
    an error naming the block."""
    norms2 = segment_sums(np.einsum("ij,ij->j", data, data, dtype=np.float64), offsets)
    for local in np.flatnonzero(~np.isfinite(norms2)):
        i = int(ids[local])
        raise ValueError(f"block {i} ({names[i]!r}): contains NaN or Inf")
    mismatch = np.abs(norms2 - stored_norms2) > 1e-6 * np.maximum(stored_norms2, 1e-300)
    for local in np.flatnonzero(mismatch & (stored_norms2 > 0)):
        i = int(ids[local])
        raise ValueError(
            f"block {i} ({names[i]!r}): squared norm {norms2[local]:.6g} differs from the {stored_norms2[local]:.6g}"
            " recorded at ingest; the stored data is corrupted"
        )
    return norms2


# -- scan, partition, local -----------------------------------------------------------


def float32_factors(eps: float) -> bool:
    """Whether factors are checkpointed in float32: their rounding slack (about 2^-24 of a
    group's norm) adds about 2^-23 to the squared error bound, negligible unless eps is tiny."""
    return eps * eps >= 1e3 * FLOAT32_ROUNDOFF


def rounding_eps(eps: float) -> float:
    """The threshold the greedy runs at on rounded factors, so that adding the rounding
    slack afterwards keeps the bound <= eps (err'^2 <= err^2 + 2 * 2^-24)."""
    return float(np.sqrt(eps * eps - 8.0 * FLOAT32_ROUNDOFF)) if float32_factors(eps) else eps


def scan_batch(handle: Handle, token: str | None, batch: int, first: int, stop: int, width_cap: int,
               eps: float) -> tuple[int, np.ndarray]:
    """Exact norms and factors of one batch, checkpointed as ``scan-<batch>`` (float32 with
    a per-block scale and measured rounding drop, see :func:`float32_factors`); committed
    only while the driver holds the run's lease ``token``. Returns the batch and its
    blocks' magnitude shifts: norms and factors are those of the blocks at their shifts
    (:mod:`pipeline.magnitude`), as the stored norms are."""
    stage = f"scan-{batch:05d}"
    run = run_of(handle).require_lease(token)
    if run.is_complete(stage):
        return batch, np.asarray(run.load_stage(stage, ["shifts"])[0]["shifts"])
    data, offsets = read_batch(handle, first, stop)
    arrays = scanned_blocks(handle, data, offsets, np.arange(first, stop), width_cap, eps)
    run.save_stage(stage, arrays)
    return batch, arrays["shifts"]


def scaled_blocks(handle: Handle, data: np.ndarray, offsets: np.ndarray, ids: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blocks ``ids`` (their stored columns ``data``, boundaries ``offsets``) at their
    magnitude shifts in float64 (once, for the norms and what follows), the shifts, and their
    exact squared norms at those shifts, checked against ingest (:func:`check_batch`)."""
    coll = collection_of(handle)
    shifts = block_shifts(data, offsets)
    scaled = scale_blocks(data, offsets, shifts)
    return scaled, shifts, check_batch(scaled, offsets, ids, coll.norms2[ids], coll.names)


def scanned_blocks(handle: Handle, data: np.ndarray, offsets: np.ndarray, ids: np.ndarray, width_cap: int,
                   eps: float) -> dict[str, np.ndarray]:
    """The scan's arrays of the blocks ``ids`` (see :func:`scaled_blocks`): shifts, exact
    norms, and factors of at most ``width_cap`` columns (float32 with a per-block scale
    when :func:`float32_factors`, the rounding drop added to ``dropped``)."""
    data, shifts, norms2 = scaled_blocks(handle, data, offsets, ids)
    with single_threaded_blas():
        factors, factor_offsets, dropped = block_factors(data, offsets, width_cap)
    if float32_factors(eps):
        scaled, exponents, rounded = round_factors(factors, factor_offsets)
        dropped = dropped + rounded  # triangle inequality
    else:
        scaled, exponents = factors, np.zeros(len(ids), dtype=np.int64)
    return {"factors": scaled, "exponents": exponents, "dropped": dropped, "factor_offsets": factor_offsets,
            "norms2": norms2, "shifts": shifts}


def sample_part_raw(handle: Handle, params: dict, first: int, picked: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sample_part` from the stored blocks instead of the scan checkpoint, through the
    scan's own arithmetic (:func:`scanned_blocks`), for collections whose blocks are all no
    wider than their factors (so that :func:`sample_part` has nothing to reduce): the
    factors and norms are the scan's, bit for bit, and the sample greedy need not wait for
    the scan."""
    data, offsets = read_batch(handle, first, first + int(picked.max()) + 1)  # one read: picks are strided
    data, offsets = take_columns(data, offsets, picked), offsets_of(np.diff(offsets)[picked])
    cap = params["rank"] + params["oversampling"]
    arrays = scanned_blocks(handle, data, offsets, first + picked, cap, params["eps"])
    factor_offsets = arrays["factor_offsets"]
    return unround_factors(arrays["factors"], arrays["exponents"], factor_offsets), factor_offsets, arrays["norms2"]


def sample_anchors_raw(handle: Handle, params: dict, picks: list[tuple[int, np.ndarray]]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_anchors` on :func:`sample_part_raw` of every ``(first, picked)`` (a
    batch's first block and the positions picked in it), in one task: it starts at once,
    on one worker, while the others scan."""
    return sample_anchors(params, *(sample_part_raw(handle, params, first, picked) for first, picked in picks))


def load_factors(handle: Handle, batch: int, picked: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A batch's factors (float64, exact scale), offsets, exact norms and rounding drops;
    of the blocks at positions ``picked`` only, when given."""
    arrays, _ = run_of(handle).load_stage(f"scan-{batch:05d}")
    factors, offsets = arrays["factors"], arrays["factor_offsets"]
    exponents, norms2, dropped = arrays["exponents"], arrays["norms2"], arrays["dropped"]
    if picked is not None:
        factors = take_columns(factors, offsets, picked)
        offsets = offsets_of(offsets[picked + 1] - offsets[picked])
        exponents, norms2, dropped = exponents[picked], norms2[picked], dropped[picked]
    return unround_factors(factors, exponents, offsets), offsets, norms2, dropped


def sample_part(handle: Handle, params: dict, batch: int, first: int, picked: np.ndarray, *scanned
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch's share of a partition sample: the blocks at positions ``picked`` of batch
    ``batch`` (whose first block is ``first``) as :func:`sample_anchors` takes them, from
    the batch's scan checkpoint; ``scanned`` is the batch's scan result, passed only so
    that the task waits for it. One task per batch, so the reads and reductions run in
    parallel, beside the rest of the scan.

    Blocks factored to r + p columns enter by their dominant directions
    (:func:`pipeline.sharding.dominant_factors`, all but (eps/2)^2 of their energy).
    Returns the factors, their column offsets and the blocks' exact squared norms."""
    coll = collection_of(handle)
    cap = min(params["rank"] + params["oversampling"], coll.rows)
    factors, offsets, norms2, _ = load_factors(handle, batch, picked)
    with single_threaded_blas():
        dominant, offsets = dominant_factors(factors, offsets, 1.0 - (params["eps"] / 2) ** 2,
                                             coll.widths[first + picked] > cap)
    return dominant, offsets, norms2


def sample_anchors(params: dict, *parts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Anchor bases from the greedy on a sample, given as :func:`sample_part` results.

    Each sample group's sketch gives one anchor (:func:`pipeline.sharding.anchor_basis`).
    Returns the bases side by side (m x total width) and their column offsets."""
    dominant = np.hstack([p[0] for p in parts])
    offsets = offsets_of(np.concatenate([np.diff(p[1]) for p in parts]))
    layout = BlockLayout(dominant, offsets, np.concatenate([p[2] for p in parts]))
    heads = []
    with single_threaded_blas():
        clusters, _, states = greedy_groups(layout, **dict(params, method="approximate", order="residual"))
        # patience singletons come back as Weyl states: sketch those from their blocks
        for sketch in group_sketches(layout, clusters, states, params["rank"], params["oversampling"], params["tol"]):
            head = anchor_basis(sketch.basis, sketch.eigenvalues, params["rank"])
            if head.shape[1]:
                heads.append(head)
    if not heads:
        heads.append(np.eye(layout.rows, 1))
    return np.hstack(heads), offsets_of(np.array([h.shape[1] for h in heads], dtype=np.int64))


def save_anchors(handle: Handle, token: str | None, tag: str,
                 anchors: tuple[np.ndarray, np.ndarray]) -> tuple[str, np.ndarray]:
    """Checkpoint :func:`sample_anchors`' result as the stage ``anchors-<tag>``; returns
    the stage and the anchors' column offsets. Every route task needs the bases: read
    from the store, they do not draw all of those tasks onto the one worker holding a
    large result."""
    stage = f"anchors-{tag}"
    run = run_of(handle).require_lease(token)
    if not run.is_complete(stage):
        run.save_stage(stage, {"bases": anchors[0], "offsets": anchors[1]})
    return stage, anchors[1]


def route_batch(handle: Handle, batch: int, anchors: tuple[str, np.ndarray],
                picked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two anchors (:func:`sample_anchors`' stage and offsets) holding most of each
    block's strongest direction (ids, K_batch x 2) and the shares of it they hold
    (float32, K_batch x 2); of the blocks at positions ``picked`` only, when given."""
    factors, offsets, _, _ = load_factors(handle, batch, picked)
    bases = _stage_bases(handle, anchors[0])
    with single_threaded_blas():
        shares = anchor_fractions(bases, anchors[1], leading_directions(factors, offsets))
        best_two = best_two_anchors(shares)
        return best_two, np.take_along_axis(shares, best_two.T, axis=0).T


def split_batch(handle: Handle, token: str | None, batch: int, first: int, shards: np.ndarray) -> list[int]:
    """Cut a batch's factors by shard into the stage ``split-<batch>`` (arrays suffixed by
    shard), so each local task later reads only its own blocks; returns the shards present.

    Going through the store keeps worker memory bounded by one batch or one shard, however
    large the collection (an in-memory all-to-all would hold every factor at once)."""
    stage = f"split-{batch:05d}"
    run = run_of(handle).require_lease(token)
    present = [int(s) for s in np.unique(shards)]
    if run.is_complete(stage):
        return present
    arrays_in, _ = run.load_stage(f"scan-{batch:05d}")
    offsets = arrays_in["factor_offsets"]
    arrays = {}
    for shard in present:
        local = np.flatnonzero(shards == shard)
        arrays[f"ids_{shard}"] = first + local
        arrays[f"factors_{shard}"] = take_columns(arrays_in["factors"], offsets, local)
        arrays[f"offsets_{shard}"] = offsets_of(offsets[local + 1] - offsets[local])
        for name in ("norms2", "exponents", "dropped"):
            arrays[f"{name}_{shard}"] = arrays_in[name][local]
    run.save_stage(stage, arrays)
    return present


def _load_shard(handle: Handle, shard: int, batches: list[int]) -> tuple[np.ndarray, BlockLayout, np.ndarray]:
    """A shard's factors (with exact norms and rounding drops) from its batches' splits."""
    run = run_of(handle)
    names = ("ids", "factors", "offsets", "norms2", "exponents", "dropped")
    parts = [run.load_stage(f"split-{b:05d}", [f"{n}_{shard}" for n in names])[0] for b in batches]
    pick = lambda name: [p[f"{name}_{shard}"] for p in parts]  # noqa: E731
    widths = np.concatenate([np.diff(o) for o in pick("offsets")])
    offsets = offsets_of(widths)
    exponents = np.concatenate(pick("exponents"))
    layout = BlockLayout(unround_factors(np.hstack(pick("factors")), exponents, offsets), offsets,
                         np.concatenate(pick("norms2")))
    return np.concatenate(pick("ids")), layout, np.concatenate(pick("dropped"))


def local_shard(handle: Handle, token: str | None, params: dict, shard: int, batches: list[int]) -> dict:
    """The sequential greedy inside one shard. Its sketches (whose slack includes the
    factors' float32 rounding) are checkpointed here as ``sketches-local-<shard>``, with the
    factors of its last group (``tail_*``: the group the shard's end cut short, which
    :func:`refill_shard` may form again with other shards' last groups); returns the
    groups in global block ids, that stage, and each sketch's exact total energy and
    certified bound."""
    stage = f"sketches-local-{shard:05d}"
    run = run_of(handle).require_lease(token)
    if not run.is_complete(stage):
        ids, layout, dropped = _load_shard(handle, shard, batches)
        groups, sketches = _greedy_sketches(params, ids, layout, dropped)
        tail = np.searchsorted(ids, groups[-1]) if groups else np.zeros(0, dtype=np.int64)
        run.save_stage(stage, {**groups_to_arrays(groups, sketches, layout.rows), **_tail_arrays(ids, layout, dropped, tail)})
    else:  # a retried task: the same groups, already checkpointed
        groups, sketches = _stage_groups(handle, stage)
    return _group_result(groups, stage, sketches)


def refill_shard(handle: Handle, token: str | None, params: dict, index: int, sources: list[str]) -> dict:
    """The sequential greedy over the last groups of the local stages ``sources`` pooled
    (each shard's end cuts its last group short; pooled, they fill whole groups), its
    sketches checkpointed as ``sketches-refill-<index>``; returns as :func:`local_shard`."""
    stage = f"sketches-refill-{index:05d}"
    run = run_of(handle).require_lease(token)
    if not run.is_complete(stage):
        names = ("ids", "factors", "offsets", "norms2", "dropped")
        parts = [run.load_stage(source, [f"tail_{n}" for n in names])[0] for source in sources]
        pick = lambda name: [p[f"tail_{name}"] for p in parts]  # noqa: E731
        ids = np.concatenate(pick("ids"))
        offsets = offsets_of(np.concatenate([np.diff(o) for o in pick("offsets")]))
        layout = BlockLayout(np.hstack(pick("factors")), offsets, np.concatenate(pick("norms2")))
        groups, sketches = _greedy_sketches(params, ids, layout, np.concatenate(pick("dropped")))
        run.save_stage(stage, groups_to_arrays(groups, sketches, layout.rows))
    else:
        groups, sketches = _stage_groups(handle, stage)
    return _group_result(groups, stage, sketches)


def _greedy_sketches(params: dict, ids: np.ndarray, layout: BlockLayout,
                     dropped: np.ndarray) -> tuple[list[list[int]], list[GramSketch]]:
    """The greedy on a shard's factors: groups in global ids and their sketches, whose
    slack includes the factors' rounding drops."""
    with single_threaded_blas():
        clusters, _, states = greedy_groups(layout, **dict(params, eps=rounding_eps(params["eps"])))
        sketches = group_sketches(layout, clusters, states, params["rank"], params["oversampling"], params["tol"])
        for group, sketch in zip(clusters, sketches):
            # ||Delta||_F of the whole group: the drops are per block, orthogonal in columns
            sketch.slack += float(np.sqrt(np.sum(dropped[group] ** 2)))
    return [ids[g].tolist() for g in clusters], sketches


def _tail_arrays(ids: np.ndarray, layout: BlockLayout, dropped: np.ndarray, tail: np.ndarray) -> dict:
    """The factors of a shard's blocks at positions ``tail``, as :func:`refill_shard` reads them."""
    part = layout.subset(tail)
    return {"tail_ids": ids[tail], "tail_factors": part.data, "tail_offsets": part.offsets,
            "tail_norms2": part.norms2, "tail_dropped": dropped[tail]}


def _group_result(groups: list[list[int]], stage: str, sketches: list[GramSketch]) -> dict:
    return {"groups": groups, "stage": stage, "totals": [s.total for s in sketches],
            "bounds": [s.error_bound() for s in sketches]}


# -- merge ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _stage_groups(handle: Handle, stage: str) -> tuple[list[list[int]], list[GramSketch]]:
    """The groups and sketches of a sketch stage, read once per worker from the run (room
    for every local stage and a round's merge stages at K = 64,000: about a hundred; all
    of them together hold each group's sketch once, as the single group stage did)."""
    arrays, _ = run_of(handle).load_stage(stage)
    return groups_from_arrays(arrays, json.loads(handle.params_json))


def merge_bucket_batch(handle: Handle, token: str | None, stage: str, buckets: list[list[tuple[str, int]]],
                       neighbours: int) -> list:
    """Merge inside each bucket of a batch of buckets (each a list of its groups' sketch
    references, (sketch stage, index)). The merged sketches are checkpointed here as
    ``stage``; per bucket the result is the new groups as lists of positions in the
    bucket, and per new group None (it merged with nothing: the caller has it) or its
    (stage, index, total energy, certified bound). Sketches come from the run, not the
    task graph: a restarted worker reads them again."""
    params = json.loads(handle.params_json)
    out, made = [], []
    with single_threaded_blas():
        for refs in buckets:
            sketches = [_stage_groups(handle, name)[1][i] for name, i in refs]
            groups, merged, _ = merge_groups([[i] for i in range(len(refs))], sketches, rank=params["rank"],
                                             eps=params["eps"], neighbours=neighbours)
            entries = []
            for group, sketch in zip(groups, merged):
                if len(group) == 1:
                    entries.append(None)
                    continue
                entries.append((stage, len(made), sketch.total, sketch.error_bound()))
                made.append(sketch)
            out.append((groups, entries))
    run = run_of(handle).require_lease(token)
    if made and not run.is_complete(stage):  # a retried task made the same sketches
        run.save_stage(stage, groups_to_arrays([[i] for i in range(len(made))], made, made[0].basis.shape[0]))
    return out


# -- certify and compress -------------------------------------------------------------


def gram_batch(handle: Handle, first: int, stop: int, labels: np.ndarray, ranges: np.ndarray,
               n_ranges: int, group_shifts: np.ndarray) -> list[dict]:
    """One read of a batch: per group range, the Gram partials of its groups present
    (each group at its magnitude shift ``group_shifts[g]``)."""
    data, offsets = read_batch(handle, first, stop)
    with single_threaded_blas():
        return _by_range(gram_partials(data, offsets, labels, group_shifts), ranges, n_ranges)


def _by_range(parts: dict, ranges: np.ndarray, n_ranges: int) -> list[dict]:
    """A batch's partials (group -> partial) split by group range ``ranges[group]``."""
    out: list[dict] = [{} for _ in range(n_ranges)]
    for label, part in parts.items():
        out[int(ranges[label])][label] = part
    return out


def sketch_basis(handle: Handle, ref: tuple[str, int]) -> np.ndarray:
    """The orthonormal basis Q of the clustering sketch at ``ref`` = (sketch stage, index)."""
    name, index = ref
    return _stage_groups(handle, name)[1][int(index)].basis


def projected_batch(handle: Handle, first: int, stop: int, labels: np.ndarray, ranges: np.ndarray, n_ranges: int,
                    group_shifts: np.ndarray, refs: dict[int, tuple[str, int]]) -> list[dict]:
    """One read of a batch: per group range, the projected partials of its groups present
    on their sketches' bases (``refs``: group -> sketch reference), at their shifts."""
    data, offsets = read_batch(handle, first, stop)
    present = np.unique(labels[labels >= 0])
    bases = {int(g): sketch_basis(handle, refs[int(g)]) for g in present}
    with single_threaded_blas():
        return _by_range(projected_partials(data, offsets, labels, bases, group_shifts), ranges, n_ranges)


def certify_projected_range(handle: Handle, token: str | None, stage: str, partials: dict,
                            refs: dict[int, tuple[str, int]], rank: int, eps: float) -> dict:
    """:func:`certify_range` through the Rayleigh-Ritz route
    (:func:`pipeline.certify.certify_projected`); a group it cannot certify maps to None
    (the driver certifies it from its Gram)."""
    return _certified_range(handle, token, stage, partials, lambda g, part: certify_projected(
        part, sketch_basis(handle, refs[g]), rank, eps))


def pick_range(parts: list[dict], index: int) -> dict:
    """One group range's partials out of a batch's list."""
    return parts[index]


def combine_range(left: dict, right: dict) -> dict:
    """Add a batch's partials to a range's running sum (left first)."""
    with single_threaded_blas():
        return combine_partials(left, right)


def certify_range(handle: Handle, token: str | None, stage: str, partials: dict, rank: int,
                  eps: float) -> dict[int, tuple[float, int, tuple[str, int]]]:
    """Exact (error, adaptive rank, basis) of every group of a range from its summed Gram.

    The bases are checkpointed here as ``stage`` (committed only while the driver holds
    the run's lease ``token``), where the compress tasks read them: they never pass
    through the client. Returns per group its error, adaptive rank and (stage, first
    column) of its basis."""
    return _certified_range(handle, token, stage, partials, lambda g, part: certify_partial(part, rank, eps))


def _certified_range(handle: Handle, token: str | None, stage: str, partials: dict, certify) -> dict:
    """``certify(group, partial)`` (a certificate, or None: not certified here) of every
    group of a range, checkpointed as ``stage`` with the bases side by side (a retried
    task reads them back); per group None or (error, adaptive rank, (stage, first column
    of its basis))."""
    run = run_of(handle).require_lease(token)
    if run.is_complete(stage):  # a retried task: the same results, already checkpointed
        arrays = run.load_stage(stage, ["labels", "errors", "ranks", "failed"])[0]
    else:
        labels = np.fromiter(partials, dtype=np.int64, count=len(partials))
        with single_threaded_blas():
            certs = [certify(int(g), partials[g]) for g in labels]
        kept = [c for c in certs if c is not None]
        rows = kept[0].basis.shape[0] if kept else collection_of(handle).rows
        arrays = {"labels": labels, "failed": np.array([c is None for c in certs], dtype=bool),
                  "errors": np.array([np.nan if c is None else c.error for c in certs], dtype=np.float64),
                  "ranks": np.array([0 if c is None else c.adaptive_rank for c in certs], dtype=np.int64)}
        run.save_stage(stage, {**arrays, "bases": np.hstack([c.basis for c in kept]) if kept else np.zeros((rows, 0))})
    starts = offsets_of(arrays["ranks"])
    return {int(g): None if failed else (float(e), int(k), (stage, int(starts[j])))
            for j, (g, e, k, failed) in enumerate(zip(arrays["labels"], arrays["errors"], arrays["ranks"],
                                                        arrays["failed"]))}


@functools.lru_cache(maxsize=8)
def _stage_bases(handle: Handle, stage: str) -> np.ndarray:
    """The bases side by side of a stage that stores them (a certify range, the partition's
    anchors), read once per worker."""
    return run_of(handle).load_stage(stage, ["bases"])[0]["bases"]


@functools.lru_cache(maxsize=4)
def _basis_refs(handle: Handle) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Where each certified group's basis is: range stage names, and per group the index
    of its stage and its first column there (from the certify stage, so a restarted
    worker finds them again)."""
    arrays, meta = run_of(handle).load_stage("certify", ["basis_stage", "basis_start"])
    return list(meta["basis_stages"]), arrays["basis_stage"], arrays["basis_start"]


def certified_basis(handle: Handle, g: int, width: int) -> np.ndarray:
    """The ``width`` leading optimal directions of certified group ``g``."""
    names, stage_of, start_of = _basis_refs(handle)
    start = int(start_of[g])
    return _stage_bases(handle, names[int(stage_of[g])])[:, start : start + width]


def stored_bases(handle: Handle, groups, ranks: np.ndarray, base: tuple | None = None) -> dict[int, np.ndarray | None]:
    """Basis each of ``groups`` is stored with (its ``ranks[g]`` leading optimal directions),
    or None for a group stored as it is (rank 0).

    ``base`` = (artifact, kept, fresh) when the artifact written extends another one (an
    incremental run): group g keeps that artifact's group ``kept[g]`` and its basis, or is
    the run's certified group ``fresh[g]``."""
    out = {}
    for g in map(int, groups):
        if not ranks[g]:
            out[g] = None
        elif base is None:
            out[g] = certified_basis(handle, g, int(ranks[g]))
        elif g in base[1]:
            out[g] = base_basis(base[0], base[1][g])
        else:
            out[g] = certified_basis(handle, base[2][g], int(ranks[g]))
    return out


@functools.lru_cache(maxsize=4)
def base_artifact(artifact: tuple):
    """A published artifact, opened once per worker: (url, collection, label, storage options json)."""
    url, name, label, storage_options_json = artifact
    return import_storage().open_artifact(url, name, label, storage_options=json.loads(storage_options_json))


@functools.lru_cache(maxsize=2)
def base_bases(artifact: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Every basis of a published artifact side by side (stored dtype) and each group's
    column offsets, read once per worker: a read per group would decode a chunk of many
    groups' bases each time."""
    return base_artifact(artifact).all_bases()


def base_basis(artifact: tuple, g: int) -> np.ndarray:
    """Group ``g``'s basis in a published artifact, as stored."""
    bases, offsets = base_bases(artifact)
    return bases[:, int(offsets[g]) : int(offsets[g + 1])]


def _artifact_writer(artifact: tuple):
    url, name, label, storage_options_json = artifact
    return import_storage().open_artifact_writer(url, name, label, storage_options=json.loads(storage_options_json))


def coefficient_chunk(handle: Handle, artifact: tuple, chunk: int, first: int, stop: int, labels: np.ndarray,
                      ranks: np.ndarray, group_shifts: np.ndarray, base: tuple | None = None
                      ) -> tuple[dict[int, float], dict[str, dict]]:
    """Compute and write chunk ``chunk`` of the artifact's flat coefficients, which holds
    (parts of) blocks first..stop-1 (``labels``: their groups; ``base`` as for
    :func:`stored_bases`). Returns the squared residuals, per group, of the blocks whose
    coefficients start in this chunk (each block counted once), and the written chunk
    file's size and sha256."""
    writer = _artifact_writer(artifact)
    layout = writer.direct_layout()
    if base is not None:  # blocks the base holds keep their stored coefficients: not part of any chunk
        labels = np.where(writer.held_by_base()[first:stop], -1, labels)
    data, offsets = read_batch(handle, first, stop)
    bases = stored_bases(handle, np.unique(labels[labels >= 0]), ranks, base)
    with single_threaded_blas():
        parts = group_coefficients(data, offsets, labels, bases, group_shifts)
    low = chunk * layout.coefficient_chunk
    high = min(low + layout.coefficient_chunk, int(layout.coef_offsets[-1]))
    values = np.empty(high - low, dtype=writer.dtype)
    residuals: dict[int, float] = {}
    for g, (blocks, coef, residual2) in parts.items():
        starts = layout.coef_offsets[first + blocks]
        place = flat_positions(starts, offsets[blocks + 1] - offsets[blocks], coef.shape[0])
        inside = (place >= low) & (place < high)  # a block may straddle the chunk's edges
        values[place[inside] - low] = coef[inside]
        owned = (starts >= low) & (starts < high)  # each block's residual counted once
        if owned.any():
            residuals[g] = sum(residual2[owned].tolist())
    return residuals, writer.write_coefficient_chunk(chunk, values)


def flat_positions(starts: np.ndarray, widths: np.ndarray, rows: int) -> np.ndarray:
    """Where each entry of V (``rows`` x sum(widths), blocks side by side) lies in the
    artifact's flat coefficients: block j's V_j is stored row by row from ``starts[j]``."""
    block = np.repeat(np.arange(len(widths)), widths)
    within = np.arange(int(widths.sum())) - np.repeat(offsets_of(widths)[:-1], widths)
    return starts[block][None, :] + np.arange(rows)[:, None] * widths[block][None, :] + within[None, :]


def basis_chunk(handle: Handle, artifact: tuple, chunk: int, ranks: np.ndarray, base: tuple | None = None
                ) -> dict[str, dict]:
    """Write column chunk ``chunk`` of the artifact's bases (each group's ``ranks[g]``
    leading certified directions, side by side; the groups of a ``base`` artifact have
    none here, see :func:`stored_bases`); returns the written files' hashes."""
    writer = _artifact_writer(artifact)
    layout = writer.direct_layout()
    low = chunk * layout.basis_chunk
    high = min(low + layout.basis_chunk, int(layout.basis_offsets[-1]))
    columns = np.empty((writer.rows, high - low), dtype=writer.dtype)
    first = int(np.searchsorted(layout.basis_offsets, low, side="right")) - 1
    last = int(np.searchsorted(layout.basis_offsets, high, side="left"))
    for g in range(first, last):
        begin, end = int(layout.basis_offsets[g]), int(layout.basis_offsets[g + 1])
        a, z = max(begin, low), min(end, high)
        if a < z:
            basis = stored_bases(handle, [g], ranks, base)[g]
            columns[:, a - low : z - low] = basis[:, a - begin : z - begin]
    return writer.write_basis_chunk(chunk, columns)
