"""Sequential clustering benchmark: time, groups, compression and worst exact error.

Union-of-subspaces collection (m=128, n=4, rank-3 subspaces of about 100 blocks each,
noise near the eps floor), r=16, eps=0.05, for every method and candidate order.

    python bench/bench_cluster.py [--sizes 4000 16000] [--noise 0.05]

Prints one table row per (K, method, order). Not a test: figures only.
"""

from __future__ import annotations

import argparse
import time

import pipeline
from pipeline.metrics import summarize
from pipeline.synthetic import union_of_subspaces

COMBOS = [(m, o) for m in ("approximate", "residuals", "max_norm") for o in ("residual", "norm")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--methods", nargs="+", default=None, help="subset like approximate/residual")
    args = parser.parse_args()
    combos = COMBOS if not args.methods else [tuple(s.split("/")) for s in args.methods]
    print(f"{'K':>6} {'method':>12} {'order':>9} {'time_s':>8} {'groups':>7} {'CR':>6} {'CR_adapt':>8} {'max_err':>8} {'violations':>10}")
    for k in args.sizes:
        layout, _ = union_of_subspaces(k, rows=128, width=4, blocks_per_subspace=100, noise=args.noise, seed=0)
        for method, order in combos:
            start = time.perf_counter()
            result = pipeline.cluster(layout, rank=args.rank, eps=args.eps, method=method, order=order)
            elapsed = time.perf_counter() - start
            s = summarize(layout, result.clusters, rank=args.rank, eps=args.eps)
            print(
                f"{k:>6} {method:>12} {order:>9} {elapsed:>8.2f} {s.n_groups:>7} {s.compression_ratio:>6.2f}"
                f" {s.compression_ratio_adaptive:>8.2f} {s.max_error:>8.4f} {s.violations:>10}",
                flush=True,
            )


if __name__ == "__main__":
    main()
