"""Benchmark of the rehearsal-buffer selection (k-means, then the items nearest each centre).

1. Side by side on the same data in one run: :func:`medcoss_monai.buffer.kmeans_sample` against
   scikit-learn's ``KMeans`` with default settings and faiss's ``Kmeans`` doing the same selection (fit, distance of every
   item to its centre, the same equal-share nearest-item choice); N = 20,000, width 768, 200 clusters.
2. Scaling of ``kmeans_sample`` to N = 10k, 100k, 1M at width 768 with ``k = round(0.01 N)``: time and
   peak resident memory, each size in its own process so the peaks do not mix. "Selection working
   memory" is the peak minus the resident size once the data exist (imports + input).

3. ``--paper``: the paper's sizes, N = 200,000 (k = 2,000) and N = 1,000,000 (k = 10,000) at width 768,
   ``kmeans_sample`` beside scikit-learn ``KMeans(init="k-means++", n_init=1)`` and faiss ``Kmeans``
   (20 iterations, 256 points per centre, as ``kmeans_sample``) at N = 200,000: time,
   peak resident memory and known clusters kept by the 5% buffer, every run in its own process.

The data are synthetic, on purpose: a mixture of isotropic Gaussians (as many components as
clusters, equally likely; centres drawn from N(0, I), noise N(0, 0.25 I) around them) so that real
clusters exist and the selections can be checked for covering them. Figures depend on the machine
(cores, BLAS).

Usage::

    python benchmarks/bench_buffer_selection.py [--max_n 1000000] [--skip_sklearn] [--skip_scaling]
    python benchmarks/bench_buffer_selection.py --paper [--paper_sizes 200000:2000,1000000:10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def mixture(n: int, dim: int, components: int, seed: int = 0, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian mixture, float32 (n, dim), built chunk by chunk so no float64 copy of it ever exists.

    Returns:
        (points, component of each point).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((components, dim), dtype=np.float32)
    comp = rng.integers(0, components, n)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x[s:e] = rng.standard_normal((e - s, dim), dtype=np.float32)
        x[s:e] *= 0.5
        x[s:e] += centres[comp[s:e]]
    return x, comp


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc; the peak where that is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mib()


def faiss_select(x: np.ndarray, k: int, m: int) -> np.ndarray:
    """faiss ``Kmeans`` (20 iterations, 256 points per centre, as ``kmeans_sample``), then the same selection."""
    import faiss

    from medcoss_monai.buffer import select_nearest

    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=0, max_points_per_centroid=256)
    km.train(x)
    d2, labels = km.index.search(x, 1)
    return select_nearest(labels[:, 0], np.sqrt(np.maximum(d2[:, 0], 0.0)), m, k)


def compare(n: int, dim: int, clusters: int, buffer_ratio: float) -> dict:
    """kmeans_sample against scikit-learn KMeans (defaults) and faiss Kmeans doing the same selection on the same data."""
    from sklearn.cluster import KMeans

    from medcoss_monai.buffer import buffer_size, kmeans_sample, select_nearest

    x, comp = mixture(n, dim, clusters)
    # warm-up on a little data: thread pools and lazy imports are not what is measured
    kmeans_sample(x[:1000], cluster_ratio=0.01)
    KMeans(n_clusters=2, random_state=0).fit(x[:1000])
    faiss_select(x[:1000], 2, 10)
    cluster_ratio = clusters / n
    m = buffer_size(n, buffer_ratio)

    t0 = time.perf_counter()
    ours = kmeans_sample(x, cluster_ratio=cluster_ratio, buffer_ratio=buffer_ratio, seed=0)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    km = KMeans(n_clusters=clusters, random_state=0).fit(x)  # scikit-learn defaults otherwise
    dist = np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1)
    theirs = select_nearest(km.labels_, dist, m, clusters)
    t_sk = time.perf_counter() - t0

    t0 = time.perf_counter()
    faiss_idx = faiss_select(x, clusters, m)
    t_faiss = time.perf_counter() - t0

    return {
        "n": n,
        "dim": dim,
        "clusters": clusters,
        "buffer": m,
        "t_ours": t_ours,
        "t_sklearn": t_sk,
        "t_faiss": t_faiss,
        "speedup": t_sk / t_ours,
        "components_ours": int(np.unique(comp[ours]).size),
        "components_sklearn": int(np.unique(comp[theirs]).size),
        "components_faiss": int(np.unique(comp[faiss_idx]).size),
        "sklearn_iters": int(km.n_iter_),
    }


def scale_worker(n: int, dim: int, buffer_ratio: float) -> dict:
    """One scaling point, run in a fresh process: generate, select, report time and memory."""
    from medcoss_monai.buffer import kmeans_sample, n_clusters_for

    k = n_clusters_for(n, 0.01)
    rss_base = rss_mib()  # interpreter + numpy/torch/faiss imports
    t0 = time.perf_counter()
    x, comp = mixture(n, dim, k, seed=1)
    t_gen = time.perf_counter() - t0
    kmeans_sample(x[:1000], cluster_ratio=0.01)  # warm-up: thread pools, lazy imports
    rss_data = rss_mib()
    t0 = time.perf_counter()
    idx = kmeans_sample(x, cluster_ratio=0.01, buffer_ratio=buffer_ratio, seed=0)
    t_sel = time.perf_counter() - t0
    return {
        "n": n,
        "k": k,
        "buffer": int(len(idx)),
        "unique": bool(len(np.unique(idx)) == len(idx)),
        "components": int(np.unique(comp[idx]).size),
        "t_gen": t_gen,
        "t_select": t_sel,
        "input_mib": x.nbytes / 2**20,
        "rss_base_mib": rss_base,
        "rss_after_data_mib": rss_data,
        "peak_rss_mib": peak_rss_mib(),
    }


def paper_worker(n: int, k: int, method: str, dim: int, buffer_ratio: float) -> dict:
    """One paper-size run in a fresh process: generate, cluster and select with ``method``, report time and memory."""
    from medcoss_monai.buffer import buffer_size, kmeans_sample, select_nearest

    rss_base = rss_mib()
    x, comp = mixture(n, dim, k, seed=1)
    m = buffer_size(n, buffer_ratio)
    if method == "sklearn":
        from sklearn.cluster import KMeans

        KMeans(n_clusters=2, n_init=1, random_state=0).fit(x[:1000])  # warm-up: thread pools, lazy imports
        rss_data = rss_mib()
        t0 = time.perf_counter()
        km = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=0).fit(x)
        dist = np.empty(n, dtype=np.float32)
        for s in range(0, n, 65536):  # chunked: no second N x D array
            dist[s : s + 65536] = np.linalg.norm(x[s : s + 65536] - km.cluster_centers_[km.labels_[s : s + 65536]], axis=1)
        idx = select_nearest(km.labels_, dist, m, k)
        t_sel = time.perf_counter() - t0
        extra = {"iterations": int(km.n_iter_)}
    elif method == "faiss":
        faiss_select(x[:1000], 2, 10)  # warm-up
        rss_data = rss_mib()
        t0 = time.perf_counter()
        idx = faiss_select(x, k, m)
        t_sel = time.perf_counter() - t0
        extra = {}
    else:
        kmeans_sample(x[:1000], cluster_ratio=0.01)  # warm-up
        rss_data = rss_mib()
        t0 = time.perf_counter()
        idx = kmeans_sample(x, cluster_ratio=k / n, buffer_ratio=buffer_ratio, seed=0)
        t_sel = time.perf_counter() - t0
        extra = {}
    return {
        "n": n,
        "k": k,
        "method": method,
        "buffer": int(len(idx)),
        "kept": int(np.unique(comp[idx]).size),
        "t_select": t_sel,
        "input_mib": x.nbytes / 2**20,
        "rss_base_mib": rss_base,
        "rss_after_data_mib": rss_data,
        "peak_rss_mib": peak_rss_mib(),
        **extra,
    }


def run_paper(sizes: list[tuple[int, int]], sklearn_n: int, dim: int, buffer_ratio: float) -> None:
    """The paper-size table: ``kmeans_sample`` at every size, scikit-learn and faiss at ``sklearn_n``; one process per run."""
    print(f"## paper sizes, width {dim}, buffer = round({buffer_ratio} N); each run in its own process\n")
    print("| N | k | method | time (s) | input (MiB) | peak RSS (MiB) | selection working memory (MiB) | known clusters kept |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |", flush=True)
    results = {}
    runs = [(n, k, "ours") for n, k in sizes] + [(n, k, m) for n, k in sizes if n == sklearn_n for m in ("faiss", "sklearn")]
    for n, k, method in runs:
        cmd = [sys.executable, __file__, "--_paper_worker", f"{n}:{k}:{method}", "--dim", str(dim), "--buffer_ratio", str(buffer_ratio)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = results[(n, method)] = json.loads(out.strip().splitlines()[-1])
        name = {
            "ours": "`kmeans_sample`",
            "faiss": "faiss `Kmeans` (20 iterations)",
            "sklearn": f"scikit-learn `KMeans` (k-means++, n_init=1, {r.get('iterations')} iterations)",
        }[method]
        print(
            f"| {n:,} | {k:,} | {name} | {r['t_select']:.1f} | {r['input_mib']:,.0f} | {r['peak_rss_mib']:,.0f} | "
            f"{r['peak_rss_mib'] - r['rss_after_data_mib']:,.0f} | {r['kept']:,} / {k:,} ({100 * r['kept'] / k:.1f}%) |",
            flush=True,
        )
    print()
    for n, k in sizes:
        ours, theirs, fa = results[(n, "ours")], results.get((n, "sklearn")), results.get((n, "faiss"))
        if fa is not None:
            print(f"N = {n:,}: faiss {fa['t_select']:.1f} s, known clusters kept {fa['kept']:,} against {ours['kept']:,}")
        if theirs is not None:
            print(
                f"N = {n:,}: {theirs['t_select'] / ours['t_select']:.1f}x faster than scikit-learn (aim >= 10x); "
                f"known clusters kept {ours['kept']:,} against {theirs['kept']:,} "
                f"({100 * (ours['kept'] - theirs['kept']) / k:+.1f} points of k; aim: no more than 1 point below)"
            )
        else:
            print(f"N = {n:,}: {ours['t_select']:.0f} s, {100 * ours['kept'] / k:.1f}% of known clusters kept (aims at N = 1,000,000: < 300 s, >= 95%)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="items of the side-by-side comparison")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--clusters", type=int, default=200)
    p.add_argument("--buffer_ratio", type=float, default=0.05)
    p.add_argument("--scales", default="10000,100000,1000000", help="comma-separated N of the scaling runs")
    p.add_argument("--max_n", type=int, default=1_000_000, help="skip scaling points above this N")
    p.add_argument("--skip_sklearn", action="store_true")
    p.add_argument("--skip_scaling", action="store_true")
    p.add_argument("--paper", action="store_true", help="only the paper-size table (N = 200k and 1M, scikit-learn at 200k)")
    p.add_argument("--paper_sizes", default="200000:2000,1000000:10000", help="comma-separated N:k of --paper")
    p.add_argument("--paper_sklearn_n", type=int, default=200000, help="the N of --paper at which scikit-learn runs too")
    p.add_argument("--_worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--_paper_worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        print(json.dumps(scale_worker(args._worker, args.dim, args.buffer_ratio)))
        return 0
    if args._paper_worker:
        n, k, method = args._paper_worker.split(":")
        print(json.dumps(paper_worker(int(n), int(k), method, args.dim, args.buffer_ratio)))
        return 0

    import faiss
    import sklearn
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), scikit-learn {sklearn.__version__}")
    print("data: mixture of isotropic Gaussians (as many components as clusters, equally likely; "
          "centres ~ N(0, I), noise ~ N(0, 0.25 I)), float32\n")

    if args.paper:
        sizes = [tuple(int(v) for v in s.split(":")) for s in args.paper_sizes.split(",") if s]
        run_paper(sizes, args.paper_sklearn_n, args.dim, args.buffer_ratio)
        return 0

    if not args.skip_sklearn:
        r = compare(args.n, args.dim, args.clusters, args.buffer_ratio)
        print(f"## selection, N={r['n']:,}, width {r['dim']}, {r['clusters']} clusters, buffer {r['buffer']}\n")
        print("| method | time (s) | mixture components in buffer |")
        print("| --- | ---: | ---: |")
        print(f"| `kmeans_sample` (at most 20 Lloyd updates) | {r['t_ours']:.2f} | {r['components_ours']} / {r['clusters']} |")
        print(f"| scikit-learn `KMeans()` defaults ({r['sklearn_iters']} iterations) + same selection | {r['t_sklearn']:.2f} | {r['components_sklearn']} / {r['clusters']} |")
        print(f"| faiss `Kmeans` (20 iterations) + same selection | {r['t_faiss']:.2f} | {r['components_faiss']} / {r['clusters']} |")
        print(f"\nspeed-up: {r['speedup']:.1f}x (goal >= 5x)\n", flush=True)

    if not args.skip_scaling:
        sizes = [int(s) for s in args.scales.split(",") if s and int(s) <= args.max_n]
        print(f"## scaling, width {args.dim}, k = round(0.01 N), buffer = round({args.buffer_ratio} N)\n")
        print("| N | k | buffer | select time (s) | input (MiB) | peak RSS (MiB) | selection working memory (MiB) | components in buffer |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
        for n in sizes:
            cmd = [sys.executable, __file__, "--_worker", str(n), "--dim", str(args.dim), "--buffer_ratio", str(args.buffer_ratio)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"| {r['n']:,} | {r['k']:,} | {r['buffer']:,} | {r['t_select']:.1f} | {r['input_mib']:,.0f} | "
                f"{r['peak_rss_mib']:,.0f} | {r['peak_rss_mib'] - r['rss_after_data_mib']:,.0f} | {r['components']:,} / {r['k']:,} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
