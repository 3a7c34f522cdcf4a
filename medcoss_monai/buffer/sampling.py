"""Rehearsal-buffer samplers: k-means (MedCoSS) and random (the ablation).

:func:`kmeans_sample` clusters the embeddings of one stage's training items with ``round(cluster_ratio * N)``
centres (:func:`~medcoss_monai.buffer.kmeans.kmeans`) and keeps the items nearest each centre, the same
number per cluster, until the buffer holds ``round(buffer_ratio * N)`` items.

The input is used in place when it is already a C-contiguous float32 array."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medcoss_monai.buffer.kmeans import kmeans

__all__ = ["SAMPLERS", "buffer_size", "kmeans_sample", "n_clusters_for", "random_sample", "select_nearest"]


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
        tol: Lloyd's iterations stop once at most this fraction of the training rows change cluster.

    Returns:
        The chosen row indices (int64, unique), grouped by cluster id and nearest first within a cluster.
        With ``return_details``, a tuple ``(indices, details)`` where ``details`` holds ``"cluster"`` (int64,
        the cluster of each chosen item), ``"distance"`` (float32, Euclidean distance to its centre),
        ``"n_clusters"`` (k) and ``"n_nonempty_clusters"``.
    """
    x = _as_matrix(embeddings)
    n = x.shape[0]
    k = n_clusters_for(n, cluster_ratio)
    m = buffer_size(n, buffer_ratio)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        details = {"cluster": empty, "distance": np.zeros(0, np.float32), "n_clusters": 0, "n_nonempty_clusters": 0}
        return (empty, details) if return_details else empty
    labels, dist2 = kmeans(x, k, seed, niter, max_points_per_centroid, max_train_points, tol)
    distances = np.sqrt(np.maximum(dist2, 0.0)).astype(np.float32)
    picked = select_nearest(labels, distances, m, k)
    if not return_details:
        return picked
    details = {
        "cluster": labels[picked],
        "distance": distances[picked],
        "n_clusters": k,
        "n_nonempty_clusters": int(np.count_nonzero(np.bincount(labels, minlength=k))),
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
