"""Scalable (map/merge) clustering benchmark: quality, near-linearity, memory, parallelism.

    python bench/bench_scale.py [--parts quality linear memory parallel] [--memory-gib 3.2]

* quality:  K=16,000 union-of-subspaces collection (m=128, n=4, ~100 blocks per rank-3
            subspace plus noise), r=16, eps=0.05: distributed vs sequential
            approximate/residual compression ratio (target >= 0.98x).
* linear:   the same generator at K=64,000: time(64k) / time(16k) (target <= 5).
* memory:   a collection of >= 3 GiB on disk processed by a LocalCluster of 2 workers with
            a 1 GiB memory limit each: no worker restarted, client peak RSS (target < 1 GiB).
* parallel: the scan stage on that collection with 2 workers vs 1 (target >= 1.6x).

Figures are printed; nothing is asserted. Stores live in a temporary folder (or --root).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

RANK, EPS = 16, 0.05


def _cluster(n_workers: int, memory_limit: str | None = None):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", memory_limit=memory_limit or "auto",
    )
    return cluster, Client(cluster)


def _subspace_collection(root: str, name: str, n_blocks: int):
    import storage
    from pipeline.synthetic import union_of_subspaces

    layout, _ = union_of_subspaces(n_blocks, rows=128, width=4, blocks_per_subspace=100, noise=0.05, seed=0)
    storage.ingest_blocks(root, name, (layout.block(i) for i in range(layout.n_blocks)), overwrite=True)
    return layout, storage.open_collection(root, name)


def _guarantee_holds(result, eps: float) -> bool:
    """Every certified error of a group of two or more blocks, and every stored error, <= eps."""
    multi = np.array([len(g) > 1 for g in result.groups])
    return bool(np.all(result.errors[multi] <= eps) and result.max_error <= eps)


def quality_and_linearity(root: str, parts: set[str]) -> None:
    import pipeline
    from pipeline.distributed import cluster_collection
    from pipeline.metrics import summarize

    cluster, client = _cluster(2)
    try:
        times = {}
        for k in (16000, 64000):
            if k == 64000 and "linear" not in parts:
                continue
            layout, coll = _subspace_collection(root, f"uos{k}", k)
            start = time.perf_counter()
            result = cluster_collection(coll, rank=RANK, eps=EPS, client=client)
            times[k] = time.perf_counter() - start
            print(f"distributed K={k}: {times[k]:.1f} s, {result.n_groups} groups, CR {result.compression_ratio:.3f}, "
                  f"adaptive CR {result.compression_ratio_adaptive:.3f}, max certified error {result.errors.max():.6f}, "
                  f"max stored error {result.max_error:.6f}, all <= eps: {_guarantee_holds(result, EPS)}")
            print("  stage seconds: " + ", ".join(f"{s} {t:.2f}" for s, t in result.timings.items()))
            if k == 16000 and "quality" in parts:
                start = time.perf_counter()
                seq = pipeline.cluster(layout, rank=RANK, eps=EPS)
                elapsed = time.perf_counter() - start
                s = summarize(layout, seq.clusters, rank=RANK, eps=EPS)
                print(f"sequential K={k}: {elapsed:.1f} s, {s.n_groups} groups, CR {s.compression_ratio:.3f}, "
                      f"adaptive CR {s.compression_ratio_adaptive:.3f}")
                print(f"quality: distributed/sequential CR = {result.compression_ratio / s.compression_ratio:.3f} "
                      f"(adaptive {result.compression_ratio_adaptive / s.compression_ratio_adaptive:.3f}); target >= 0.98")
        if len(times) == 2:
            print(f"near-linear: time(64k)/time(16k) = {times[64000] / times[16000]:.2f}; target <= 5")
    finally:
        client.close()
        cluster.close()


_MAKE_BIG = r"""
import sys, numpy as np, storage
root, name, n_blocks = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows, width, n_sub = 256, 64, 200
rng = np.random.default_rng(0)
bases = np.linalg.qr(rng.standard_normal((n_sub, rows, 4)))[0].astype(np.float32)
def blocks():
    for i in range(n_blocks):
        r = np.random.default_rng(i)
        yield (bases[i % n_sub] @ r.standard_normal((4, width)).astype(np.float32)
               + 0.01 * r.standard_normal((rows, width)).astype(np.float32))
storage.ingest_blocks(root, name, blocks(), dtype=np.float32, overwrite=True)
"""


def _big_collection(root: str, gib: float):
    import storage

    name = "big"
    n_blocks = int(gib * 2**30 / (256 * 64 * 4))
    try:
        coll = storage.open_collection(root, name)
        if coll.n_blocks == n_blocks:
            return coll
    except FileNotFoundError:
        pass
    start = time.perf_counter()
    # a separate process, so that the generator does not count in this client's RSS
    subprocess.run([sys.executable, "-c", _MAKE_BIG, root, name, str(n_blocks)], check=True)
    coll = storage.open_collection(root, name)
    print(f"built {coll.n_blocks} blocks of 256x64 float32: {coll.nbytes_stored / 2**30:.2f} GiB on disk "
          f"in {time.perf_counter() - start:.0f} s")
    return coll


def memory_and_parallelism(root: str, gib: float, parts: set[str]) -> None:
    from pipeline.distributed import ClusteringRun, cluster_collection

    coll = _big_collection(root, gib)
    if "parallel" in parts:
        scan = {}
        for n_workers in (1, 2):
            cluster, client = _cluster(n_workers)
            try:
                run = ClusteringRun(coll, rank=RANK, eps=0.2, client=client, run_id=f"scan-{n_workers}w-{time.time_ns()}")
                start = time.perf_counter()
                run.scan()
                scan[n_workers] = time.perf_counter() - start
            finally:
                client.close()
                cluster.close()
            print(f"scan with {n_workers} worker(s): {scan[n_workers]:.1f} s")
        print(f"parallelism: scan speed-up 2 vs 1 workers = {scan[1] / scan[2]:.2f}; target >= 1.6")
    if "memory" in parts:
        cluster, client = _cluster(2, memory_limit="1GiB")
        try:
            pids_before = sorted(client.run(os.getpid).values())
            start = time.perf_counter()
            result = cluster_collection(coll, rank=RANK, eps=0.2, client=client, run_id=f"memory-{time.time_ns()}")
            elapsed = time.perf_counter() - start
            pids_after = sorted(client.run(os.getpid).values())
        finally:
            client.close()
            cluster.close()
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"memory: {coll.nbytes_stored / 2**30:.2f} GiB collection, {elapsed:.0f} s, {result.n_groups} groups, "
              f"CR {result.compression_ratio:.2f}, max stored error {result.max_error:.6f} (eps 0.2), "
              f"all <= eps: {_guarantee_holds(result, 0.2)}")
        print(f"  workers restarted or killed: {'none' if pids_before == pids_after else 'YES'}; "
              f"client peak RSS {peak_mib:.0f} MiB; target < 1024 MiB")
        print("  stage seconds: " + ", ".join(f"{s} {t:.1f}" for s, t in result.timings.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["quality", "linear", "memory", "parallel"])
    parser.add_argument("--memory-gib", type=float, default=3.3)
    parser.add_argument("--root", default=None, help="keep the stores here (default: a temporary folder)")
    args = parser.parse_args()
    parts = set(args.parts)
    root = args.root or tempfile.mkdtemp(prefix="cmsvd-bench-")
    try:
        if parts & {"quality", "linear"}:
            quality_and_linearity(root, parts)
        if "parallel" in parts:
            memory_and_parallelism(root, args.memory_gib, {"parallel"})
        if "memory" in parts:
            if parts == {"memory"}:
                memory_and_parallelism(root, args.memory_gib, parts)
            else:  # a fresh process: the client's peak RSS must not include the other parts
                subprocess.run([sys.executable, __file__, "--parts", "memory", "--memory-gib", str(args.memory_gib),
                                "--root", root], check=True)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
