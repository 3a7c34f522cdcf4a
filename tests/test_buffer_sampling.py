"""Rehearsal-buffer samplers: k-means selection on known clusters and on real report features, random sampler."""

from __future__ import annotations

import numpy as np
import pytest

from medcoss_monai.buffer import SAMPLERS, buffer_size, kmeans_sample, n_clusters_for, random_sample, select_nearest
from medcoss_monai.buffer.kmeans import _nearest


def blobs(n_per: list[int], dim: int = 16, spread: float = 20.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian blobs of the given sizes: (points, blob of each point)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(n_per), dim)) * spread
    truth = np.repeat(np.arange(len(n_per)), n_per)
    x = centres[truth] + rng.normal(size=(len(truth), dim))
    perm = rng.permutation(len(truth))  # blobs interleaved, as real data would be
    return x[perm].astype(np.float32), truth[perm]


def test_sizes_follow_the_ratios():
    assert n_clusters_for(3534, 0.01) == 35 and buffer_size(3534, 0.05) == 177
    assert n_clusters_for(20, 0.01) == 1 and buffer_size(5, 0.05) == 1  # at least one
    assert buffer_size(10, 1.0) == 10 and buffer_size(0, 0.05) == 0
    with pytest.raises(ValueError):
        buffer_size(10, 1.5)


def test_known_clusters_equal_share_and_exact_size():
    # 10 blobs of 200 items: k = 20 clusters, buffer 100 = 5 per cluster, every blob represented
    x, truth = blobs([200] * 10)
    idx, det = kmeans_sample(x, cluster_ratio=0.01, buffer_ratio=0.05, seed=0, return_details=True)
    assert len(idx) == round(0.05 * len(x)) == 100
    assert len(np.unique(idx)) == len(idx)
    assert det["n_clusters"] == 20
    assert set(truth[idx]) == set(range(10))
    counts = np.bincount(det["cluster"], minlength=20)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 100
    assert np.all(np.diff(det["cluster"]) >= 0)  # grouped by cluster id
    for c in np.unique(det["cluster"]):  # no cluster straddles two blobs
        assert len(set(truth[idx[det["cluster"] == c]].tolist())) == 1


def test_one_cluster_per_blob_keeps_the_items_nearest_its_mean():
    x, truth = blobs([200] * 10, seed=4)
    idx, det = kmeans_sample(x, cluster_ratio=0.005, return_details=True)  # 10 clusters, one per blob
    assert np.bincount(truth[idx], minlength=10).tolist() == [10] * 10
    for blob in range(10):
        inside = truth == blob
        d = np.linalg.norm(x - x[inside].astype(np.float64).mean(0), axis=1)  # converged centre = blob mean
        mine = truth[idx] == blob
        np.testing.assert_allclose(det["distance"][mine], d[idx[mine]], rtol=1e-4, atol=1e-4)
        assert np.all(np.diff(det["distance"][mine]) >= 0)  # nearest first
        chosen = np.zeros(len(x), bool)
        chosen[idx[mine]] = True
        assert d[chosen].max() <= d[inside & ~chosen].min() + 1e-4  # no unchosen item of the blob is nearer


def test_uneven_share_spreads_ceil_and_floor():
    x, _ = blobs([150] * 7, seed=1)  # N = 1050: k = 10 (round 10.5 -> 10), M = 52 -> 5 or 6 per cluster
    idx, det = kmeans_sample(x, return_details=True)
    assert len(idx) == 52
    counts = np.bincount(det["cluster"], minlength=det["n_clusters"])
    assert set(counts.tolist()) <= {5, 6} and counts.sum() == 52


def test_tiny_cluster_is_topped_up_by_the_others():
    # 3 clusters (ratio 3/N), one blob holds only 2 items: its share is 4, the other two give 5 each
    x, truth = blobs([20, 20, 2], seed=2)
    n = len(x)
    idx, det = kmeans_sample(x, cluster_ratio=3 / n, buffer_ratio=12 / n, return_details=True)
    assert len(idx) == 12 and len(np.unique(idx)) == 12
    assert np.bincount(truth[idx], minlength=3).tolist() == [5, 5, 2]
    # the top-up items are each big cluster's next-nearest: no unchosen item of a cluster is nearer its centre
    for blob in (0, 1):
        centre = x[truth == blob].mean(0)
        d = np.linalg.norm(x - centre, axis=1)
        inside = truth == blob
        chosen = np.zeros(n, bool)
        chosen[idx] = True
        assert d[inside & chosen].max() <= d[inside & ~chosen].min() + 1e-4


def test_select_nearest_water_filling():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 1)
    dist = np.concatenate([np.arange(10) / 10, np.arange(10) / 10 + 0.05, [0.0]])
    picked = select_nearest(labels, dist, 9, 3)
    assert np.bincount(labels[picked], minlength=3).tolist() == [4, 4, 1]
    # within a cluster the nearest are taken
    assert set(picked[labels[picked] == 0].tolist()) == {0, 1, 2, 3}
    # the odd one goes to the cluster whose next item is nearer its centre (cluster 0: 0.4 < 0.45)
    picked = select_nearest(labels, dist, 10, 3)
    assert np.bincount(labels[picked], minlength=3).tolist() == [5, 4, 1]
    assert len(select_nearest(labels, dist, 21, 3)) == 21
    with pytest.raises(ValueError):
        select_nearest(labels, dist, 22, 3)


def test_deterministic_with_a_seed():
    x, _ = blobs([100] * 8, dim=32, spread=3.0, seed=3)  # overlapping blobs: the seed matters
    a = kmeans_sample(x, cluster_ratio=0.02, seed=7)
    b = kmeans_sample(x, cluster_ratio=0.02, seed=7)
    np.testing.assert_array_equal(a, b)


def test_more_than_1024_clusters_are_all_found():
    # 1,500 well separated blobs of 40, k = 1,500, buffer 3,000: random seeds (the old behaviour above
    # 1,024 centres) leave a fifth of the blobs without an item; k-means++ seeds find (nearly) all
    x, truth = blobs([40] * 1500, dim=64, seed=5)
    idx = kmeans_sample(x, cluster_ratio=1500 / len(x), seed=0)
    assert len(idx) == 3000 and len(np.unique(idx)) == 3000
    assert np.unique(truth[idx]).size >= 0.99 * 1500


def test_pooled_seeding_is_deterministic_and_copes_with_duplicates():
    x, _ = blobs([30] * 100, dim=32, spread=2.0, seed=6)  # k = 100: seeding over candidate pools
    a = kmeans_sample(x, cluster_ratio=100 / len(x), seed=3)
    np.testing.assert_array_equal(a, kmeans_sample(x, cluster_ratio=100 / len(x), seed=3))
    # 60 distinct rows, 80 clusters: the seeds run out of distinct rows and the buffer is still right
    rows = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    dup = np.repeat(rows, 50, axis=0)
    idx = kmeans_sample(dup, cluster_ratio=80 / len(dup), buffer_ratio=0.05)
    assert len(idx) == 150 and len(np.unique(idx)) == 150
    assert len(np.unique(dup[idx], axis=0)) == 60  # every distinct row is represented


def test_assignment_is_exact_far_from_the_origin():
    # tight blobs far from the mean: an uncentred float32 score |c|^2 - 2 x.c would misrank close centres
    x, _ = blobs([200] * 10, spread=20.0, seed=7)
    centres = x[np.random.default_rng(1).choice(len(x), 20, replace=False)]
    d2 = ((x[:, None, :].astype(np.float64) - centres[None]) ** 2).sum(-1)
    ids, dist = _nearest(x, centres, n_nearest=2)
    np.testing.assert_array_equal(ids, np.argsort(d2, axis=1, kind="stable")[:, :2])
    np.testing.assert_allclose(dist, np.sort(d2, axis=1)[:, :2], rtol=1e-4, atol=1e-2)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="2D"):
        kmeans_sample(np.zeros(10, np.float32))
    x = np.zeros((50, 4), np.float32)
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        kmeans_sample(x)
    assert kmeans_sample(np.zeros((0, 4), np.float32)).shape == (0,)
    idx = kmeans_sample(np.ones((3, 4), np.float32))  # identical rows, N < 100: one cluster, one item
    assert len(idx) == 1


def test_random_sampler_size_uniqueness_seed():
    idx = random_sample(3534, buffer_ratio=0.05, seed=0)
    assert len(idx) == 177 and len(np.unique(idx)) == 177 and idx.min() >= 0 and idx.max() < 3534
    np.testing.assert_array_equal(idx, random_sample(3534, seed=0))
    assert not np.array_equal(idx, random_sample(3534, seed=1))
    emb = np.zeros((200, 3), np.float32)
    sel, det = SAMPLERS["random"](emb, buffer_ratio=0.1, seed=0, return_details=True, cluster_ratio=0.01)
    assert len(sel) == 20 and (det["cluster"] == -1).all()
    sel = SAMPLERS["kmeans"](blobs([100] * 2)[0], buffer_ratio=0.1, cluster_ratio=0.01)
    assert len(sel) == 20


def test_real_reports_every_major_cluster_is_represented(datalist):
    """Indiana reports as TF-IDF (LSA) vectors: the buffer covers every sizeable topic cluster and the MeSH classes."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    items = datalist("report")["training"]
    texts = [it["text"] for it in items]
    tfidf = TfidfVectorizer(min_df=3, stop_words="english").fit_transform(texts)
    x = TruncatedSVD(64, random_state=0).fit_transform(tfidf).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-8

    idx, det = kmeans_sample(x, seed=0, return_details=True)
    n = len(items)
    assert len(idx) == round(0.05 * n) and len(np.unique(idx)) == len(idx)
    assert det["n_clusters"] == round(0.01 * n)

    # "major clusters": an independent 8-topic clustering of the same features; each with >= 5% of the reports
    topics = KMeans(8, n_init=4, random_state=0).fit_predict(x)
    sizes = np.bincount(topics)
    major = np.flatnonzero(sizes >= 0.05 * n)
    assert len(major) >= 3
    assert set(major.tolist()) <= set(topics[idx].tolist())
    # and both normal and abnormal reports are kept, roughly in proportion (normal ~1/3 of the corpus)
    normal = np.array(["normal" in it["mesh"] for it in items])
    share = normal[idx].mean()
    assert 0.1 < share < 0.7
