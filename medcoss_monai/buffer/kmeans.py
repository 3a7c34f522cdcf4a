"""k-means for the rehearsal buffer: greedy k-means++ seeds at every k, refined by Lloyd's iterations.

- seeding runs on a seeded random subsample of 16 rows per centre. Each new seed is the best (largest
  drop of the total squared distance) of 32 candidates drawn with probability ~ D^2. Up to 31 centres
  this runs over the whole subsample, as scikit-learn's greedy k-means++. For more, k sequential passes
  over it would cost more than the clustering, so the rows are split into ``k / 16`` coarse groups and
  each row joins the candidate pools of its two nearest groups: candidates are drawn and scored within
  a pool, the pool with the best candidate gives the next seed (pools are re-scored lazily, when their
  rows got nearer a seed), and the seed updates the distances of the rows of both its pools, so a
  cluster cut by a group border does not receive a second seed.
- Lloyd's iterations run on a seeded random subsample (at most ``max_points_per_centroid * k`` and
  ``max_train_points`` rows) and stop once at most ``tol`` of its rows change cluster.
- every item is then assigned exactly to its nearest centre, block by block, so no ``N x k`` distance
  matrix is ever built. Blocks are float32 torch products, one single-threaded worker per core.

faiss's ``Kmeans`` doing the same selection is about as fast but misses clusters: at N = 200,000 with
2,000 known clusters (5 % kept, one process, 2 cores) it took 15.7 s and kept 1,553 of the clusters,
this code 16.5 s and 1,999 (``benchmarks/bench_buffer_selection.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch
from monai.utils import optional_import

threadpool_limits, has_threadpoolctl = optional_import("threadpoolctl", name="threadpool_limits")

__all__ = ["kmeans"]

ASSIGN_CHUNK = 65536
"""Rows per step of the NaN/inf check and of the centre sums."""

SCORE_BLOCK = 2**22
"""Entries of one (rows x centres) score block (16 MiB): small enough for the cache, large for BLAS."""

SEED_POINTS_PER_CENTROID = 16
"""k-means++ seeding runs on a random subsample of this many rows per centre: enough to find every
sizeable cluster, while its cost stays a fraction of the clustering's."""

CENTRES_PER_GROUP = 16
"""Coarse groups of the pooled seeding: one per this many centres (fewer than 2 groups: one pool)."""

SEED_TRIALS = 32
"""Candidates drawn per pool and step: more than scikit-learn's ``2 + ln k``, because a pool is small and
in high dimensions D^2 separates a missed cluster from a covered one only by a factor of a few."""


def _check_finite(x: np.ndarray) -> None:
    """Refuses NaN/inf rows, chunk by chunk (a full ``np.isfinite(x)`` would double the memory)."""
    for start in range(0, x.shape[0], ASSIGN_CHUNK):
        block = x[start : start + ASSIGN_CHUNK]
        if not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise ValueError(f"embeddings contain NaN or inf (first at row {bad}); k-means needs finite features.")


def _train_rows(n: int, k: int, max_points_per_centroid: int, max_train_points: int | None, seed: int) -> np.ndarray | None:
    """Rows k-means trains on: all (None) or a seeded random subsample of bounded size."""
    cap = k * max(1, int(max_points_per_centroid))
    if max_train_points is not None:
        cap = min(cap, max(k, int(max_train_points)))
    if n <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _rank_float32(xb: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor, n_nearest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n_nearest`` nearest centres of each row of a block: (ids, squared distances ``|x - c|^2`` in float32)."""
    cand = torch.addmm(c_sq, xb, c.T, alpha=-2.0).topk(n_nearest, dim=1, largest=False).indices
    near = c.index_select(0, cand.reshape(-1)).view(*cand.shape, c.shape[1])
    exact = (xb[:, None, :] - near).square_().sum(dim=2)
    order = exact.argsort(dim=1, stable=True)[:, :n_nearest]
    return cand.gather(1, order), exact.gather(1, order)


def _nearest(x: np.ndarray, centres: np.ndarray, n_nearest: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_nearest`` nearest centres of every row of ``x``: (ids (N, n), squared distances (N, n)), nearest first.

    The score ``|c|^2 - 2 x.c`` ranks the centres and the distances of the best are computed as
    ``|x - c|^2`` in float32. Rows and centres are centred on the centres' mean first, which keeps the
    products, and so their rounding, small.
    """
    n_nearest = min(n_nearest, centres.shape[0])
    c = torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float32))
    mean = c.mean(dim=0)
    c = c - mean
    c_sq = (c * c).sum(dim=1)
    k = c.shape[0]
    ids = np.empty((x.shape[0], n_nearest), dtype=np.int64)
    d2 = np.empty((x.shape[0], n_nearest), dtype=np.float32)
    step = max(64, min(4096, SCORE_BLOCK // k))  # a score block that stays in cache

    def rank_block(start: int) -> None:
        torch.set_num_threads(1)  # this worker thread only (OpenMP settings are per thread)
        xb = torch.from_numpy(x[start : start + step]) - mean
        best, dist = _rank_float32(xb, c, c_sq, n_nearest)
        ids[start : start + len(xb)] = best.numpy()
        d2[start : start + len(xb)] = dist.numpy()

    # one single-threaded worker per core on its own blocks: many small multi-threaded operations
    # would meet at a barrier after each, which costs most of the time on a busy machine
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for _ in pool.map(rank_block, range(0, x.shape[0], step)):
            pass
    return ids, d2


def _best_candidate(
    x: np.ndarray, sq: np.ndarray, rows: np.ndarray, d2: np.ndarray, trials: int, rng: np.random.Generator
) -> tuple[float, int, np.ndarray | None]:
    """Greedy k-means++ step on one pool: ``trials`` rows drawn ~ D^2, the one lowering the pool's cost most.

    Returns:
        (its gain, its row, the squared distance of every pool row to it); (0, -1, None) when every row
        of the pool already sits on a centre.
    """
    cum = np.cumsum(d2[rows], dtype=np.float64)
    if not len(rows) or cum[-1] <= 0.0:
        return 0.0, -1, None
    picks = np.minimum(np.searchsorted(cum, rng.random(trials) * cum[-1], side="right"), len(rows) - 1)
    cand = rows[picks]
    # (pool, trials): the tall-skinny product is the fast layout for BLAS
    dc = np.maximum(sq[rows, None] + sq[None, cand] - 2.0 * (x[rows] @ x[cand].T), 0.0)
    np.minimum(dc, d2[rows, None], out=dc)
    gains = cum[-1] - dc.sum(axis=0, dtype=np.float64)
    best = int(np.argmax(gains))
    return float(gains[best]), int(cand[best]), np.ascontiguousarray(dc[:, best])


def _pools(x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pools of the seeding: each row joins the pools of its two nearest coarse groups.

    The groups are a coarse k-means (k-means++ seeds, 2 Lloyd steps) with ``k / CENTRES_PER_GROUP`` centres.

    Returns:
        (rows of all pools one after the other, pool bounds (G + 1,), pools of every row (N, 1 or 2)).
    """
    n = x.shape[0]
    n_groups = k // CENTRES_PER_GROUP
    if n_groups < 2:
        return np.arange(n), np.array([0, n]), np.zeros((n, 1), dtype=np.int64)
    n_sub = min(n, SEED_POINTS_PER_CENTROID * n_groups)
    sub = x[np.sort(rng.choice(n, size=n_sub, replace=False))]
    coarse = sub[_kmeans_plusplus(sub, n_groups, rng)]
    coarse = _lloyd(x, coarse, niter=2, tol=0.0)[0]
    member, _ = _nearest(x, coarse, n_nearest=2)
    pool_of = member.ravel()
    order = np.argsort(pool_of, kind="stable")
    bounds = np.searchsorted(pool_of[order], np.arange(n_groups + 1))
    return order // member.shape[1], bounds, member


def _lower(d2: np.ndarray, rows: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Lowers ``d2[rows]`` to ``dist`` where that is nearer; returns the rows that got nearer."""
    closer = dist < d2[rows]
    d2[rows[closer]] = dist[closer]
    return rows[closer]


def _lazy_greedy(
    x: np.ndarray, k: int, first: int, pools: tuple[np.ndarray, np.ndarray, np.ndarray], rng: np.random.Generator
) -> list[int]:
    """Seeds after ``first``: the pool whose cached best candidate has the largest gain is re-scored if rows
    of it got nearer a seed since, otherwise its candidate becomes the next seed.

    Returns:
        The chosen rows, ``first`` first; fewer than k when every row already sits on a seed.
    """
    pool_rows, bounds, member = pools
    sq = np.einsum("ij,ij->i", x, x)
    d2 = np.maximum(sq + sq[first] - 2.0 * (x @ x[first]), 0.0).astype(np.float32)
    n_pools = len(bounds) - 1
    gain = np.full(n_pools, np.inf)
    stale = np.ones(n_pools, dtype=bool)
    best = np.full(n_pools, -1, dtype=np.int64)
    best_d2: list[np.ndarray | None] = [None] * n_pools  # distances of each pool's rows to its candidate
    chosen = [first]
    while len(chosen) < k:
        j = int(np.argmax(gain))
        if not gain[j] > 0.0:
            break
        rows = pool_rows[bounds[j] : bounds[j + 1]]
        if stale[j]:
            gain[j], best[j], best_d2[j] = _best_candidate(x, sq, rows, d2, SEED_TRIALS, rng)
            stale[j] = False
            continue
        seed = int(best[j])
        chosen.append(seed)
        nearer = [_lower(d2, rows, best_d2[j])]
        for t in member[seed]:  # its other pool learns of it too: a cluster cut by a group border is in both
            if t != j:
                other = pool_rows[bounds[t] : bounds[t + 1]]
                nearer.append(_lower(d2, other, np.maximum(sq[other] + sq[seed] - 2.0 * (x[other] @ x[seed]), 0.0)))
        stale[member[np.concatenate(nearer)].ravel()] = True
    return chosen


def _kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``x`` (centred, float32) chosen as k seeds by greedy k-means++ over candidate pools.

    The first seed is a random row. With one pool (fewer than ``2 * CENTRES_PER_GROUP`` seeds) this is
    scikit-learn's greedy k-means++ with ``SEED_TRIALS`` candidates per step.
    """
    n = x.shape[0]
    if k >= n:
        return np.arange(n)
    first = int(rng.integers(n))
    pools = _pools(x, k, rng)
    # the products of a step are small: a second BLAS thread costs more in waiting than it saves
    with threadpool_limits(1, user_api="blas") if has_threadpoolctl else nullcontext():
        chosen = _lazy_greedy(x, k, first, pools, rng)
    if len(chosen) < k:  # fewer distinct rows than seeds: any rows not yet taken
        rest = np.setdiff1d(np.arange(n), chosen)
        chosen.extend(rng.choice(rest, size=k - len(chosen), replace=False).tolist())
    return np.asarray(chosen, dtype=np.int64)


def _seed_centres(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k seeds (k, D) float32: greedy k-means++ on a subsample of ``SEED_POINTS_PER_CENTROID`` rows per centre.

    Random seeds often put two centres in one true cluster and none in another, and Lloyd's
    iterations rarely undo that; k-means++ spreads them out.
    """
    rng = np.random.default_rng(seed)
    if k == 1:
        return np.ascontiguousarray(x[np.sort(rng.choice(x.shape[0], size=k, replace=False))])
    n_sub = min(x.shape[0], SEED_POINTS_PER_CENTROID * k)
    sub = x[np.sort(rng.choice(x.shape[0], size=n_sub, replace=False))]
    mean = sub.mean(axis=0, dtype=np.float64).astype(np.float32)
    sub -= mean  # centred: squared norms stay small, so float32 distance expansions keep their precision
    seeds = sub[_kmeans_plusplus(sub, k, rng)]
    seeds += mean
    return seeds


def _update_centres(x: np.ndarray, labels: np.ndarray, d2: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Lloyd's update: each centre moves to the mean of its rows; an empty one moves to a row far from its centre."""
    k = centres.shape[0]
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[0], ASSIGN_CHUNK):  # float32 sums per chunk, float64 across chunks
        block = torch.from_numpy(x[start : start + ASSIGN_CHUNK])
        part = torch.zeros(k, x.shape[1]).index_add_(0, torch.from_numpy(labels[start : start + ASSIGN_CHUNK]), block)
        sums += part
    counts = np.bincount(labels, minlength=k)
    new = (sums.numpy() / np.maximum(counts, 1)[:, None]).astype(np.float32)
    empty = np.flatnonzero(counts == 0)
    if len(empty):  # as scikit-learn: the rows farthest from their centres start the empty clusters
        far = np.argsort(-d2, kind="stable")[: len(empty)]
        new[empty[: len(far)]] = x[far]
    return new


def _lloyd(
    x: np.ndarray, centres: np.ndarray, niter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Lloyd's k-means from the given centres, until at most ``tol * N`` rows change cluster or ``niter`` updates.

    Returns:
        (centres (k, D), labels (N,), squared distances (N,), updates done); the labels and
        distances are those of the returned centres.
    """
    labels = None
    for done in range(niter + 1):
        ids, d2 = _nearest(x, centres)
        changed = x.shape[0] if labels is None else int(np.count_nonzero(ids[:, 0] != labels))
        labels = ids[:, 0]
        if done == niter or changed <= tol * x.shape[0]:
            break
        centres = _update_centres(x, labels, d2[:, 0], centres)
    return centres, labels, d2[:, 0], done


def kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    niter: int = 20,
    max_points_per_centroid: int = 256,
    max_train_points: int | None = 262144,
    tol: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeds and Lloyd's iterations on the training rows, then every row's nearest centre.

    Args:
        x: (N, D) C-contiguous float32 features, finite, N >= 1 (used in place).
        k: number of clusters.
        seed: seed of the initialisation and of the training subsample.
        niter: at most this many Lloyd updates.
        max_points_per_centroid: train on at most this many rows per centre (faiss's default 256).
        max_train_points: and on at most this many rows overall (None: no cap).
        tol: stop once at most this fraction of the training rows change cluster.

    Returns:
        (labels (N,) int64, squared distances to the own centre (N,) float32).
    """
    _check_finite(x)
    train = _train_rows(x.shape[0], k, max_points_per_centroid, max_train_points, seed)
    xt = x if train is None else np.ascontiguousarray(x[train])
    centres = _seed_centres(xt, k, seed)
    centres, labels, d2, _ = _lloyd(xt, centres, niter, tol)
    if train is None:
        return labels, d2
    del xt
    ids, d2 = _nearest(x, centres)
    return ids[:, 0], d2[:, 0]
