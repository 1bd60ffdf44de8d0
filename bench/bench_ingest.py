"""Ingest throughput and peak memory for a 2 GiB .npy stack.

Generates a (K, m, n) float32 stack (default 4096 x 512 x 256 = 2 GiB) in a temporary
directory with a memory-mapped writer running in a child process (so its pages do not
count against this process), ingests it into a local collection with
``storage.ingest_npy_stack`` and prints MB/s and this process's peak RSS.  The target is
a peak RSS under 500 MB.  Temporary files are deleted at the end.

Usage: python bench/bench_ingest.py [--k 4096 --m 512 --n 256] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate(path: str, k: int, m: int, n: int, seed: int = 0) -> None:
    """Write the stack with np.lib.format.open_memmap, a slab of blocks at a time."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(k, m, n))
    basis = rng.standard_normal((m, 32)).astype(np.float32)
    slab = max(1, (32 * 2**20) // (m * n * 4))
    for k0 in range(0, k, slab):
        k1 = min(k, k0 + slab)
        # low-rank signal plus noise: compressible like real data, not like pure noise
        coef = rng.standard_normal((k1 - k0, 32, n), dtype=np.float32)
        out[k0:k1] = np.einsum("mr,krn->kmn", basis, coef) + 0.01 * rng.standard_normal((k1 - k0, m, n), dtype=np.float32)
        out.flush()
    del out


class RssSampler(threading.Thread):
    """Samples /proc/self/statm (resident pages) every 10 ms; ru_maxrss is the backstop."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while not self.stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * self.page)
            time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--m", type=int, default=512)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--dir", default=None, help="where to put the temporary files")
    args = ap.parse_args()

    from storage import ingest_npy_stack

    tmp = tempfile.mkdtemp(prefix="cmsvd-bench-", dir=args.dir)
    try:
        src = os.path.join(tmp, "stack.npy")
        t0 = time.perf_counter()
        proc = mp.get_context("spawn").Process(target=generate, args=(src, args.k, args.m, args.n))
        proc.start()
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"generator failed with exit code {proc.exitcode}")
        size = os.path.getsize(src)
        print(f"generated {size / 2**30:.2f} GiB stack ({args.k} x {args.m} x {args.n} float32) in {time.perf_counter() - t0:.1f} s")

        sampler = RssSampler()
        sampler.start()
        t0 = time.perf_counter()
        coll = ingest_npy_stack(os.path.join(tmp, "store"), "bench", src)
        elapsed = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        stored = coll.nbytes_stored
        print(f"ingested {coll.n_blocks} blocks, {coll.n_columns} columns, chunks {coll.chunks}")
        print(f"ingest time      : {elapsed:.1f} s")
        print(f"throughput       : {size / 2**20 / elapsed:.0f} MB/s (MiB of input per second)")
        print(f"stored           : {stored / 2**20:.0f} MiB ({size / stored:.2f}x smaller than the .npy)")
        print(f"peak RSS sampled : {sampler.peak / 2**20:.0f} MiB")
        print(f"peak RSS (ru_maxrss, whole process life): {maxrss / 2**20:.0f} MiB  target < 500 MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
