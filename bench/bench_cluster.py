"""Sequential clustering benchmark: time, groups, compression and worst exact error.

Three regimes, every method and candidate order (synthetic data from
``pipeline.synthetic.union_of_subspaces``):

* ``wide``: K = 1,000 blocks of 256 x 52, rank-8 subspaces of 50 blocks, noise 0.02; r = 20, eps = 0.05;
* ``narrow``: K = 16,000 blocks of 128 x 4, rank-3 subspaces of 40 blocks, noise 0.05 (near eps); r = 16, eps = 0.05;
* ``single``: K = 28,000 columns of 384, rank-8 subspaces of 200 columns, noise 0.1; r = 32, eps = 0.2.
  With ``--safetensors PATH`` the single columns are a real model's 2-D weights cut into
  columns of length 384 (every tensor with an axis of 384, the vocabulary table aside).

    python bench/bench_cluster.py [--regimes wide narrow single] [--scale 1.0] [--repeat 3]
        [--reference DIR] [--reference-timeout 300] [--burn] [--safetensors PATH] [--cpu-time]
    python bench/bench_cluster.py --profile ...  # seconds per step of every row (cProfile, cumulative)
    python bench/bench_cluster.py --matrix ...   # each row in the default env and with OPENBLAS_NUM_THREADS=1,
                                                 # idle and with a burner, back to back (the paper idle only,
                                                 # unless --reference-burn)

``--reference DIR`` is a checkout of the paper's published code (M. Shamrai,
concatenated-matrix-svd); its clustering classes are imported from ``DIR/src/clustering``
and timed on the same blocks in the same run (a run past ``--reference-timeout`` is stopped
and reported as a lower bound). ``--burn`` runs a CPU-burning process beside the timings.
Prints one row per (regime, method, order). Not a test: figures only.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib
import json
import multiprocessing as mp
import os
import pstats
import statistics
import subprocess
import sys
import time
import types

import numpy as np

import pipeline
from pipeline.layout import as_layout
from pipeline.metrics import summarize
from pipeline.synthetic import union_of_subspaces

COMBOS = [(m, o) for m in ("approximate", "residuals", "max_norm") for o in ("residual", "norm")]
REGIMES = {
    "wide": dict(gen=dict(n_blocks=1000, rows=256, width=52, blocks_per_subspace=50, subspace_rank=8, noise=0.02), rank=20, eps=0.05),
    "narrow": dict(gen=dict(n_blocks=16000, rows=128, width=4, blocks_per_subspace=40, subspace_rank=3, noise=0.05), rank=16, eps=0.05),
    "single": dict(gen=dict(n_blocks=28000, rows=384, width=1, blocks_per_subspace=200, subspace_rank=8, noise=0.1), rank=32, eps=0.2),
}
# The paper's classes, by method; its max_norm class has only the norm order.
PAPER = {"approximate": ("approximate", "ApproximateClusterAlgorithm"), "residuals": ("residuals", "ResidualsClusterAlgorithm"),
         "max_norm": ("max_norm", "MaxNormClusterAlgorithm")}
PAPER_ORDERS = {"approximate": ("residual", "norm"), "residuals": ("residual", "norm"), "max_norm": ("norm",)}


def model_columns(path: str, rows: int = 384, largest: int = 4096):
    """A model's 2-D float weights cut into columns of length ``rows`` (a tensor of more
    than ``largest`` such vectors, the vocabulary table, is left out)."""
    from safetensors.numpy import load_file

    columns = []
    for name, tensor in sorted(load_file(path).items()):
        if tensor.ndim != 2 or not np.issubdtype(tensor.dtype, np.floating):
            continue
        matrix = tensor if tensor.shape[0] == rows else tensor.T if tensor.shape[1] == rows else None
        if matrix is not None and matrix.shape[1] <= largest:
            columns.append(np.asarray(matrix, dtype=np.float64))
    data = np.hstack(columns)
    return as_layout(data, np.arange(data.shape[1] + 1))


def make_layout(regime: str, scale: float, safetensors: str | None):
    spec = REGIMES[regime]
    if regime == "single" and safetensors:
        return model_columns(safetensors), spec["rank"], spec["eps"], "model"
    gen = dict(spec["gen"], n_blocks=max(2, int(spec["gen"]["n_blocks"] * scale)), seed=0)
    return union_of_subspaces(**gen)[0], spec["rank"], spec["eps"], "synthetic"


def _paper_module(reference: str, method: str):
    """Import one of the paper's clustering modules without its package __init__ (which
    pulls in sklearn and hdbscan for baselines the benchmark does not use)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    if "paper_clustering" not in sys.modules:
        package = types.ModuleType("paper_clustering")
        package.__path__ = [os.path.join(reference, "src", "clustering")]
        sys.modules["paper_clustering"] = package
    return importlib.import_module("paper_clustering." + PAPER[method][0])


# The clock both codes are timed with: wall time, or CPU time with --cpu-time (with one BLAS
# thread, the time the run itself used, so that other jobs on a shared machine move it less).
CLOCK = time.perf_counter


def _paper_run(reference, method, order, rank, eps, blocks, queue):
    cls = getattr(_paper_module(reference, method), PAPER[method][1])
    algo = cls(eps=eps, r_target=rank, patience=10, sorting_strategy=order)
    with _one_blas_thread_for_cpu_time():
        start = CLOCK()
        algo.fit(blocks)
        elapsed = CLOCK() - start
    queue.put((elapsed, np.asarray(algo.labels_).tolist()))


def _one_blas_thread_for_cpu_time():
    """With --cpu-time, the paper's code runs with one BLAS thread whatever the environment:
    CPU time sums every thread, and a multithreaded OpenBLAS spinning on the paper's
    256 x 52 QRs and 77 x 77 eigen-solves counts several times its work (7.8 CPU seconds
    instead of 1.3 on the wide regime, approximate/residual, 2 cores). The project's greedy
    bounds its own threads to one. Wall-time runs keep the environment's threads."""
    import contextlib

    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas") if CLOCK is time.process_time else contextlib.nullcontext()


def time_paper(reference, method, order, rank, eps, layout, timeout):
    """Seconds and groups of the paper's code, in a child process stopped after ``timeout``
    (then the time is reported as a lower bound and the groups are unknown)."""
    blocks = [np.ascontiguousarray(layout.block(i)) for i in range(layout.n_blocks)]
    queue = mp.get_context("fork").Queue()
    child = mp.get_context("fork").Process(target=_paper_run, args=(reference, method, order, rank, eps, blocks, queue))
    child.start()
    try:
        elapsed, labels = queue.get(timeout=timeout)
    except Exception:  # queue.Empty: past the timeout
        child.terminate()
        child.join()
        return float(timeout), None
    child.join()
    labels = np.asarray(labels)
    return elapsed, [np.flatnonzero(labels == g).tolist() for g in np.unique(labels)]


def _burn() -> None:
    """One core's worth of BLAS and Python work, like another tenant's job: one BLAS
    thread whatever the environment, so every environment meets the same competitor."""
    from threadpoolctl import threadpool_limits

    x = np.random.default_rng(0).standard_normal((400, 400))
    with threadpool_limits(limits=1):
        while True:
            x = np.tanh(x @ x.T / 400.0)


def start_burner():
    burner = mp.get_context("fork").Process(target=_burn, daemon=True)
    burner.start()
    return burner


def time_project(layout, method, order, rank, eps, repeat):
    """Median time of ``repeat`` runs, each from a collected heap: the previous row's
    groups (up to K lists) must not be left for this row's garbage collections to walk."""
    times, result = [], None
    for _ in range(repeat):
        result = None
        gc.collect()
        start = CLOCK()
        result = pipeline.cluster(layout, rank=rank, eps=eps, method=method, order=order)
        times.append(CLOCK() - start)
    return statistics.median(times), result.clusters


HEADER = (f"{'regime':>7} {'K':>6} {'method':>12} {'order':>9} {'time_s':>8} {'groups':>7} {'CR':>6} {'CR_adapt':>8}"
          f" {'max_err':>8} {'viol':>5} | {'paper_s':>8} {'p_groups':>8} {'p_CR':>6} {'p_viol':>6} {'speedup':>8}")


def run(args) -> list[dict]:
    burner = start_burner() if args.burn else None
    rows = []
    try:
        clock = "CPU" if CLOCK is time.process_time else "wall"
        paper_threads = "1 (forced for CPU time)" if CLOCK is time.process_time else "as the environment"
        print(f"# BLAS threads: {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}, paper's BLAS threads: {paper_threads},"
              f" burner: {'on' if burner else 'off'}, {clock} seconds")
        print(HEADER, flush=True)
        for regime in args.regimes:
            layout, rank, eps, source = make_layout(regime, args.scale, args.safetensors)
            for method, order in args.combos:
                clusters = None  # freed before the timing (see time_project)
                elapsed, clusters = time_project(layout, method, order, rank, eps, args.repeat)
                s = summarize(layout, clusters, rank=rank, eps=eps)
                row = dict(regime=regime, source=source, K=layout.n_blocks, method=method, order=order, time=elapsed,
                           groups=s.n_groups, cr=s.compression_ratio, cr_adapt=s.compression_ratio_adaptive,
                           max_err=s.max_error, violations=s.violations, threads=os.environ.get("OPENBLAS_NUM_THREADS", "default"),
                           burn=bool(burner))
                if args.reference and order in PAPER_ORDERS[method]:
                    p_time, p_clusters = time_paper(args.reference, method, order, rank, eps, layout, args.reference_timeout)
                    row.update(paper_time=p_time, paper_done=p_clusters is not None)
                    if p_clusters is not None:
                        p = summarize(layout, p_clusters, rank=rank, eps=eps)
                        row.update(paper_groups=p.n_groups, paper_cr=p.compression_ratio, paper_violations=p.violations)
                rows.append(row)
                print(format_row(row), flush=True)
    finally:
        if burner is not None:
            burner.terminate()
            burner.join()
    return rows


def format_row(row: dict) -> str:
    text = (f"{row['regime']:>7} {row['K']:>6} {row['method']:>12} {row['order']:>9} {row['time']:>8.3f} {row['groups']:>7}"
            f" {row['cr']:>6.2f} {row['cr_adapt']:>8.2f} {row['max_err']:>8.4f} {row['violations']:>5} |")
    if "paper_time" not in row:
        return text + f" {'-':>8} {'-':>8} {'-':>6} {'-':>6} {'-':>8}"
    bound = "" if row["paper_done"] else ">"
    paper = f"{bound}{row['paper_time']:.2f}"
    speed = f"{bound}{row['paper_time'] / row['time']:.1f}x"
    if not row["paper_done"] and CLOCK is time.process_time:  # the timeout is wall time: no CPU bound
        paper, speed = f">{row['paper_time']:.0f}wall", "?"
    if not row["paper_done"]:
        return text + f" {paper:>8} {'?':>8} {'?':>6} {'?':>6} {speed:>8}"
    return text + (f" {paper:>8} {row['paper_groups']:>8} {row['paper_cr']:>6.2f} {row['paper_violations']:>6} {speed:>8}")


# Steps of the greedy: each the cumulative time of the functions named ("module:qualname";
# a "|" lists alternatives, the first that exists counts, so older versions profile too).
STEPS = {
    "seed": ["greedy:_seed_state|bounds:make_bound"],
    "order": ["greedy:_order_candidates", "_greedy_order:CandidateOrder.prefix"],
    "extension": ["bounds:extend_basis"],
    "qr": ["bounds:_full_range_qr"],  # the QR route of extensions and seeds (inside extension and seed)
    "eigen": ["bounds:_eigh|numpy.linalg._linalg:eigh"],
    "bound": ["bounds:ResidualBound._proposal_error", "bounds:GramSketch._proposal_error", "greedy:_grow_weyl"],
    # the lazy sketch (approximate on narrow blocks): its cheap test, its eigenvalue test, and
    # its folds of the pending blocks (which include their extension and eigen-solve)
    "cheap": ["bounds:LazySketch.gains", "bounds:LazySketch.cheap_run", "bounds:LazySketch.accept"],
    "exact": ["bounds:LazySketch.try_exact"],
    "fold": ["bounds:LazySketch.settled"],
    "commit": ["bounds:ResidualBound._commit", "bounds:GramSketch._commit"],
    "screen": ["bounds:surely_exceeds"],
    "singletons": ["greedy:_singleton_energies"],
}


def _resolve(name: str):
    """The function named "module:qualname" (module relative to pipeline), or None."""
    for option in name.split("|"):
        module, qualname = option.split(":")
        obj = importlib.import_module(module if "." in module else "pipeline." + module)
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    return None


def _code_key(func) -> tuple:
    func = getattr(func, "__func__", func)  # a method
    code = getattr(func, "_implementation", func).__code__  # numpy's array-function dispatchers wrap one
    return code.co_filename, code.co_firstlineno, code.co_name


def profile_steps(layout, method, order, rank, eps) -> dict[str, float]:
    """CPU seconds per step of one clustering under cProfile: cumulative times, so a step
    includes what it calls (``order`` includes the exact residuals the grow loop asks
    for; ``extension`` includes its SVD). CPU time, not wall time, so that other jobs on a
    shared machine move the figures less; profiling inflates the Python-heavy steps.
    ``bounds``: the first read of the result's bounds, after the clustering (the spectra of
    the blocks left alone after patience, which ``cluster`` defers; not in ``total``)."""
    profiler = cProfile.Profile(time.process_time)
    start = time.process_time()
    result = profiler.runcall(pipeline.cluster, layout, rank=rank, eps=eps, method=method, order=order)
    wall = time.process_time() - start
    start = time.process_time()
    _ = result.bounds
    steps = {"total": wall, "bounds": time.process_time() - start}
    stats = pstats.Stats(profiler).stats
    for step, names in STEPS.items():
        keys = [_code_key(f) for f in map(_resolve, names) if f is not None]
        steps[step] = sum(stats[k][3] for k in keys if k in stats)
    return steps


def run_profile(args) -> None:
    print(f"{'regime':>7} {'method':>12} {'order':>9} " + " ".join(f"{k:>10}" for k in ["total", "bounds", *STEPS]),
          flush=True)
    for regime in args.regimes:
        layout, rank, eps, _ = make_layout(regime, args.scale, args.safetensors)
        for method, order in args.combos:
            pipeline.cluster(layout, rank=rank, eps=eps, method=method, order=order)  # warm caches
            steps = profile_steps(layout, method, order, rank, eps)
            print(f"{regime:>7} {method:>12} {order:>9} " + " ".join(f"{v:>10.3f}" for v in steps.values()), flush=True)


def _paper_cell(row: dict) -> str:
    if "paper_time" not in row:
        return "-"
    return ("" if row["paper_done"] else ">") + f"{row['paper_time']:.2f}"


def _without_reference(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--reference":
            skip = True
        elif not a.startswith("--reference="):
            out.append(a)
    return out


def matrix(argv: list[str], regimes: list[str], combos: list[tuple[str, str]]) -> None:
    """Rerun this script in fresh processes, one row at a time, in four environments back
    to back (default BLAS threads and one thread, each idle and with a burner), so that
    the ratios compare runs minutes, not a whole table, apart; then one table."""
    argv = [a for a in argv if a != "--matrix"]  # the paper is timed idle only, unless --reference-burn
    argv = _without_option(_without_option(argv, "--regimes"), "--methods")
    envs = [(threads, burn) for threads in ("default", "1") for burn in (False, True)]
    print(f"{'regime':>7} {'method':>12} {'order':>9} " + " ".join(f"{t + ('+burn' if b else ''):>13}" for t, b in envs)
          + " " + " ".join(f"{'p:' + t + ('+burn' if b else ''):>15}" for t, b in envs) + f" {'ratio':>6} {'ratio_burn':>10}",
          flush=True)
    for regime in regimes:
        for method, order in combos:
            cells = {}
            for threads, burn in envs:
                env = dict(os.environ)
                env.pop("OPENBLAS_NUM_THREADS", None)
                if threads == "1":
                    env["OPENBLAS_NUM_THREADS"] = "1"
                out = f"/tmp/bench_cluster_{os.getpid()}.json"
                args = _without_reference(argv) if burn and "--reference-burn" not in argv else argv
                cmd = [sys.executable, __file__, *args, "--regimes", regime, "--methods", f"{method}/{order}", "--json", out]
                subprocess.run(cmd + (["--burn"] if burn else []), env=env, check=True, stdout=subprocess.DEVNULL)
                with open(out) as f:
                    cells[(threads, burn)] = json.load(f)[0]
                os.remove(out)
            times = " ".join(f"{cells[e]['time']:>13.3f}" for e in envs)
            paper = " ".join(f"{_paper_cell(cells[e]):>15}" for e in envs)
            ratio = cells[("default", False)]["time"] / cells[("1", False)]["time"]
            ratio_burn = cells[("default", True)]["time"] / cells[("1", True)]["time"]
            print(f"{regime:>7} {method:>12} {order:>9} {times} {paper} {ratio:>6.2f} {ratio_burn:>10.2f}", flush=True)


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and the values that follow it."""
    out, skipping = [], False
    for a in argv:
        if a == option:
            skipping = True
        elif skipping and a.startswith("--"):
            skipping = False
            out.append(a)
        elif not skipping:
            out.append(a)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each regime's K (synthetic data)")
    parser.add_argument("--methods", nargs="+", default=None, help="subset like approximate/residual")
    parser.add_argument("--repeat", type=int, default=3, help="project timings per row (median reported)")
    parser.add_argument("--reference", default=None, help="checkout of the paper's code, timed as the baseline")
    parser.add_argument("--reference-timeout", type=float, default=300.0, help="seconds before a paper run is stopped")
    parser.add_argument("--burn", action="store_true", help="run a CPU-burning process beside the timings")
    parser.add_argument("--safetensors", default=None, help="single-column regime from a model's weights")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--matrix", action="store_true", help="default env and one BLAS thread, idle and burning")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time both codes in CPU seconds, the paper's with one BLAS thread (the greedy's always is)")
    parser.add_argument("--profile", action="store_true", help="CPU seconds per step of every row instead of the table")
    parser.add_argument("--reference-burn", action="store_true", help="with --matrix: time the paper with a burner too")
    args = parser.parse_args()
    args.combos = COMBOS if not args.methods else [tuple(s.split("/")) for s in args.methods]
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if args.matrix:
        matrix(sys.argv[1:], args.regimes, args.combos)
        return
    if args.profile:
        run_profile(args)
        return
    rows = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
