"""k-means++ writing actions: seeding, both backends, nearest-centroid consistency, no empty action, exemplars."""

import numpy as np
import pytest

from planlm.data.actions import (
    KMeansConfig, _reseed_empty, assign, exemplars, fit_actions, kmeans_plusplus, suggest_num_actions,
)
from planlm.errors import PlanlmError


def _blobs(n_per: int = 60, k: int = 6, d: int = 16, seed: int = 0):
    """Well separated Gaussian blobs, stored as float16 like prepared embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * 10
    x = (centers[:, None, :] + rng.standard_normal((k, n_per, d))).reshape(-1, d)
    truth = np.repeat(np.arange(k), n_per)
    return x.astype(np.float16), truth


def _nearest(x, centroids):
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    return ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)


def test_kmeans_plusplus_picks_distinct_rows_spread_out():
    x, truth = _blobs()
    x = x.astype(np.float32)
    seeds = kmeans_plusplus(x, 6, np.random.default_rng(0))
    rows = [int(np.flatnonzero((x == s).all(1))[0]) for s in seeds]
    assert len(set(rows)) == 6
    assert len(set(truth[rows])) >= 5  # D^2 sampling lands in (almost) every well separated blob


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_fit_actions_consistent_and_recovers_blobs(backend):
    x, truth = _blobs()
    fit = fit_actions(x, 6, KMeansConfig(backend=backend, seed=1), progress=False)
    assert fit.centroids.shape == (6, 16) and fit.centroids.dtype == np.float32
    # Train labels are exactly the nearest centroids of the stored (float16) embeddings.
    assert np.array_equal(fit.train_labels, _nearest(x, fit.centroids))
    assert np.bincount(fit.train_labels, minlength=6).min() > 0
    # Each blob maps to one action (purity 1 on well separated data).
    for b in range(6):
        assert len(set(fit.train_labels[truth == b])) == 1
    d = ((x.astype(np.float32) - fit.centroids[fit.train_labels]) ** 2).sum(1)
    np.testing.assert_allclose(fit.train_distances, d, rtol=1e-3, atol=1e-3)


def test_fit_is_deterministic_for_a_seed():
    x, _ = _blobs(seed=3)
    a = fit_actions(x, 8, KMeansConfig(seed=5), progress=False)
    b = fit_actions(x, 8, KMeansConfig(seed=5), progress=False)
    assert np.array_equal(a.train_labels, b.train_labels) and np.allclose(a.centroids, b.centroids)


def test_more_actions_than_blobs_none_empty():
    x, _ = _blobs(n_per=20, k=3)
    fit = fit_actions(x, 40, KMeansConfig(), progress=False)
    sizes = np.bincount(fit.train_labels, minlength=40)
    assert sizes.min() >= 1 and sizes.sum() == len(x)
    assert np.array_equal(fit.train_labels, _nearest(x, fit.centroids))


def test_reseed_empty_moves_empty_centroids_onto_points():
    x, _ = _blobs(n_per=10, k=2, d=4)
    x = x.astype(np.float32)
    centroids = np.stack([x[:10].mean(0), x[10:].mean(0), np.full(4, 1e4), np.full(4, -1e4)]).astype(np.float32)
    labels, dists = assign(x, centroids)
    assert np.bincount(labels, minlength=4)[2:].sum() == 0  # two empty actions
    centroids, labels, dists, reseeded = _reseed_empty(x, centroids, labels, dists)
    assert reseeded == 2 and np.bincount(labels, minlength=4).min() >= 1
    assert np.array_equal(labels, _nearest(x, centroids))


def test_too_many_actions_suggests_a_k():
    x, _ = _blobs(n_per=10, k=2)
    with pytest.raises(PlanlmError, match=r"num_actions=64 is larger than the 20 train sentences; use --num_actions 2"):
        fit_actions(x, 64, KMeansConfig(), progress=False)
    assert suggest_num_actions(24_000) == 512 and suggest_num_actions(10**7) == 1024 and suggest_num_actions(5) == 2


def test_all_duplicates_cannot_make_k_actions():
    x = np.ones((30, 8), dtype=np.float16)
    with pytest.raises(PlanlmError, match="distinct actions"):
        fit_actions(x, 4, KMeansConfig(), progress=False)


def test_exemplars_nearest_first_distinct_and_sized():
    labels = np.array([0, 0, 0, 1, 1, 0])
    dists = np.array([0.5, 0.1, 0.3, 0.2, 0.9, 0.05])
    ids = np.array([10, 11, 12, 13, 14, 15])
    texts = ["a", "b", "c", "d", "e", "b"]
    table = exemplars(labels, dists, ids, texts, num_actions=3, n=3)
    assert table[0] == {"action": 0, "size": 4, "exemplars": ["b", "c", "a"], "sentence_ids": [15, 12, 10]}
    assert table[1]["exemplars"] == ["d", "e"] and table[1]["size"] == 2
    assert table[2] == {"action": 2, "size": 0, "exemplars": [], "sentence_ids": []}
