"""Writing actions: k-means++ over train sentence embeddings, nearest-centroid assignment, exemplars (DESIGN.md 1.1).

Two backends, the same result shape:

- ``faiss`` (default): k-means++ seeding (D^2 sampling, Arthur & Vassilvitskii 2007) on a random sample of the
  train embeddings, implemented here with numpy because faiss has no ++ initialisation; the seeds are handed to
  ``faiss.Kmeans`` as initial centroids, and faiss runs Lloyd iterations on at most ``max_points_per_centroid * K``
  points (faiss's own subsampling). Millions of sentences cluster in minutes (DESIGN.md section 3).
- ``sklearn``: ``sklearn.cluster.KMeans(init="k-means++")`` on every train point, as the original code did. Exact
  but slow and memory-hungry at scale.

After fitting, every train sentence is assigned to its nearest centroid (so train labels == nearest centroid, exactly)
and empty actions are re-seeded with the train points farthest from their centroids until none is empty.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from tqdm.auto import tqdm

from planlm.errors import PlanlmError

Backend = Literal["faiss", "sklearn"]
BACKENDS: tuple[str, ...] = get_args(Backend)
MIN_SENTENCES_PER_ACTION = 40  # faiss warns below 39 points per centroid; used to suggest and auto-choose K


@dataclass
class KMeansConfig:
    """k-means++ settings (K itself is ``num_actions`` of the prepare stage)."""

    backend: Backend = "faiss"
    """"faiss" (k-means++ seeding on a sample, then faiss Lloyd) or "sklearn" (KMeans on every point, slow at scale)."""
    max_iter: int = 25
    """Lloyd iterations (faiss runs exactly this many; sklearn at most this many, stopping at tol 1e-4)."""
    seed: int = 0
    """Seed of the k-means++ seeding and of faiss's subsampling."""
    seeding_sample: int = 0
    """Points the faiss backend runs k-means++ seeding on; 0 = min(N, 8 K) (seeding is K sequential passes over them)."""
    max_points_per_centroid: int = 256
    """faiss trains on at most this many points per centroid (a random subset), as faiss does by default; 0 = all."""
    num_exemplars: int = 5
    """Sentences nearest each centroid stored as its exemplars."""


@dataclass
class ActionFit:
    centroids: np.ndarray  # (K, d) float32
    train_labels: np.ndarray  # (N_train,) int64, nearest centroid of every train point
    train_distances: np.ndarray  # (N_train,) float32, squared L2 distance to it
    reseeded: int  # empty actions re-seeded after the fit
    seconds: dict


def suggest_num_actions(n_sentences: int, upper: int = 1024) -> int:
    """The largest power of two K <= ``upper`` that leaves about MIN_SENTENCES_PER_ACTION sentences per action."""
    k = 2 ** math.floor(math.log2(max(2, n_sentences // MIN_SENTENCES_PER_ACTION)))
    return int(max(2, min(upper, k)))


def kmeans_problems(cfg: KMeansConfig) -> list[str]:
    problems = []
    if cfg.backend not in BACKENDS:
        problems.append(f"unknown k-means backend {cfg.backend!r}; use one of {', '.join(BACKENDS)}")
    if cfg.max_iter < 1:
        problems.append(f"kmeans.max_iter must be >= 1 (got {cfg.max_iter})")
    if cfg.seeding_sample < 0 or cfg.max_points_per_centroid < 0:
        problems.append("kmeans.seeding_sample and kmeans.max_points_per_centroid must be >= 0 (0 = automatic / all)")
    if cfg.num_exemplars < 1:
        problems.append(f"kmeans.num_exemplars must be >= 1 (got {cfg.num_exemplars})")
    return problems


def check_num_actions(num_actions: int, n_train: int) -> None:
    """Refuse a K that cannot give K non-empty actions, suggesting one that fits."""
    if num_actions < 2:
        raise PlanlmError(f"num_actions must be >= 2 (got {num_actions})")
    if n_train < 2:
        raise PlanlmError(
            f"the train split has {n_train} sentence{'s' * (n_train != 1)}, too few for any set of actions (at least "
            "2 are needed for K=2); read more articles or give fewer to --split.val / --split.test"
        )
    if num_actions > n_train:
        raise PlanlmError(
            f"num_actions={num_actions} is larger than the {n_train} train sentences; "
            f"use --num_actions {suggest_num_actions(n_train)} (or read more articles)"
        )


def import_faiss():
    """Import faiss, first pointing its bundled OpenBLAS at the right kernels.

    faiss-cpu wheels bundle an OpenBLAS (0.3.15) that does not recognise recent Xeons and falls back to its generic
    Prescott (SSE3) kernels: nearest-centroid search then runs 2-3x slower than it should (measured in
    docs/performance.md). OpenBLAS reads ``OPENBLAS_CORETYPE`` when it loads, so it is set (unless the user set it)
    from the CPU flags before faiss is first imported. numpy's own OpenBLAS is loaded by then and unaffected.
    """
    import os
    import sys

    if "faiss" not in sys.modules and "OPENBLAS_CORETYPE" not in os.environ:
        coretype = openblas_coretype()
        if coretype:
            os.environ["OPENBLAS_CORETYPE"] = coretype
    import faiss

    return faiss


def openblas_coretype() -> str | None:
    """The OpenBLAS kernel family this CPU supports ("SkylakeX" with AVX-512, "Haswell" with AVX2), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read().split("\nflags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return None
    if "avx512f" in flags and "avx512bw" in flags:
        return "SkylakeX"
    if "avx2" in flags and "fma" in flags:
        return "Haswell"
    return None


# ---- k-means++ seeding ------------------------------------------------------------------------------------------
def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator, progress: bool = False) -> np.ndarray:
    """k-means++ seeds: the first uniformly, each next one with probability proportional to D(x)^2.

    Args:
        x: ``(n, d)`` float32 points (a sample of the train embeddings).
        k: Number of seeds, ``k <= n``.

    Returns:
        ``(k, d)`` float32 seeds, rows of ``x``.
    """
    from threadpoolctl import threadpool_limits

    # K sequential matrix-vector products: BLAS threads only add synchronisation cost at this size (5x slower here).
    with threadpool_limits(1):
        return _kmeans_plusplus(x, k, rng, progress)


def _kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator, progress: bool) -> np.ndarray:
    n = x.shape[0]
    sq_norms = np.einsum("nd,nd->n", x, x)  # (n,)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    d2 = np.maximum(sq_norms - 2 * x @ x[chosen[0]] + sq_norms[chosen[0]], 0)  # (n,) squared distance to nearest seed
    for i in tqdm(range(1, k), desc="k-means++ seeding", unit=" seed", disable=not progress, mininterval=1):
        total = float(d2.sum())
        if total <= 0:  # fewer distinct points than seeds: fall back to points not chosen yet
            rest = np.setdiff1d(np.arange(n), chosen[:i])
            chosen[i:] = rng.choice(rest, size=k - i, replace=False)
            break
        chosen[i] = min(int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right")), n - 1)
        c = chosen[i]
        np.minimum(d2, np.maximum(sq_norms - 2 * x @ x[c] + sq_norms[c], 0), out=d2)
    return np.ascontiguousarray(x[chosen], dtype=np.float32)


# ---- assignment -------------------------------------------------------------------------------------------------
def assign(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (squared L2) of every row of ``x`` (any float dtype; converted chunk by chunk).

    Returns:
        ``labels (n,) int64`` and ``distances (n,) float32``.
    """
    faiss = import_faiss()
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(len(x), dtype=np.int64)
    dists = np.empty(len(x), dtype=np.float32)
    for lo in range(0, len(x), chunk):
        d, i = index.search(np.ascontiguousarray(x[lo : lo + chunk], dtype=np.float32), 1)
        labels[lo : lo + chunk], dists[lo : lo + chunk] = i[:, 0], d[:, 0]
    return labels, dists


def apply_actions(embeddings: np.ndarray, centroids: np.ndarray, source) -> tuple[np.ndarray, np.ndarray]:
    """Writing actions of another corpus (``source``: a prepared corpus, named in errors) applied to new sentences:
    each one's nearest centroid, no k-means (`planlm prepare --actions_from`). The rule gave the source's val/test
    sentences their actions and its train labels satisfy it, so the source's own sentences get their own actions.

    Returns:
        ``actions (N,) int64`` and squared ``distances (N,) float32``.
    """
    if embeddings.shape[1] != centroids.shape[1]:
        raise PlanlmError(f"the encoder gives {embeddings.shape[1]}-d embeddings but {source}'s centroids are "
                          f"{centroids.shape[1]}-d; rebuild {source} with `planlm prepare --force true`")
    return assign(embeddings, centroids)


def _reseed_empty(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, dists: np.ndarray, max_rounds: int = 20):
    """Move each empty centroid onto a far train point (from an action of size >= 2) until no action is empty.

    The moved centroid sits exactly on that point, so the point joins it on reassignment: the action is non-empty.
    """
    k = centroids.shape[0]
    reseeded = 0
    for _ in range(max_rounds):
        sizes = np.bincount(labels, minlength=k)
        empty = np.flatnonzero(sizes == 0)
        if len(empty) == 0:
            break
        # Candidates: farthest points first, only from actions that keep a member, one per distinct vector.
        order = np.argsort(-dists, kind="stable")
        taken: dict[int, int] = {}
        picks: list[int] = []
        seen: set[bytes] = set()
        for i in order:
            a = int(labels[i])
            if dists[i] <= 0 or sizes[a] - taken.get(a, 0) < 2:
                continue
            key = x[i].tobytes()
            if key in seen:
                continue
            seen.add(key)
            taken[a] = taken.get(a, 0) + 1
            picks.append(int(i))
            if len(picks) == len(empty):
                break
        if not picks and k - len(empty) < 2:
            raise PlanlmError(
                "every train sentence has the same embedding (duplicates), so no 2 distinct actions can be formed; "
                "use a corpus with more varied sentences"
            )
        if not picks:
            raise PlanlmError(
                f"only {k - len(empty)} distinct actions can be formed from these sentences (too many duplicates); "
                f"use --num_actions {max(2, k - len(empty))}"
            )
        centroids[empty[: len(picks)]] = x[picks]
        reseeded += len(picks)
        labels, dists = assign(x, centroids)
    if np.any(np.bincount(labels, minlength=k) == 0):
        raise PlanlmError("k-means left empty actions after re-seeding; "
                          + (f"use a smaller --num_actions (e.g. {k // 2})" if k // 2 >= 2 else
                             "use a corpus with more distinct train sentences"))
    return centroids, labels, dists, reseeded


# ---- fitting ----------------------------------------------------------------------------------------------------
def fit_actions(train, num_actions: int, cfg: KMeansConfig, progress: bool = True) -> ActionFit:
    """k-means++ with ``num_actions`` clusters on the train embeddings; every action non-empty.

    Args:
        train: ``(N_train, d)`` embeddings (float16 as stored; clustered as float32 copies of those exact values, so
            that labels are the nearest centroids of the stored embeddings): an array, or any matrix read by rows
            (:class:`planlm.data.prepared.EmbeddingRows`). The faiss backend reads samples of it and passes over it
            chunk by chunk, so memory is bounded by K, not N_train: ``max_points_per_centroid * K`` rows for Lloyd
            (0 = all rows), 8 K for the seeding; scikit-learn takes every row.
        num_actions: K.
        cfg: Backend and iterations.

    Returns:
        Centroids ``(K, d)`` float32 and the train labels / distances of the final nearest-centroid assignment.
    """
    check_num_actions(num_actions, len(train))
    seconds = {}
    t0 = time.perf_counter()
    if cfg.backend == "faiss":
        centroids = _fit_faiss(train, num_actions, cfg, progress, seconds)
    elif cfg.backend == "sklearn":
        centroids = _fit_sklearn(_rows32(train, slice(None)), num_actions, cfg)
        seconds["lloyd"] = time.perf_counter() - t0
    else:
        raise PlanlmError(f"unknown k-means backend {cfg.backend!r}; use one of {', '.join(BACKENDS)}")
    t1 = time.perf_counter()
    labels, dists = assign(train, centroids)
    centroids, labels, dists, reseeded = _reseed_empty(train, centroids.copy(), labels, dists)
    seconds["assign"] = time.perf_counter() - t1
    return ActionFit(centroids.astype(np.float32), labels, dists, reseeded, seconds)


def _rows32(x, rows) -> np.ndarray:
    """Rows of ``x`` (a slice, or sorted indices) as one contiguous float32 matrix."""
    return np.ascontiguousarray(x[rows], dtype=np.float32)


def lloyd_sample(n: int, k: int, cfg: KMeansConfig) -> np.ndarray | None:
    """The rows faiss trains on when it subsamples (more than ``max_points_per_centroid * k`` points): the first
    ``max_points_per_centroid * k`` of faiss's own seeded permutation (``faiss.rand_perm``), in its order, so that
    reading only them gives faiss's centroids bit for bit; None when faiss trains on every point."""
    m = cfg.max_points_per_centroid * k
    if not cfg.max_points_per_centroid or n <= m:
        return None
    faiss = import_faiss()
    perm = np.empty(n, dtype=np.int32)  # faiss's permutation is of C ints
    faiss.rand_perm(faiss.swig_ptr(perm), n, cfg.seed)
    return perm[:m].astype(np.int64)


def _fit_faiss(x, k: int, cfg: KMeansConfig, progress: bool, seconds: dict) -> np.ndarray:
    faiss = import_faiss()
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    n_seed = min(len(x), cfg.seeding_sample or 8 * k)
    picked = np.sort(rng.choice(len(x), size=n_seed, replace=False)) if n_seed < len(x) else slice(None)
    seeds = kmeans_plusplus(_rows32(x, picked), k, rng, progress=progress)  # (K, d)
    seconds["seeding"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = lloyd_sample(len(x), k, cfg)
    if rows is None:
        points = _rows32(x, slice(None))  # (N, d)
    else:  # read sorted, then put in faiss's order
        order = np.argsort(rows)
        points = np.empty((len(rows), x.shape[1]), dtype=np.float32)  # (m, d)
        points[order] = _rows32(x, rows[order])
    km = faiss.Kmeans(
        x.shape[1], k, niter=cfg.max_iter, seed=cfg.seed, verbose=False, spherical=False,
        max_points_per_centroid=cfg.max_points_per_centroid or max(1, len(x)),
        min_points_per_centroid=1,  # no warning noise; re-seeding below guarantees non-empty actions
    )
    km.train(points, init_centroids=seeds)
    seconds["lloyd"] = time.perf_counter() - t1
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1])


def _fit_sklearn(x: np.ndarray, k: int, cfg: KMeansConfig) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=cfg.max_iter, random_state=cfg.seed)
    km.fit(x)
    return np.asarray(km.cluster_centers_, dtype=np.float32)


# ---- exemplars --------------------------------------------------------------------------------------------------
def exemplars(
    labels: np.ndarray, distances: np.ndarray, sentence_ids: np.ndarray,
    texts: Sequence[str] | Callable[[np.ndarray], list[str]], num_actions: int, n: int,
) -> list[dict]:
    """For every action: its size and its ``n`` distinct sentences nearest the centroid (nearest first).

    Args:
        labels: ``(M,)`` action of each candidate sentence (train sentences).
        distances: ``(M,)`` squared distance of each to its centroid.
        sentence_ids: ``(M,)`` global sentence id of each.
        texts: ``(M,)`` sentence texts, or a function from candidate indices to their texts, called for the few
            nearest candidates of each action (more only where duplicates, such as a repeated heading, need more).
    """
    text_of = texts if callable(texts) else (lambda idx: [texts[j] for j in idx])
    sizes = np.bincount(labels, minlength=num_actions)
    order = np.lexsort((distances, labels))  # by action, then nearest first
    starts = np.r_[0, np.cumsum(sizes)]
    chosen = [([], []) for _ in range(num_actions)]  # (sentence ids, texts) of each action
    seen = np.zeros(num_actions, dtype=np.int64)  # candidates of each action looked at
    want = np.full(num_actions, n, dtype=np.int64)  # how many to look at in this round
    while True:
        todo = [a for a in range(num_actions) if len(chosen[a][1]) < n and seen[a] < sizes[a]]
        if not todo:
            break
        spans = [(a, starts[a] + seen[a], starts[a] + min(sizes[a], seen[a] + want[a])) for a in todo]
        candidates = np.concatenate([order[lo:hi] for _, lo, hi in spans])
        fetched = iter(text_of(candidates))
        for a, lo, hi in spans:
            ids, picked = chosen[a]
            for j in order[lo:hi]:
                text = next(fetched)
                if len(picked) < n and text not in picked:
                    ids.append(int(sentence_ids[j]))
                    picked.append(text)
            seen[a] = hi - starts[a]
            want[a] *= 2  # duplicates: look at twice as many next time
    return [{"action": a, "size": int(sizes[a]), "exemplars": chosen[a][1], "sentence_ids": chosen[a][0]}
            for a in range(num_actions)]
