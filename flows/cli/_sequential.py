"""The paper's sequential clustering on a collection loaded in memory (``cmsvd cluster
--sequential``): its run stages, compression and result.
"""

from __future__ import annotations

import time

from pipeline.params import ClusteringParams

from ._app import EXIT_CORRUPT, EXIT_USAGE, CLIError
from ._output import StageBars


def _load_in_memory(coll, max_memory_gib: float, what: str):
    import numpy as np

    need = coll.rows * coll.n_columns * 8 * 2  # float64 copy plus working space
    if need > max_memory_gib * 2**30:
        raise CLIError(
            f"collection {coll.name!r} needs about {need / 2**30:.2f} GiB in memory for {what}, above the "
            f"--max-memory-gib budget of {max_memory_gib:g} GiB; use the distributed mode or raise the budget",
            EXIT_USAGE,
        )
    from pipeline import as_layout

    try:  # blocks of extreme magnitude come back scaled, norms as stored (pipeline.magnitude)
        layout = as_layout(coll.column_range(0, coll.n_columns), coll.offsets)
    except ValueError as exc:  # NaN or Inf in stored data
        raise CLIError(f"collection {coll.name!r}: {exc}; the stored data is corrupted", EXIT_CORRUPT) from None
    norms2 = layout.norms2
    bad = np.flatnonzero(np.abs(norms2 - coll.norms2) > 1e-6 * np.maximum(coll.norms2, 1e-300))
    if bad.size:
        i = int(bad[0])
        raise CLIError(f"block {i} ({coll.names[i]!r}): squared norm {norms2[i]:.6g} differs from the {coll.norms2[i]:.6g} "
                       "recorded at ingest; the stored data is corrupted", EXIT_CORRUPT)
    return layout


def _sequential_params(rank, eps, method, order, oversampling, patience) -> dict:
    spec = ClusteringParams(rank=rank, eps=eps, method=method, order=order, oversampling=oversampling, patience=patience)
    return {"mode": "sequential", **spec.greedy_kwargs()}


def _sequential_run_id(coll, params: dict) -> str:
    spec = ClusteringParams(**{k: v for k, v in params.items() if k != "mode"})
    return spec.run_id(coll.fingerprint(), "sequential")


def _sequential_cluster(coll, params: dict, run_id: str, max_memory_gib: float, bars: StageBars):
    """pipeline.cluster on the collection in memory; stage ``sequential`` in the run folder."""
    import pipeline
    import storage
    from pipeline.distributed.plan import pack_groups

    run = storage.open_run(coll.url, coll.name, run_id, params, coll.fingerprint(), storage_options=coll.storage_options)
    if run.is_complete("sequential"):
        bars("sequential", 1, 1)
        return run
    bars("load", 0, 1)
    layout = _load_in_memory(coll, max_memory_gib, "--sequential")
    bars("load", 1, 1)
    bars("sequential", 0, 1)
    start = time.perf_counter()
    kwargs = {k: v for k, v in params.items() if k != "mode"}
    result = pipeline.cluster(layout, **kwargs)
    seconds = time.perf_counter() - start
    flat, offsets = pack_groups(result.clusters)
    run.save_stage("sequential", {"members": flat, "group_offsets": offsets, "bounds": result.bounds},
                   {"seconds": seconds, "n_groups": result.n_groups})
    bars("sequential", 1, 1)
    return run


def _sequential_compress(coll, run, max_memory_gib: float, bars: StageBars):
    """Exact errors, adaptive ranks and the artifact (label = run id) of a sequential run:
    the library's in-memory compressor, with the distributed stages' kernels and rules."""
    import numpy as np
    from pipeline.distributed.compress import compress_in_memory
    from pipeline.distributed.plan import pack_groups, unpack_groups

    params = dict(run.params)
    if run.is_complete("compress"):
        bars("compress", 1, 1)
        return
    arrays, _ = run.load_stage("sequential")
    groups = unpack_groups(arrays["members"], arrays["group_offsets"])
    layout = _load_in_memory(coll, max_memory_gib, "compressing a sequential run")
    done = compress_in_memory(coll, layout, groups, rank=int(params["rank"]), eps=float(params["eps"]),
                              label=run.run_id, params=params, progress=bars)
    members, offsets = pack_groups(done.groups)
    run.save_stage(
        "compress",
        {"members": members, "group_offsets": offsets, "errors": done.errors, "adaptive_ranks": done.adaptive_ranks,
         "stored_errors": done.stored_errors, "stored_ranks": done.stored_ranks,
         # a half of a split group has no bound of its own (0, as the distributed certify records)
         "bounds": np.array([0.0 if half else arrays["bounds"][g] for g, half in enumerate(done.split)])},
        {"seconds": done.seconds, "artifact": run.run_id, "bytes_compressed": int(done.artifact.nbytes_stored),
         "splits": done.splits},
    )


def _sequential_result(coll, run):
    """A pipeline.distributed.DistributedResult for a compressed sequential run."""
    from pipeline.distributed import DistributedResult
    from pipeline.distributed.plan import unpack_groups

    _, seq_meta = run.load_stage("sequential")
    comp, comp_meta = run.load_stage("compress")
    return DistributedResult.assemble(
        coll, unpack_groups(comp["members"], comp["group_offsets"]),  # as stored: split groups are two
        errors=comp["errors"], bounds=comp["bounds"], adaptive_ranks=comp["adaptive_ranks"],
        stored_errors=comp["stored_errors"], stored_ranks=comp["stored_ranks"],
        timings={"sequential": float(seq_meta.get("seconds", 0.0)), "compress": float(comp_meta.get("seconds", 0.0))},
        bytes_compressed=comp_meta["bytes_compressed"], artifact_label=comp_meta["artifact"], run_id=run.run_id,
        params={k: v for k, v in run.params.items() if k != "mode"},
    )
