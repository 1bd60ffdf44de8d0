"""Scalable (map/merge) clustering benchmark: speed against the sequential greedy, near-
linearity, distance to the I/O floor, BLAS oversubscription, memory, strong scaling.

    python bench/bench_scale.py [--parts quality singles copies linear io blas memory parallel scaling]
                                [--safetensors model.safetensors] [--workers 2] [--io-gib 0.5]

* quality:  K=16,000 blocks of 128 x 4, ~40 blocks per rank-3 subspace, noise near eps
            (r=16, eps=0.05): distributed wall time and compression ratio against
            ``pipeline.cluster`` on the same data in the same run (targets: time <= 1x,
            CR >= 0.98x).
* singles:  single-column blocks, like weight matrices cut into columns of length 384
            (r=32, eps=0.2): every 2-D encoder weight of ``--safetensors`` when given, else
            28,000 synthetic columns (targets: time <= 1.5x sequential, CR >= 0.98x).
* copies:   the single columns plus, appended, a perturbed copy (1 % noise) of their first
            half, like a collection holding a model and a later checkpoint of it: near-copies
            far apart in block order (target: CR >= 0.98x sequential).
* linear:   the quality generator at K=64,000: time(64k) / time(16k) (target <= 4.5).
* io:       >= ``--io-gib`` GiB of 256 x 64 float32 blocks (r=16, eps=0.2): the whole run
            divided by one ``dask.array`` read of the same Zarr data with the same workers
            (target <= 4x with 2 workers).
* small:    many small groups on wide float32 blocks: 4,096 of 256 x 64 around 1,024
            rank-4 subspaces, 4 blocks each (r=16, eps=0.2): whole run and stages, twice.
* blas:     the quality run in a fresh process with the default environment and with
            OPENBLAS_NUM_THREADS=1 (target: merge and total within 20%).
* memory:   >= 3 GiB on disk, 2 workers with a 1 GiB memory limit each: no worker
            restarted, client peak RSS (target < 1 GiB).
* parallel: the scan stage with 2 workers vs 1 (target >= 1.6x).
* scaling:  the io collection with each of ``--scaling-workers`` (for a 16-core machine:
            2 4 8 16; target >= 5x from 2 to 16); ``--profile`` adds each task kind's
            count, summed compute time, longest task and window from a Dask task stream.

Figures are printed; nothing is asserted. Stores live in a temporary folder (or --root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


@contextlib.contextmanager
def _cluster(n_workers: int, memory_limit: str | None = None):
    """A client on a LocalCluster of single-threaded worker processes, closed on exit.

    The workers import the pipeline before any timing, as the client process has: a
    long-lived cluster pays that once (about 1.5 s here), not per run."""
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", memory_limit=memory_limit or "auto",
    ) as cluster, Client(cluster) as client:
        client.run(_import_pipeline)
        yield client


def _import_pipeline() -> None:
    import pipeline.distributed.tasks

    pipeline.distributed.tasks.import_storage()  # the tasks import it on first use (the client has it)


def _store(root: str, name: str, layout):
    import storage

    try:
        coll = storage.open_collection(root, name)
        if coll.n_blocks == layout.n_blocks:
            return coll
    except FileNotFoundError:
        pass
    storage.ingest_blocks(root, name, (layout.block(i) for i in range(layout.n_blocks)), overwrite=True)
    return storage.open_collection(root, name)


def _narrow(k: int):
    from pipeline.synthetic import union_of_subspaces

    return union_of_subspaces(k, rows=128, width=4, blocks_per_subspace=40, noise=0.065, seed=0)[0]


def _singles(safetensors: str | None):
    """Single-column blocks of length 384: a real model's encoder weights, or synthetic."""
    from pipeline.layout import as_layout
    from pipeline.synthetic import union_of_subspaces

    if not safetensors:
        layout, _ = union_of_subspaces(28000, rows=384, width=1, blocks_per_subspace=40, subspace_rank=8,
                                       noise=0.15, seed=0)
        return layout, "synthetic 28,000 x (384 x 1)"
    from safetensors.numpy import load_file

    tensors = load_file(safetensors)
    columns = [np.asarray(t, dtype=np.float64).reshape(-1, 384).T for name, t in sorted(tensors.items())
               if t.ndim == 2 and t.size % 384 == 0 and "embeddings" not in name]
    data = np.hstack(columns)
    return as_layout(data, np.arange(data.shape[1] + 1)), f"{os.path.basename(safetensors)}: {data.shape[1]} x (384 x 1)"


def _guarantee_holds(result, eps: float) -> bool:
    """Every certified error of a group of two or more blocks, and every stored error, <= eps."""
    multi = np.array([len(g) > 1 for g in result.groups])
    return bool(np.all(result.errors[multi] <= eps) and result.max_error <= eps)


def _against_sequential(root, name, layout, rank, eps, n_workers, label):
    """One distributed run and one sequential run of the same data, in this process."""
    import pipeline
    from pipeline._threads import single_threaded_blas
    from pipeline.distributed import cluster_collection
    from pipeline.metrics import compression_ratio

    coll = _store(root, name, layout)
    with _cluster(n_workers) as client:
        start = time.perf_counter()
        result = cluster_collection(coll, rank=rank, eps=eps, client=client, run_id=f"bench-{time.time_ns()}")
        distributed = time.perf_counter() - start
    start = time.perf_counter()
    with single_threaded_blas():
        seq = pipeline.cluster(layout, rank=rank, eps=eps)
    sequential = time.perf_counter() - start
    seq_cr = compression_ratio(layout, seq.clusters, rank)
    print(f"{label}, r={rank}, eps={eps}, {n_workers} workers")
    print(f"  distributed {distributed:6.1f} s, {result.n_groups} groups, CR {result.compression_ratio:.3f}, "
          f"guarantee holds: {_guarantee_holds(result, eps)}")
    print(f"  sequential  {sequential:6.1f} s, {seq.n_groups} groups, CR {seq_cr:.3f}")
    print(f"  time distributed/sequential = {distributed / sequential:.2f}, CR distributed/sequential = "
          f"{result.compression_ratio / seq_cr:.3f}")
    print("  stage seconds: " + ", ".join(f"{s} {t:.2f}" for s, t in result.timings.items()), flush=True)
    # the sequential greedy neither certifies exactly nor writes an artifact: compare the
    # clustering stages alone too
    clustering = sum(result.timings.get(s, 0.0) for s in ("scan", "partition", "local", "merge"))
    print(f"  clustering stages (scan to merge) {clustering:.1f} s = {clustering / sequential:.2f}x sequential; "
          f"certify + compress {result.timings.get('certify', 0.0) + result.timings.get('compress', 0.0):.1f} s",
          flush=True)
    return distributed, result


def quality(root: str, args) -> None:
    _against_sequential(root, "uos16k", _narrow(16000), 16, 0.05, args.workers, "narrow: K=16,000 of 128 x 4")


def singles(root: str, args) -> None:
    layout, label = _singles(args.safetensors)
    _against_sequential(root, "singles", layout, 32, 0.2, args.workers, f"single columns: {label}")


def copies(root: str, args) -> None:
    from pipeline.layout import as_layout

    layout, label = _singles(args.safetensors)
    data = np.asarray(layout.data, dtype=np.float64)
    half = data[:, : data.shape[1] // 2]
    noise = np.random.default_rng(0).standard_normal(half.shape)
    copy = half + 0.01 * np.linalg.norm(half, axis=0) / np.sqrt(half.shape[0]) * noise
    both = np.hstack([data, copy])
    _against_sequential(root, "copies", as_layout(both, np.arange(both.shape[1] + 1)), 32, 0.2, args.workers,
                        f"near-copies: {label} and a perturbed copy of its first half")


def linear(root: str, args) -> None:
    from pipeline.distributed import cluster_collection

    with _cluster(args.workers) as client:
        times = {}
        for k in (16000, 64000):
            coll = _store(root, f"uos{k // 1000}k", _narrow(k))
            start = time.perf_counter()
            result = cluster_collection(coll, rank=16, eps=0.05, client=client, run_id=f"bench-{time.time_ns()}")
            times[k] = time.perf_counter() - start
            print(f"K={k}: {times[k]:.1f} s, {result.n_groups} groups, CR {result.compression_ratio:.3f}; stages "
                  + ", ".join(f"{s} {t:.2f}" for s, t in result.timings.items()), flush=True)
        print(f"near-linear: time(64k)/time(16k) = {times[64000] / times[16000]:.2f}; target <= 4.5")


_MAKE_BIG = r"""
import sys, numpy as np, storage
root, name, n_blocks, n_sub = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows, width = 256, 64
rng = np.random.default_rng(0)
bases = np.linalg.qr(rng.standard_normal((n_sub, rows, 4)))[0].astype(np.float32)
def blocks():
    for i in range(n_blocks):
        r = np.random.default_rng(i)
        yield (bases[i % n_sub] @ r.standard_normal((4, width)).astype(np.float32)
               + 0.01 * r.standard_normal((rows, width)).astype(np.float32))
storage.ingest_blocks(root, name, blocks(), dtype=np.float32, overwrite=True)
"""


def _big_collection(root: str, gib: float, name: str, n_sub: int = 400):
    """256 x 64 float32 blocks around ``n_sub`` rank-4 subspaces, block i near subspace
    i mod n_sub, ``gib`` GiB in all."""
    import storage

    n_blocks = int(gib * 2**30 / (256 * 64 * 4))
    try:
        coll = storage.open_collection(root, name)
        if coll.n_blocks == n_blocks:
            return coll
    except FileNotFoundError:
        pass
    start = time.perf_counter()
    # a separate process, so that the generator does not count in this client's RSS
    subprocess.run([sys.executable, "-c", _MAKE_BIG, root, name, str(n_blocks), str(n_sub)], check=True)
    coll = storage.open_collection(root, name)
    print(f"built {coll.n_blocks} blocks of 256x64 float32: {coll.nbytes / 2**30:.2f} GiB raw, "
          f"{coll.nbytes_stored / 2**30:.2f} GiB on disk, in {time.perf_counter() - start:.0f} s", flush=True)
    return coll


def _dask_read_seconds(coll, client) -> float:
    """One plain dask.array read (and reduction) of the collection's Zarr data."""
    import dask.array as da
    import zarr

    array = zarr.open_array(f"{coll.url.rstrip('/')}/{coll.name}/data", mode="r")
    start = time.perf_counter()
    da.from_zarr(array).sum(dtype=np.float64).compute()
    return time.perf_counter() - start


def _io_run(coll, n_workers: int, profile: bool = False) -> tuple[float, float, object]:
    from distributed import get_task_stream

    from pipeline.distributed import cluster_collection

    with _cluster(n_workers) as client:
        client.run(lambda: None)
        read = _dask_read_seconds(coll, client)
        with get_task_stream(client) if profile else contextlib.nullcontext() as stream:
            start = time.perf_counter()
            result = cluster_collection(coll, rank=16, eps=0.2, client=client,
                                        run_id=f"io-{n_workers}w-{time.time_ns()}")
            whole = time.perf_counter() - start
        if profile:
            _print_task_profile(stream.data, n_workers)
    return read, whole, result


def _print_task_profile(records: list[dict], n_workers: int) -> None:
    """Per task kind (the stage in its key): tasks, compute seconds in all, longest task,
    and its window (first start to last stop) from the first task's start; the window
    times the workers against the compute shows how busy that kind kept them."""
    kinds: dict[str, list] = {}
    for rec in records:
        key = rec["key"] if isinstance(rec["key"], str) else str(rec["key"])
        kind = key.split("-")[1] if key.startswith("cmsvd-") else key.split("-")[0]
        starts = [s["start"] for s in rec["startstops"] if s["action"] == "compute"]
        stops = [s["stop"] for s in rec["startstops"] if s["action"] == "compute"]
        if starts:
            kinds.setdefault(kind, []).append((min(starts), max(stops), sum(b - a for a, b in zip(starts, stops))))
    origin = min(t[0] for ts in kinds.values() for t in ts)
    print(f"  task profile ({n_workers} workers): kind tasks compute longest window", flush=True)
    for kind, ts in sorted(kinds.items(), key=lambda kv: min(t[0] for t in kv[1])):
        first, last = min(t[0] for t in ts) - origin, max(t[1] for t in ts) - origin
        compute = sum(t[2] for t in ts)
        print(f"    {kind:>14} {len(ts):5d} {compute:7.2f} {max(t[2] for t in ts):6.3f} "
              f"{first:6.2f}-{last:6.2f} busy {compute / max((last - first) * n_workers, 1e-9):4.2f}", flush=True)


def io(root: str, args) -> None:
    coll = _big_collection(root, args.io_gib, "io")
    read, whole, result = _io_run(coll, args.workers)
    print(f"I/O floor, {coll.nbytes / 2**30:.2f} GiB of 256 x 64 float32, {args.workers} workers: dask.array read "
          f"{read:.1f} s, whole run {whole:.1f} s = {whole / read:.1f}x the read (target <= 4); "
          f"{result.n_groups} groups, CR {result.compression_ratio:.2f}, guarantee holds: {_guarantee_holds(result, 0.2)}")
    print("  stage seconds: " + ", ".join(f"{s} {t:.2f}" for s, t in result.timings.items()), flush=True)


def small(root: str, args) -> None:
    coll = _big_collection(root, 0.25, "small", n_sub=1024)
    from pipeline.distributed import cluster_collection

    with _cluster(args.workers) as client:
        client.run(lambda: None)
        for _ in range(2):
            start = time.perf_counter()
            result = cluster_collection(coll, rank=16, eps=0.2, client=client, run_id=f"small-{time.time_ns()}")
            print(f"many small groups, {coll.n_blocks} of 256 x 64 float32 around 1,024 subspaces, {args.workers} "
                  f"workers: whole run {time.perf_counter() - start:.1f} s, {result.n_groups} groups, CR "
                  f"{result.compression_ratio:.3f}, guarantee holds: {_guarantee_holds(result, 0.2)}; stages "
                  + ", ".join(f"{s} {t:.2f}" for s, t in result.timings.items()), flush=True)


def scaling(root: str, args) -> None:
    coll = _big_collection(root, args.io_gib, "io")
    base = None
    for n in args.scaling_workers:
        read, whole, result = _io_run(coll, n, profile=args.profile)
        base = base or (n, whole)
        print(f"{n:3d} workers: whole run {whole:6.1f} s (read {read:5.1f} s, {whole / read:4.1f}x), speed-up over "
              f"{base[0]} workers {base[1] / whole:4.2f}x; {result.n_groups} groups, "
              f"CR {result.compression_ratio:.2f}, guarantee holds: {_guarantee_holds(result, 0.2)}; stages "
              + ", ".join(f"{s} {t:.1f}" for s, t in result.timings.items()), flush=True)


def blas(root: str, args) -> None:
    """The quality run in fresh processes, default BLAS threads and one thread."""
    figures = {}
    for label, extra in (("default", {}), ("OPENBLAS_NUM_THREADS=1", {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})):
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
        out = subprocess.run([sys.executable, __file__, "--parts", "_timings", "--root", root,
                              "--workers", str(args.workers)], env={**env, **extra}, check=True,
                             capture_output=True, text=True).stdout
        figures[label] = json.loads(out.strip().splitlines()[-1])
        print(f"{label:>24}: total {figures[label]['total']:.2f} s, merge {figures[label]['merge']:.2f} s, "
              f"partition {figures[label]['partition']:.2f} s, local {figures[label]['local']:.2f} s", flush=True)
    a, b = figures["default"], figures["OPENBLAS_NUM_THREADS=1"]
    print(f"default / one thread: total {a['total'] / b['total']:.2f}, merge {a['merge'] / max(b['merge'], 1e-9):.2f} "
          "(target within 1.2)")


def _timings(root: str, args) -> None:
    from pipeline.distributed import cluster_collection

    coll = _store(root, "uos16k", _narrow(16000))
    with _cluster(args.workers) as client:
        start = time.perf_counter()
        result = cluster_collection(coll, rank=16, eps=0.05, client=client, run_id=f"blas-{time.time_ns()}")
        total = time.perf_counter() - start
    print(json.dumps({"total": total, **result.timings}))


def memory_and_parallelism(root: str, args, parts: set[str]) -> None:
    from pipeline.distributed import ClusteringRun, cluster_collection

    coll = _big_collection(root, args.memory_gib, "big")
    if "parallel" in parts:
        scan = {}
        for n_workers in (1, 2):
            with _cluster(n_workers) as client:
                run = ClusteringRun(coll, rank=16, eps=0.2, client=client, run_id=f"scan-{n_workers}w-{time.time_ns()}")
                start = time.perf_counter()
                run.scan()
                scan[n_workers] = time.perf_counter() - start
            print(f"scan with {n_workers} worker(s): {scan[n_workers]:.1f} s")
        print(f"parallelism: scan speed-up 2 vs 1 workers = {scan[1] / scan[2]:.2f}; target >= 1.6")
    if "memory" in parts:
        with _cluster(2, memory_limit="1GiB") as client:
            pids_before = sorted(client.run(os.getpid).values())
            start = time.perf_counter()
            result = cluster_collection(coll, rank=16, eps=0.2, client=client, run_id=f"memory-{time.time_ns()}")
            elapsed = time.perf_counter() - start
            pids_after = sorted(client.run(os.getpid).values())
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"memory: {coll.nbytes_stored / 2**30:.2f} GiB collection, {elapsed:.0f} s, {result.n_groups} groups, "
              f"CR {result.compression_ratio:.2f}, max stored error {result.max_error:.6f} (eps 0.2), "
              f"all <= eps: {_guarantee_holds(result, 0.2)}")
        print(f"  workers restarted or killed: {'none' if pids_before == pids_after else 'YES'}; "
              f"client peak RSS {peak_mib:.0f} MiB; target < 1024 MiB")
        print("  stage seconds: " + ", ".join(f"{s} {t:.1f}" for s, t in result.timings.items()))


PARTS = {"quality": quality, "singles": singles, "copies": copies, "linear": linear, "io": io, "small": small, "blas": blas, "scaling": scaling,
         "_timings": _timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["quality", "singles", "linear", "io", "blas"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--safetensors", default=None, help="a model file for the single-column regime")
    parser.add_argument("--io-gib", type=float, default=0.5)
    parser.add_argument("--memory-gib", type=float, default=3.3)
    parser.add_argument("--scaling-workers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--profile", action="store_true", help="scaling: print each task kind's profile")
    parser.add_argument("--root", default=None, help="keep the stores here (default: a temporary folder)")
    args = parser.parse_args()
    parts = set(args.parts)
    root = args.root or tempfile.mkdtemp(prefix="cmsvd-bench-")
    try:
        for name in args.parts:
            if name in PARTS:
                PARTS[name](root, args)
        if "parallel" in parts:
            memory_and_parallelism(root, args, {"parallel"})
        if "memory" in parts:
            if parts == {"memory"}:
                memory_and_parallelism(root, args, parts)
            else:  # a fresh process: the client's peak RSS must not include the other parts
                subprocess.run([sys.executable, __file__, "--parts", "memory", "--memory-gib", str(args.memory_gib),
                                "--root", root], check=True)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
