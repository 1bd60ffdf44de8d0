"""Scalable map/merge clustering of a stored collection on a Dask cluster.

The paper's sequential greedy recomputes the residuals of every remaining block for every
group, so its cost grows roughly like K x G. This variant stays near-linear in K by working
in stages, each checkpointed in the run folder (``runs/<run_id>/<stage>``) so that a re-run
skips what is complete. K blocks, G groups, B batches of about ``batch_bytes``, S shards
of at most ``shard_size`` blocks, W workers:

1. **scan** (map over B batches; I/O one read of the data): per block its exact squared
   norm and a factor F_i with F_i F_i^T <= A_i A_i^T of at most r + p columns, stored in
   float32 with a per-block power-of-two scale; what rounding moved is measured and carried
   as sketch slack, so every bound stays certified (half the checkpoint I/O of float64).
2. **partition** (one task for the sample, then a map over B batches): the greedy on a
   strided sample (at most SAMPLE_BLOCKS blocks and SAMPLE_BYTES of factors; factored
   blocks by their dominant directions, :func:`pipeline.sharding.dominant_factors`; read
   from the stored blocks, beside the scan, where none is wider than its factor) gives
   anchor subspaces; every block records the two anchors holding most of its strongest direction,
   one product per batch for all anchors. Blocks that no anchor holds half of (orphans:
   their subspaces had no block in the sample) get anchors from a sample of their own, at
   most twice, when a held-out probe before the first round shows that anchors from some
   orphans hold the others (data with no subspace structure, such as single weight
   columns, orphans most blocks either way and skips this). The anchors pass through the
   run store, so that the route tasks depend on no worker's result. Anchors are packed
   into S shards, S the power of two at or above K / ``shard_size`` (shards spread evenly
   over 2, 4, 8, ... workers, and S depends on K alone). Client: O(K log K).
3. **local** (map over S shards; worker work O(shard_size^2) per shard): the sequential
   greedy inside each shard on the factors with exact norms. A shard's end cuts its last
   group short: the last groups of neighbouring shards of one band are pooled (at most
   shard_size blocks a pool) and the greedy runs again on each pool as soon as its shards
   are in, whose groups replace them where they are fewer (refill; about one more task per
   shard_size cut groups).
4. **merge** (rounds, each its own stage, map over buckets): groups fall into disjoint
   buckets by the anchor their blocks vote for most (even rounds) or by their two best
   anchors (odd rounds), cut to at most MERGE_BUCKET groups; inside a bucket groups merge
   through their Gram sketches while the certified bound stays <= eps (no data read).
   No stage compares all pairs of groups or blocks. Client: O(K log K) per round.
5. **certify** (map over B batches, one read): Rayleigh-Ritz on each group's clustering
   sketch: every batch emits, per group, (Q^T A)(Q^T A)^T (k x k, k = r + p) and its
   exact energy; each group range adds them up in batch order (a chain of small tasks
   that stays on the worker holding the sum: the same bits for any number of workers),
   then every group's certified error (exact for the basis Q V_r, an upper bound on the
   exact rank-r error and at most the sketch's bound), adaptive rank and basis
   (:func:`pipeline.certify.certify_projected`). A group this cannot certify (roundoff)
   goes the Gram route: the same pass with its columns (few) or the upper triangle of its
   m x m Gram, exact error and optimal basis; a group above eps even there (possible only
   through floating point) is split in two and certified again. Worker work per batch
   O(data x k); client O(G).
6. **compress** (map over chunks of the artifact's flat coefficients, each about one
   batch of data; one read): coefficients V_i = U_C^T A_i written by each task straight
   into its chunk of the artifact's packed layout (bases likewise, by column chunk), with
   the realised error of every group; the client publishes (small arrays, manifest).

Memory per task is bounded by the batch size, the Gram matrices of one group range and
one merge task's sketches. The client runs its small dense numerics with one BLAS thread
(:mod:`pipeline._threads`), and builds no O(G^2) or O(K G) structure. Nothing of size
m x G passes through it: local and merge tasks checkpoint the sketches they make, certify
tasks the bases, compress tasks the artifact's chunks; the client keeps where they are
and a few numbers per group (:mod:`.checkpoints`).

Layer rule: the kernels in :mod:`pipeline.sharding` and :mod:`pipeline.certify` know
nothing of Dask or storage. This package is the one place in ``pipeline`` that
orchestrates: it submits Dask tasks, and its tasks reach the collection and the run
checkpoints through the ``storage`` package's public functions (never file formats
directly).

Modules: :mod:`.run` (the driver: scan to merge), :mod:`.finish` (its certify and compress
stages), :mod:`.tasks` (worker functions), :mod:`.plan` (batches, group ranges),
:mod:`.checkpoints` (the group-stage schema), :mod:`.result` (the outcome), :mod:`.compress`
(the rules both modes share, and the in-memory compressor), :mod:`.verify` (the verifier),
:mod:`.update` and :mod:`.update_tasks` (incremental runs over a finished run after appends:
new blocks join its groups under their stored bases, the rest form new groups, and the
artifact is a delta of the parent's).
"""

from .run import (
    BATCH_BYTES,
    MAX_MERGE_ROUNDS,
    STAGES,
    ClusteringRun,
    DistributedResult,
    cluster_collection,
)
from .tasks import import_storage as _import_storage  # noqa: F401  (the name tests and older callers use)

__all__ = ["cluster_collection", "ClusteringRun", "DistributedResult", "STAGES", "MAX_MERGE_ROUNDS", "BATCH_BYTES"]
