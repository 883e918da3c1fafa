"""Visual guidance: which training images of a class are shown to the multimodal LLM.

SPA shows the LLM a few *representative* images (typical views, near the class centre) and a few
*diverse* ones (spread over the class's appearance), chosen from frozen CLIP global features.

Choices made here (the paper does not fix them):
- Representative, ``centroid``: the images with the highest cosine similarity to the class mean.
  ``kmeans``: seeded spherical k-means with ``n_representative`` clusters; per cluster the member closest
  to the cluster centre (an approximate medoid), clusters ordered largest first.
- Diverse: farthest-point sampling with cosine distance, started from the image farthest from the class
  centre. Distances are taken to *every* image already chosen (representatives included), so diverse
  images also differ from the representative ones. Representatives are never picked again.
Ties are broken by the lower image index, so the result depends only on the features and ``seed``.

``random`` (an ablation, not SPA's guidance): ``n_representative + n_diverse`` images drawn uniformly
without replacement (seeded), all reported as representative.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuidanceSelection:
    """Row indices (into the class's feature matrix) of the chosen images."""

    representative: list[int]
    diverse: list[int]

    @property
    def indices(self) -> list[int]:
        """All chosen images, representative first (never a duplicate)."""
        return self.representative + self.diverse


def _as_unit_rows(features) -> np.ndarray:
    if hasattr(features, "detach"):  # torch tensor, without importing torch here
        features = features.detach().cpu().float().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty [n, d] matrix, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("features contain an all-zero row (cannot take cosine similarities)")
    return x / norms  # re-normalise defensively: cached features may have lost precision


def _ranked(scores: np.ndarray, descending: bool) -> np.ndarray:
    """Indices sorted by score; stable, so ties keep the lower index first."""
    return np.argsort(-scores if descending else scores, kind="stable")


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with cosine distance; returns the indices of the k seed images."""
    n = x.shape[0]
    seeds = [int(rng.integers(n))]
    dist = 1.0 - x @ x[seeds[0]]
    for _ in range(1, k):
        weights = np.clip(dist, 0.0, None)
        weights[seeds] = 0.0
        total = weights.sum()
        if total <= 1e-12:  # all remaining points coincide with a seed: take the first unused one
            pick = int(np.setdiff1d(np.arange(n), seeds)[0])
        else:
            pick = int(rng.choice(n, p=weights / total))
        seeds.append(pick)
        dist = np.minimum(dist, 1.0 - x @ x[pick])
    return np.asarray(seeds)


def spherical_kmeans(x: np.ndarray, k: int, seed: int, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means on unit vectors (cosine similarity). Returns (labels [n], unit centres [k, d]).

    An empty cluster is re-seeded with the image least similar to its assigned centre, so all k clusters
    stay populated whenever there are at least k distinct images.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    rng = np.random.default_rng(seed)
    centres = x[_kmeans_plus_plus(x, k, rng)].copy()
    labels = np.full(n, -1)
    for _ in range(max_iter):
        sims = x @ centres.T
        new_labels = np.argmax(sims, axis=1)  # ties -> lower cluster index
        for c in range(k):
            if not np.any(new_labels == c):
                own = sims[np.arange(n), new_labels]
                donors = [i for i in _ranked(own, descending=False) if np.sum(new_labels == new_labels[i]) > 1]
                if donors:
                    new_labels[donors[0]] = c
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for c in range(k):
            members = x[labels == c]
            if len(members):
                mean = members.sum(axis=0)
                norm = np.linalg.norm(mean)
                centres[c] = mean / norm if norm > 1e-12 else members[0]
    return labels, centres


def _kmeans_representatives(x: np.ndarray, k: int, seed: int, max_iter: int) -> list[int]:
    labels, centres = spherical_kmeans(x, k, seed, max_iter)
    picks: list[tuple[int, int, int]] = []  # (-size, index, chosen image) for ordering
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        best = members[_ranked(x[members] @ centres[c], descending=True)[0]]
        picks.append((-len(members), int(best), int(best)))
    return [p[2] for p in sorted(picks)]


def _farthest_point(x: np.ndarray, centre: np.ndarray, chosen: list[int], n: int) -> list[int]:
    available = np.ones(x.shape[0], dtype=bool)
    available[chosen] = False
    out: list[int] = []
    if n == 0 or not available.any():
        return out
    # start: the available image farthest from the class centre (lowest similarity)
    start = next(int(i) for i in _ranked(x @ centre, descending=False) if available[i])
    out.append(start)
    available[start] = False
    anchors = chosen + out
    min_dist = np.min(1.0 - x @ x[anchors].T, axis=1)
    while len(out) < n and available.any():
        scores = np.where(available, min_dist, -np.inf)
        pick = int(np.argmax(scores))  # first maximum -> lowest index on ties
        out.append(pick)
        available[pick] = False
        min_dist = np.minimum(min_dist, 1.0 - x @ x[pick])
    return out


def select_guidance(features, n_representative: int, n_diverse: int, seed: int,
                    method: Literal["centroid", "kmeans", "random"] = "centroid",
                    kmeans_max_iter: int = 100) -> GuidanceSelection:
    """Pick representative and diverse images of one class from its [n, d] CLIP global features.

    ``seed`` drives the k-means initialisation (``method="kmeans"``); ``centroid`` is seed-free.
    Asking for more images than the class has returns every image once, with a warning.
    """
    if n_representative < 0 or n_diverse < 0:
        raise UsageError("n_representative and n_diverse must be >= 0")
    if method not in ("centroid", "kmeans", "random"):
        raise UsageError(f"method must be 'centroid', 'kmeans' or 'random', got {method!r}")
    x = _as_unit_rows(features)
    n = x.shape[0]
    if n_representative + n_diverse > n:
        logger.warning("asked for %d representative + %d diverse images but the class has only %d; "
                       "returning all of them", n_representative, n_diverse, n)
    n_rep = min(n_representative, n)
    n_div = min(n_diverse, n - n_rep)
    if method == "random":
        picked = np.random.default_rng(seed).choice(n, size=n_rep + n_div, replace=False)
        return GuidanceSelection(representative=[int(i) for i in picked], diverse=[])
    centre = x.mean(axis=0)  # ranking by x @ mean equals ranking by cosine to the normalised mean
    if n_rep == 0:
        representative: list[int] = []
    elif method == "centroid":
        representative = [int(i) for i in _ranked(x @ centre, descending=True)[:n_rep]]
    else:
        representative = _kmeans_representatives(x, n_rep, seed, kmeans_max_iter)
        if len(representative) < n_rep:  # duplicate images left a cluster empty: top up by centrality
            extra = [int(i) for i in _ranked(x @ centre, descending=True) if int(i) not in representative]
            representative += extra[: n_rep - len(representative)]
    diverse = _farthest_point(x, centre, representative, n_div)
    return GuidanceSelection(representative=representative, diverse=diverse)
