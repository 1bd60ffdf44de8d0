"""Incremental runs: the cost of an update against a full run, and the drift of ten updates.

    python bench/bench_update.py [--gib 0.5] [--appends 10] [--share 0.05] [--workers 2]
                                 [--new-subspaces 0.0] [--root DIR] [--safetensors MODEL]

A collection of about ``--gib`` GiB of 256 x 64 float32 blocks (400 rank-4 subspaces plus
noise, r = 16, eps = 0.2: the regime of ``bench_scale.py --parts io``) is clustered in
full; then ``--appends`` times ``--share`` of its blocks are appended and each append is
followed by an incremental update of the previous run (``cluster_collection(...,
parent_run_id=...)``). ``--new-subspaces`` is the share of appended blocks drawn from
subspaces the collection did not have. All runs use the same workers (one cluster).

With ``--safetensors MODEL`` the collection is instead the model's 2-D weights cut into
columns of length 384 (r = 32, eps = 0.2, the single-column regime of ``bench_scale.py``),
and each append is the next ``--share`` of those columns from a "fine-tuned checkpoint":
the same weights plus 1 % Gaussian noise (relative to each column's size).

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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_scale's model loader

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


def _model_columns(path: str) -> np.ndarray:
    from bench_scale import _singles

    layout, _ = _singles(path)
    return np.asarray(layout.data, dtype=np.float32)


def _checkpoint_columns(columns: np.ndarray, first: int, count: int):
    """Columns first..first+count-1 of the model, as a later checkpoint has them."""
    for i in range(first, first + count):
        column = columns[:, i % columns.shape[1]]
        noise = np.random.default_rng(i).standard_normal(column.shape).astype(np.float32)
        yield (column + 0.01 * np.linalg.norm(column) / np.sqrt(column.size) * noise).astype(np.float32)[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=0.5)
    parser.add_argument("--appends", type=int, default=10)
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--new-subspaces", type=float, default=0.0)
    parser.add_argument("--root", default=None, help="store folder (default: a temporary one, removed after)")
    parser.add_argument("--safetensors", default=None, help="a model's weights as the collection (see above)")
    args = parser.parse_args()

    import storage
    from distributed import Client, LocalCluster

    from pipeline.distributed import cluster_collection

    root = args.root or tempfile.mkdtemp(prefix="cmsvd-update-")
    rank, eps = RANK, EPS
    if args.safetensors:
        model = _model_columns(args.safetensors)
        rank, eps, n0 = 32, 0.2, model.shape[1]
        coll = storage.ingest_blocks(root, "grow", (model[:, i : i + 1] for i in range(n0)), dtype=np.float32,
                                     overwrite=True)
        more = lambda first, count: _checkpoint_columns(model, first - n0, count)  # noqa: E731
        what = f"{os.path.basename(args.safetensors)} as {n0} columns of 384; appends from a perturbed checkpoint"
    else:
        n0 = int(args.gib * 2**30 / (ROWS * WIDTH * 4))
        coll = storage.ingest_blocks(root, "grow", _blocks(0, n0, 0.0), dtype=np.float32, overwrite=True)
        more = lambda first, count: _blocks(first, count, args.new_subspaces)  # noqa: E731
        what = f"{ROWS}x{WIDTH} float32 blocks; {args.new_subspaces:.0%} of appended ones from new subspaces"
    step = max(1, int(round(args.share * n0)))
    print(f"collection: {coll.n_blocks} blocks, {coll.nbytes / 2**30:.2f} GiB ({what}); appends of {step} blocks "
          f"({args.share:.0%}); r = {rank}, eps = {eps}; {args.workers} workers", flush=True)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        client.run(lambda: __import__("pipeline.distributed.update_tasks"))
        start = time.perf_counter()
        full = cluster_collection(coll, rank=rank, eps=eps, client=client, run_id=f"full-{time.time_ns()}")
        full_s = time.perf_counter() - start
        print(f"full run: {full_s:6.1f} s, {full.n_groups} groups, CR {full.compression_ratio:.3f}", flush=True)
        print(f"{'append':>6} {'blocks':>7} {'wall_s':>7} {'share':>6} {'absorbed':>8} {'touched':>7} {'new_g':>5} "
              f"{'CR':>7}  note")
        parent, result = full, full
        for k in range(1, args.appends + 1):
            coll = storage.ingest_blocks(root, "grow", more(coll.n_blocks, step), dtype=np.float32, append=True)
            start = time.perf_counter()
            result = cluster_collection(coll, rank=rank, eps=eps, client=client, parent_run_id=parent.run_id)
            wall = time.perf_counter() - start
            lineage = result.lineage
            note = f"full run: {lineage['full_reason']}" if lineage.get("full_reason") else ""
            print(f"{k:>6} {coll.n_blocks:>7} {wall:7.2f} {wall / full_s:6.1%} {lineage.get('absorbed', '-'):>8} "
                  f"{lineage.get('groups_touched', '-'):>7} {lineage.get('new_groups', '-'):>5} "
                  f"{result.compression_ratio:7.3f}  {note}", flush=True)
            print("         stages: " + ", ".join(f"{s} {t:.2f}" for s, t in result.timings.items()), flush=True)
            assert result.max_error <= eps, result.max_error
            parent = result
        start = time.perf_counter()
        final = cluster_collection(coll, rank=rank, eps=eps, client=client, run_id=f"final-{time.time_ns()}")
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
