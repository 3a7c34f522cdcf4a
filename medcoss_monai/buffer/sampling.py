"""Rehearsal-buffer samplers: k-means (MedCoSS) and random (the ablation).

:func:`kmeans_sample` clusters the embeddings of one stage's training items with ``round(cluster_ratio * N)``
centres and keeps the items nearest each centre, the same number per cluster, until the buffer holds
``round(buffer_ratio * N)`` items.

k-means is seeded by greedy k-means++ at every k and refined by Lloyd's iterations:

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
  matrix is ever built. Blocks are torch products, one single-threaded worker per core; where the CPU
  multiplies bfloat16 natively (AVX512-BF16, AMX) a bfloat16 product ranks the centres and float32
  distances decide, with a float32 re-ranking of the rows the bfloat16 rounding could mislead
  (``backend="faiss"``: faiss's float32 search instead).

The input is used in place when it is already a C-contiguous float32 array."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

faiss, has_faiss = optional_import("faiss")
threadpool_limits, has_threadpoolctl = optional_import("threadpoolctl", name="threadpool_limits")

__all__ = ["SAMPLERS", "buffer_size", "kmeans_sample", "n_clusters_for", "random_sample", "select_nearest"]

ASSIGN_CHUNK = 65536
"""Rows per step of the NaN/inf check, of faiss's search and of the centre sums."""

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


def buffer_size(n_total: int, buffer_ratio: float) -> int:
    """Number of items a buffer keeps: ``round(buffer_ratio * n_total)``, at least 1 (if any) and at most ``n_total``.

    Args:
        n_total: number of items of the stage.
        buffer_ratio: fraction kept, in [0, 1].

    Returns:
        The buffer size.
    """
    if not 0.0 <= buffer_ratio <= 1.0:
        raise ValueError(f"buffer_ratio must be in [0, 1], got {buffer_ratio}.")
    if n_total <= 0:
        return 0
    return int(min(n_total, max(1, round(buffer_ratio * n_total))))


def n_clusters_for(n_total: int, cluster_ratio: float) -> int:
    """Number of k-means centres: ``max(1, round(cluster_ratio * n_total))``, at most ``n_total``.

    Args:
        n_total: number of items of the stage.
        cluster_ratio: centres per item, in (0, 1].

    Returns:
        The number of clusters (0 when there are no items).
    """
    if not 0.0 < cluster_ratio <= 1.0:
        raise ValueError(f"cluster_ratio must be in (0, 1], got {cluster_ratio}.")
    if n_total <= 0:
        return 0
    return int(min(n_total, max(1, round(cluster_ratio * n_total))))


def _as_matrix(embeddings: Any) -> np.ndarray:
    """The embeddings as a C-contiguous float32 (N, D) array (no copy when they already are)."""
    if hasattr(embeddings, "detach"):  # a torch tensor
        embeddings = embeddings.detach().cpu().numpy()
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2D array (N, D), got shape {x.shape}.")
    if x.shape[0] and x.shape[1] == 0:
        raise ValueError("embeddings have zero width.")
    return x


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


def _bf16_is_native() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (then several times the float32 rate)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def _exact_best(xb: torch.Tensor, c: torch.Tensor, cand: torch.Tensor, n_nearest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n_nearest`` of the candidate centres ``cand`` (rows, S) nearest each row, by ``|x - c|^2`` in float32."""
    near = c.index_select(0, cand.reshape(-1)).view(*cand.shape, c.shape[1])
    exact = (xb[:, None, :] - near).square_().sum(dim=2)
    order = exact.argsort(dim=1, stable=True)[:, :n_nearest]
    return cand.gather(1, order), exact.gather(1, order)


def _rank_float32(xb: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor, n_nearest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n_nearest`` nearest centres of each row of a block, ranked in float32: (ids, squared distances)."""
    cand = torch.addmm(c_sq, xb, c.T, alpha=-2.0).topk(n_nearest, dim=1, largest=False).indices
    return _exact_best(xb, c, cand, n_nearest)


def _rank_bfloat16(
    xb: torch.Tensor, c: torch.Tensor, c_bf16: torch.Tensor, c_sq: torch.Tensor, n_nearest: int, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As :func:`_rank_float32` with a bfloat16 ranking product (``c_bf16`` holds ``-2c``), plus the rows it cannot vouch for.

    The best ``n_nearest + 1`` by the bfloat16 score get exact distances; the result is certain when the
    next-ranked centre, even ``margin * |x|`` better than its bfloat16 score, is still farther.

    Returns:
        (ids, squared distances, indices of the unsure rows).
    """
    short = min(c.shape[0] - 1, n_nearest + 1)
    scores = (xb.to(torch.bfloat16) @ c_bf16.T).float().add_(c_sq)
    top, cand = scores.topk(short + 1, dim=1, largest=False)
    best, dist = _exact_best(xb, c, cand[:, :short], n_nearest)
    x_sq = (xb * xb).sum(dim=1)
    floor = top[:, short] - margin * x_sq.sqrt() + x_sq  # no centre ranked after the shortlist is nearer
    return best, dist, (floor < dist[:, -1]).nonzero()[:, 0]


def _nearest_torch(x: np.ndarray, centres: np.ndarray, n_nearest: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_nearest`` nearest centres of every row by torch products: (ids (N, n), squared distances (N, n)).

    The score ``|c|^2 - 2 x.c`` ranks the centres and the distances of the best are computed as
    ``|x - c|^2`` in float32. Where the CPU multiplies bfloat16 natively the ranking product takes
    bfloat16 inputs and gives a bfloat16 output; such a score is within ``6.1 * 2^-8 * |x| * max|c|`` of
    the exact one, and a row whose ranking that margin could change is ranked again in float32, so the
    result is exact either way. Rows and centres are centred on the centres' mean first, which keeps the
    products and that margin small.
    """
    c = torch.from_numpy(np.ascontiguousarray(centres, dtype=np.float32))
    mean = c.mean(dim=0)
    c = c - mean
    c_sq = (c * c).sum(dim=1)
    k = c.shape[0]
    fast = _bf16_is_native() and k > n_nearest + 1
    c_bf16 = (-2.0 * c).to(torch.bfloat16)
    margin = 6.1 * 2.0**-8 * float(c_sq.max().sqrt())
    ids = np.empty((x.shape[0], n_nearest), dtype=np.int64)
    d2 = np.empty((x.shape[0], n_nearest), dtype=np.float32)
    step = max(64, min(4096, SCORE_BLOCK // k))  # a score block that stays in cache

    def rank_block(start: int) -> None:
        torch.set_num_threads(1)  # this worker thread only (OpenMP settings are per thread)
        xb = torch.from_numpy(x[start : start + step]) - mean
        if fast:
            best, dist, unsure = _rank_bfloat16(xb, c, c_bf16, c_sq, n_nearest, margin)
            if len(unsure):
                best[unsure], dist[unsure] = _rank_float32(xb[unsure], c, c_sq, n_nearest)
        else:
            best, dist = _rank_float32(xb, c, c_sq, n_nearest)
        ids[start : start + len(xb)] = best.numpy()
        d2[start : start + len(xb)] = dist.numpy()

    # one single-threaded worker per core on its own blocks: many small multi-threaded operations
    # would meet at a barrier after each, which costs most of the time on a busy machine
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for _ in pool.map(rank_block, range(0, x.shape[0], step)):
            pass
    return ids, d2


def _nearest_faiss(x: np.ndarray, centres: np.ndarray, n_nearest: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_nearest`` nearest centres of every row by faiss's exact float32 search: (ids, squared distances)."""
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    ids = np.empty((x.shape[0], n_nearest), dtype=np.int64)
    d2 = np.empty((x.shape[0], n_nearest), dtype=np.float32)
    for start in range(0, x.shape[0], ASSIGN_CHUNK):
        dist, found = index.search(x[start : start + ASSIGN_CHUNK], n_nearest)
        ids[start : start + len(found)] = found
        d2[start : start + len(found)] = np.maximum(dist, 0.0)
    return ids, d2


def _nearest(x: np.ndarray, centres: np.ndarray, backend: str, n_nearest: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_nearest`` nearest centres of every row of ``x``: (ids (N, n), squared distances (N, n)), nearest first."""
    n_nearest = min(n_nearest, centres.shape[0])
    search = _nearest_faiss if backend == "faiss" else _nearest_torch
    return search(x, centres, n_nearest)


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


def _pools(x: np.ndarray, k: int, rng: np.random.Generator, backend: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    coarse = sub[_kmeans_plusplus(sub, n_groups, rng, backend)]
    coarse = _lloyd(x, coarse, niter=2, tol=0.0, backend=backend)[0]
    member, _ = _nearest(x, coarse, backend, n_nearest=2)
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


def _kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator, backend: str = "torch") -> np.ndarray:
    """Rows of ``x`` (centred, float32) chosen as k seeds by greedy k-means++ over candidate pools.

    The first seed is a random row. With one pool (fewer than ``2 * CENTRES_PER_GROUP`` seeds) this is
    scikit-learn's greedy k-means++ with ``SEED_TRIALS`` candidates per step.
    """
    n = x.shape[0]
    if k >= n:
        return np.arange(n)
    first = int(rng.integers(n))
    pools = _pools(x, k, rng, backend)
    # the products of a step are small: a second BLAS thread costs more in waiting than it saves
    with threadpool_limits(1, user_api="blas") if has_threadpoolctl else nullcontext():
        chosen = _lazy_greedy(x, k, first, pools, rng)
    if len(chosen) < k:  # fewer distinct rows than seeds: any rows not yet taken
        rest = np.setdiff1d(np.arange(n), chosen)
        chosen.extend(rng.choice(rest, size=k - len(chosen), replace=False).tolist())
    return np.asarray(chosen, dtype=np.int64)


def _seed_centres(x: np.ndarray, k: int, seed: int, init: str, backend: str = "torch") -> np.ndarray:
    """k seeds (k, D) float32: greedy k-means++ on a subsample of ``SEED_POINTS_PER_CENTROID`` rows per centre, or k random rows.

    Random seeds often put two centres in one true cluster and none in another, and Lloyd's
    iterations rarely undo that; k-means++ spreads them out.
    """
    if init not in ("k-means++", "random", "auto"):
        raise ValueError(f"init must be 'k-means++', 'random' or 'auto', got {init!r}.")
    rng = np.random.default_rng(seed)
    if init == "random" or k == 1:
        return np.ascontiguousarray(x[np.sort(rng.choice(x.shape[0], size=k, replace=False))])
    n_sub = min(x.shape[0], SEED_POINTS_PER_CENTROID * k)
    sub = x[np.sort(rng.choice(x.shape[0], size=n_sub, replace=False))]
    mean = sub.mean(axis=0, dtype=np.float64).astype(np.float32)
    sub -= mean  # centred: squared norms stay small, so float32 distance expansions keep their precision
    seeds = sub[_kmeans_plusplus(sub, k, rng, backend)]
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
    x: np.ndarray, centres: np.ndarray, niter: int, tol: float, backend: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Lloyd's k-means from the given centres, until at most ``tol * N`` rows change cluster or ``niter`` updates.

    Returns:
        (centres (k, D), labels (N,), squared distances (N,), updates done); the labels and
        distances are those of the returned centres.
    """
    labels = None
    for done in range(niter + 1):
        ids, d2 = _nearest(x, centres, backend)
        changed = x.shape[0] if labels is None else int(np.count_nonzero(ids[:, 0] != labels))
        labels = ids[:, 0]
        if done == niter or changed <= tol * x.shape[0]:
            break
        centres = _update_centres(x, labels, d2[:, 0], centres)
    return centres, labels, d2[:, 0], done


def _kmeans_lloyd(
    x: np.ndarray, k: int, seed: int, niter: int, train: np.ndarray | None, init: str, backend: str, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeds and Lloyd's iterations on the training rows, then every row's nearest centre: (labels, squared distances)."""
    xt = x if train is None else np.ascontiguousarray(x[train])
    centres = _seed_centres(xt, k, seed, init, backend)
    centres, labels, d2, _ = _lloyd(xt, centres, niter, tol, backend)
    if train is None:
        return labels, d2
    del xt
    ids, d2 = _nearest(x, centres, backend)
    return ids[:, 0], d2[:, 0]


def _kmeans_sklearn(
    x: np.ndarray, k: int, seed: int, niter: int, train: np.ndarray | None, init: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Fallback: scikit-learn ``MiniBatchKMeans`` from the same seeds; returns (labels (N,), squared distances (N,))."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import pairwise_distances_argmin_min

    xt = x if train is None else x[train]
    km = MiniBatchKMeans(
        n_clusters=k,
        init=_seed_centres(xt, k, seed, init),
        random_state=seed,
        n_init=1,
        batch_size=max(1024, 4 * k),
        max_iter=max(1, niter),
    )
    km.fit(xt)
    centres = km.cluster_centers_.astype(np.float32)
    labels = np.empty(x.shape[0], dtype=np.int64)
    dist2 = np.empty(x.shape[0], dtype=np.float32)
    for start in range(0, x.shape[0], ASSIGN_CHUNK):
        ids, d = pairwise_distances_argmin_min(x[start : start + ASSIGN_CHUNK], centres)
        labels[start : start + len(ids)] = ids
        dist2[start : start + len(ids)] = d**2
    return labels, dist2


def select_nearest(labels: np.ndarray, distances: np.ndarray, n_select: int, n_clusters: int) -> np.ndarray:
    """Equal share per cluster of the items nearest their centre, topped up where clusters are small.

    The share is found by water-filling: every cluster gives its ``t`` nearest items, where ``t`` is the
    largest level at which the total does not exceed ``n_select`` (a cluster smaller than ``t`` gives all
    it has, so the other clusters cover its shortfall); the few items still missing are each cluster's
    next-nearest item, nearest to its own centre first. So per-cluster counts differ by at most one
    among the clusters that could supply more.

    Args:
        labels: cluster id of every item, (N,) in ``[0, n_clusters)``.
        distances: distance of every item to its own centre, (N,).
        n_select: how many items to choose, at most N.
        n_clusters: number of clusters (some may be empty).

    Returns:
        Row indices, unique, grouped by cluster id (ascending) and nearest first within a cluster.
    """
    labels = np.asarray(labels, dtype=np.int64)
    distances = np.asarray(distances, dtype=np.float64)
    n = labels.shape[0]
    if not 0 <= n_select <= n:
        raise ValueError(f"cannot select {n_select} of {n} items.")
    if n_select == 0:
        return np.zeros(0, dtype=np.int64)
    # items grouped by cluster, nearest first; the row index breaks distance ties deterministically
    order = np.lexsort((np.arange(n), distances, labels))
    sizes = np.bincount(labels, minlength=n_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[labels[order]]

    # largest t with sum(min(sizes, t)) <= n_select (monotone in t: binary search)
    lo, hi = 0, int(sizes.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(sizes, mid).sum() <= n_select:
            lo = mid
        else:
            hi = mid - 1
    level = lo
    chosen = rank < level
    missing = n_select - int(chosen.sum())
    if missing:
        # each cluster that can give more offers its next item (rank == level); nearest ones win
        offers = np.flatnonzero(rank == level)
        offers = offers[np.lexsort((offers, distances[offers]))][:missing]
        chosen[offers] = True
    picked = np.flatnonzero(chosen)
    return picked[np.lexsort((rank[picked], labels[picked]))]


def kmeans_sample(
    embeddings: Any,
    cluster_ratio: float = 0.01,
    buffer_ratio: float = 0.05,
    seed: int = 0,
    return_details: bool = False,
    niter: int = 20,
    max_points_per_centroid: int = 256,
    max_train_points: int | None = 262144,
    backend: str = "auto",
    init: str = "auto",
    tol: float = 1e-3,
) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """MedCoSS buffer selection: k-means, then the items nearest each centre, the same number per cluster.

    ``k = max(1, round(cluster_ratio * N))`` clusters, ``M = round(buffer_ratio * N)`` items (at least 1,
    at most N). Each cluster gives ``M // k`` or ``M // k + 1`` of its items nearest the centre; a
    cluster too small for its share gives all it has and the other clusters top up with their
    next-nearest items (:func:`select_nearest`).

    Args:
        embeddings: (N, D) features, numpy array or torch tensor; used as float32.
        cluster_ratio: clusters per item.
        buffer_ratio: fraction of the items kept.
        seed: seed of the k-means initialisation and of the training subsample.
        return_details: also return the cluster id and distance of each chosen item.
        niter: at most this many k-means (Lloyd) updates.
        max_points_per_centroid: k-means trains on at most this many rows per centre (faiss's default 256).
        max_train_points: and on at most this many rows overall (None: no cap); this bounds the time for
            very large N, where k grows with N. Every item is then assigned to its nearest centre exactly.
        backend: "torch" (torch products, a bfloat16 shortlist where the CPU has native bfloat16), "faiss"
            (faiss's float32 search), "sklearn" (``MiniBatchKMeans`` from the same seeds) or "auto" (torch).
        init: seeding of the centres: "k-means++" (greedy, over candidate pools above 31 centres, on a
            subsample of 16 rows per centre), "random" (k rows drawn at random) or "auto" (k-means++).
        tol: Lloyd's iterations stop once at most this fraction of the training rows change cluster.

    Returns:
        The chosen row indices (int64, unique), grouped by cluster id and nearest first within a cluster.
        With ``return_details``, a tuple ``(indices, details)`` where ``details`` holds ``"cluster"`` (int64,
        the cluster of each chosen item), ``"distance"`` (float32, Euclidean distance to its centre),
        ``"n_clusters"`` (k), ``"n_nonempty_clusters"`` and ``"backend"``.
    """
    x = _as_matrix(embeddings)
    n = x.shape[0]
    k = n_clusters_for(n, cluster_ratio)
    m = buffer_size(n, buffer_ratio)
    if backend == "auto":
        backend = "torch"
    if backend not in ("torch", "faiss", "sklearn"):
        raise ValueError(f"backend must be 'torch', 'faiss', 'sklearn' or 'auto', got {backend!r}.")
    if backend == "faiss" and not has_faiss:
        raise ImportError("backend='faiss' needs the faiss-cpu package (pip install faiss-cpu).")
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        details = {"cluster": empty, "distance": np.zeros(0, np.float32), "n_clusters": 0, "n_nonempty_clusters": 0, "backend": backend}
        return (empty, details) if return_details else empty
    _check_finite(x)

    train = _train_rows(n, k, max_points_per_centroid, max_train_points, seed)
    if backend == "sklearn":
        labels, dist2 = _kmeans_sklearn(x, k, seed, niter, train, init)
    else:
        labels, dist2 = _kmeans_lloyd(x, k, seed, niter, train, init, backend, tol)
    distances = np.sqrt(np.maximum(dist2, 0.0)).astype(np.float32)
    picked = select_nearest(labels, distances, m, k)
    if not return_details:
        return picked
    details = {
        "cluster": labels[picked],
        "distance": distances[picked],
        "n_clusters": k,
        "n_nonempty_clusters": int(np.count_nonzero(np.bincount(labels, minlength=k))),
        "backend": backend,
    }
    return picked, details


def random_sample(
    n_total: Any, buffer_ratio: float = 0.05, seed: int = 0, return_details: bool = False
) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Random buffer (the ablation of k-means selection): ``round(buffer_ratio * N)`` distinct items.

    Args:
        n_total: number of items N, or the (N, D) embeddings themselves (only their length is used),
            so both samplers share one call signature.
        buffer_ratio: fraction of the items kept.
        seed: seed of the draw.
        return_details: also return a details dict (cluster -1 and distance NaN for every item).

    Returns:
        Sorted unique row indices (int64); with ``return_details``, ``(indices, details)``.
    """
    n = int(n_total) if np.ndim(n_total) == 0 else len(n_total)
    m = buffer_size(n, buffer_ratio)
    picked = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)).astype(np.int64)
    if not return_details:
        return picked
    details = {
        "cluster": np.full(m, -1, dtype=np.int64),
        "distance": np.full(m, np.nan, dtype=np.float32),
        "n_clusters": 0,
        "n_nonempty_clusters": 0,
        "backend": "numpy",
    }
    return picked, details


def _kmeans_sampler(embeddings: Any, buffer_ratio: float = 0.05, seed: int = 0, return_details: bool = False, **kwargs: Any) -> Any:
    return kmeans_sample(embeddings, buffer_ratio=buffer_ratio, seed=seed, return_details=return_details, **kwargs)


def _random_sampler(embeddings: Any, buffer_ratio: float = 0.05, seed: int = 0, return_details: bool = False, **kwargs: Any) -> Any:
    kwargs.pop("cluster_ratio", None)  # a random buffer has no clusters
    if kwargs:
        raise TypeError(f"the random sampler takes no options {sorted(kwargs)}.")
    return random_sample(embeddings, buffer_ratio=buffer_ratio, seed=seed, return_details=return_details)


SAMPLERS: dict[str, Callable[..., Any]] = {"kmeans": _kmeans_sampler, "random": _random_sampler}
"""Buffer samplers by name, one signature: ``sampler(embeddings, buffer_ratio=, seed=, return_details=, cluster_ratio=...)``."""
