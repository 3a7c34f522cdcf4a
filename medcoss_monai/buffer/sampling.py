"""Rehearsal-buffer samplers: k-means (MedCoSS) and random (the ablation).

:func:`kmeans_sample` clusters the embeddings of one stage's training items with ``round(cluster_ratio * N)``
centres and keeps the items nearest each centre, the same number per cluster, until the buffer holds
``round(buffer_ratio * N)`` items. k-means (Lloyd, greedy k-means++ seeds up to 1024 centres) runs on
faiss (CPU) when it is installed, otherwise on scikit-learn's ``MiniBatchKMeans``. Memory stays bounded
for large ``N``: k-means trains on a seeded random subsample (at most ``max_points_per_centroid * k``
and ``max_train_points`` rows), and every item is then assigned exactly to its nearest centre in
chunks, so no ``N x k`` distance matrix is ever built. The input is used in place when it is already
a C-contiguous float32 array."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from monai.utils import optional_import

faiss, has_faiss = optional_import("faiss")

__all__ = ["SAMPLERS", "buffer_size", "kmeans_sample", "n_clusters_for", "random_sample", "select_nearest"]

ASSIGN_CHUNK = 65536
"""Rows assigned to centres per step: bounds the temporary distance block to ``ASSIGN_CHUNK x k``."""

KMEANSPP_MAX_CLUSTERS = 1024
"""Above this many centres ``init="auto"`` seeds k-means randomly: k-means++ needs k sequential passes."""

KMEANSPP_POINTS_PER_CENTROID = 16
"""k-means++ seeding runs on a random subsample of this many rows per centre: enough to find every
sizeable cluster, while its cost (k steps over the subsample) stays a fraction of the clustering's."""


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


def _kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``x`` chosen by greedy k-means++: each step draws ``2 + ln k`` candidates with probability
    ~ D^2 and keeps the one that lowers the total squared distance most (as scikit-learn does, but with
    one small matrix product per step, which is what makes it affordable here).
    """
    n = x.shape[0]
    trials = 2 + int(np.log(k))
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    chosen = [int(rng.integers(n))]
    d2 = np.maximum(sq + sq[chosen[0]] - 2.0 * (x @ x[chosen[0]]), 0.0)
    for _ in range(1, k):
        cum = np.cumsum(d2)
        if cum[-1] <= 0.0:  # fewer distinct rows than seeds: any row not yet taken
            chosen.append(int(rng.choice(np.setdiff1d(np.arange(n), chosen))))
            continue
        cand = np.minimum(np.searchsorted(cum, rng.random(trials) * cum[-1], side="right"), n - 1)
        # (n, trials): the tall-skinny product is the fast layout for BLAS
        dc = np.maximum(sq[:, None] + sq[None, cand] - 2.0 * (x @ x[cand].T), 0.0)
        np.minimum(dc, d2[:, None], out=dc)
        best = int(np.argmin(dc.sum(axis=0)))
        chosen.append(int(cand[best]))
        d2 = np.ascontiguousarray(dc[:, best])
    return np.asarray(chosen, dtype=np.int64)


def _seed_centres(x: np.ndarray, k: int, seed: int, init: str) -> np.ndarray | None:
    """k-means++ seeds drawn from a small subsample, or None for random seeds.

    Random seeds often put two centres in one true cluster and none in another, and Lloyd's
    iterations rarely undo that; k-means++ spreads them out.
    """
    if init == "auto":
        init = "k-means++" if k <= KMEANSPP_MAX_CLUSTERS else "random"
    if init not in ("k-means++", "random"):
        raise ValueError(f"init must be 'k-means++', 'random' or 'auto', got {init!r}.")
    if init == "random" or k == 1:
        return None
    rng = np.random.default_rng(seed)
    n_sub = min(x.shape[0], KMEANSPP_POINTS_PER_CENTROID * k)
    sub = np.ascontiguousarray(x[np.sort(rng.choice(x.shape[0], size=n_sub, replace=False))])
    return np.ascontiguousarray(sub[_kmeans_plusplus(sub, k, rng)], dtype=np.float32)


def _kmeans_faiss(
    x: np.ndarray, k: int, seed: int, niter: int, train: np.ndarray | None, init: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with faiss; returns (labels (N,), squared distances (N,))."""
    d = x.shape[1]
    km = faiss.Kmeans(
        d,
        k,
        niter=int(niter),
        seed=int(seed),
        spherical=False,
        verbose=False,
        # the subsample is drawn here (seeded, bounded); faiss must not subsample again or warn
        max_points_per_centroid=max(1, x.shape[0]),
        min_points_per_centroid=1,
    )
    xt = x if train is None else np.ascontiguousarray(x[train])
    km.train(xt, init_centroids=_seed_centres(xt, k, seed, init))
    labels = np.empty(x.shape[0], dtype=np.int64)
    dist2 = np.empty(x.shape[0], dtype=np.float32)
    for start in range(0, x.shape[0], ASSIGN_CHUNK):
        d2, ids = km.index.search(x[start : start + ASSIGN_CHUNK], 1)
        labels[start : start + len(ids)] = ids[:, 0]
        dist2[start : start + len(ids)] = d2[:, 0]
    return labels, dist2


def _kmeans_sklearn(
    x: np.ndarray, k: int, seed: int, niter: int, train: np.ndarray | None, init: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Fallback without faiss: scikit-learn ``MiniBatchKMeans``; returns (labels (N,), squared distances (N,))."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import pairwise_distances_argmin_min

    xt = x if train is None else x[train]
    seeds = _seed_centres(xt, k, seed, init)
    km = MiniBatchKMeans(
        n_clusters=k,
        init="random" if seeds is None else seeds,
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
        niter: k-means (Lloyd) iterations.
        max_points_per_centroid: k-means trains on at most this many rows per centre (faiss's default 256).
        max_train_points: and on at most this many rows overall (None: no cap); this bounds the time for
            very large N, where k grows with N. Every item is then assigned to its nearest centre exactly.
        backend: "faiss", "sklearn" (``MiniBatchKMeans``) or "auto" (faiss when installed).
        init: seeding of the centres: "k-means++" (greedy, on a subsample of 16 rows per centre), "random" (k rows
            drawn at random) or "auto" (k-means++ up to 1024 centres, random above, where k-means++'s k
            sequential passes would cost more than the clustering).

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
        backend = "faiss" if has_faiss else "sklearn"
    if backend not in ("faiss", "sklearn"):
        raise ValueError(f"backend must be 'faiss', 'sklearn' or 'auto', got {backend!r}.")
    if backend == "faiss" and not has_faiss:
        raise ImportError("backend='faiss' needs the faiss-cpu package (pip install faiss-cpu).")
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        details = {"cluster": empty, "distance": np.zeros(0, np.float32), "n_clusters": 0, "n_nonempty_clusters": 0, "backend": backend}
        return (empty, details) if return_details else empty
    _check_finite(x)

    train = _train_rows(n, k, max_points_per_centroid, max_train_points, seed)
    run = _kmeans_faiss if backend == "faiss" else _kmeans_sklearn
    labels, dist2 = run(x, k, seed, niter, train, init)
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
