"""Incremental runs: the cost of an update against a full run, and the drift of ten updates.

    python bench/bench_update.py [--gib 0.5] [--appends 10] [--share 0.05] [--workers 2]
                                 [--new-subspaces 0.0] [--root DIR]

A collection of about ``--gib`` GiB of 256 x 64 float32 blocks (400 rank-4 subspaces plus
noise, r = 16, eps = 0.2: the regime of ``bench_scale.py --parts io``) is clustered in
full; then ``--appends`` times ``--share`` of its blocks are appended and each append is
followed by an incremental update of the previous run (``cluster_collection(...,
parent_run_id=...)``). ``--new-subspaces`` is the share of appended blocks drawn from
subspaces the collection did not have. All runs use the same workers (one cluster).

Prints, per step: wall time, its share of the full run's, blocks absorbed by existing
groups, groups touched, new groups, compression ratio; then a full re-cluster of the final
collection and the ratio of the last update's compression to it (targets: the first
update <= 15 % of the full run; after ten updates >= 0.97x the full re-cluster).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROWS, WIDTH, N_SUB, RANK, EPS = 256, 64, 400, 16, 0.2


def _blocks(first: int, count: int, new_share: float):
    """Blocks first..first+count-1 of the generator (seeded per block: any split of the
    stream gives the same blocks); a share of them from subspaces of their own."""
    rng = np.random.default_rng(0)
    bases = np.linalg.qr(rng.standard_normal((N_SUB, ROWS, 4)))[0].astype(np.float32)
    for i in range(first, first + count):
        r = np.random.default_rng(i)
        if r.random() < new_share:  # a subspace no earlier block had
            basis = np.linalg.qr(np.random.default_rng(10**9 + i // 8).standard_normal((ROWS, 4)))[0].astype(np.float32)
        else:
            basis = bases[i % N_SUB]
        yield (basis @ r.standard_normal((4, WIDTH)).astype(np.float32)
               + 0.01 * r.standard_normal((ROWS, WIDTH)).astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=0.5)
    parser.add_argument("--appends", type=int, default=10)
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--new-subspaces", type=float, default=0.0)
    parser.add_argument("--root", default=None, help="store folder (default: a temporary one, removed after)")
    args = parser.parse_args()

    import storage
    from distributed import Client, LocalCluster

    from pipeline.distributed import cluster_collection

    root = args.root or tempfile.mkdtemp(prefix="cmsvd-update-")
    n0 = int(args.gib * 2**30 / (ROWS * WIDTH * 4))
    step = max(1, int(round(args.share * n0)))
    coll = storage.ingest_blocks(root, "grow", _blocks(0, n0, 0.0), dtype=np.float32, overwrite=True)
    print(f"collection: {coll.n_blocks} blocks of {ROWS}x{WIDTH} float32, {coll.nbytes / 2**30:.2f} GiB; "
          f"appends of {step} blocks ({args.share:.0%}), {args.new_subspaces:.0%} from new subspaces; "
          f"{args.workers} workers", flush=True)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        client.run(lambda: __import__("pipeline.distributed.update_tasks"))
        start = time.perf_counter()
        full = cluster_collection(coll, rank=RANK, eps=EPS, client=client, run_id=f"full-{time.time_ns()}")
        full_s = time.perf_counter() - start
        print(f"full run: {full_s:6.1f} s, {full.n_groups} groups, CR {full.compression_ratio:.3f}", flush=True)
        print(f"{'append':>6} {'blocks':>7} {'wall_s':>7} {'share':>6} {'absorbed':>8} {'touched':>7} {'new_g':>5} "
              f"{'CR':>7}  note")
        parent, result = full, full
        for k in range(1, args.appends + 1):
            coll = storage.ingest_blocks(root, "grow", _blocks(coll.n_blocks, step, args.new_subspaces),
                                         dtype=np.float32, append=True)
            start = time.perf_counter()
            result = cluster_collection(coll, rank=RANK, eps=EPS, client=client, parent_run_id=parent.run_id)
            wall = time.perf_counter() - start
            lineage = result.lineage
            note = f"full run: {lineage['full_reason']}" if lineage.get("full_reason") else ""
            print(f"{k:>6} {coll.n_blocks:>7} {wall:7.2f} {wall / full_s:6.1%} {lineage.get('absorbed', '-'):>8} "
                  f"{lineage.get('groups_touched', '-'):>7} {lineage.get('new_groups', '-'):>5} "
                  f"{result.compression_ratio:7.3f}  {note}", flush=True)
            print("         stages: " + ", ".join(f"{s} {t:.2f}" for s, t in result.timings.items()), flush=True)
            assert result.max_error <= EPS, result.max_error
            parent = result
        start = time.perf_counter()
        final = cluster_collection(coll, rank=RANK, eps=EPS, client=client, run_id=f"final-{time.time_ns()}")
        final_s = time.perf_counter() - start
    print(f"full re-cluster of the final collection: {final_s:.1f} s, {final.n_groups} groups, "
          f"CR {final.compression_ratio:.3f}")
    print(f"after {args.appends} appends: CR {result.compression_ratio:.3f} = "
          f"{result.compression_ratio / final.compression_ratio:.3f}x the full re-cluster (target >= 0.97)")
    if args.root is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
