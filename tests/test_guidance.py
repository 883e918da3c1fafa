"""Visual guidance on feature sets whose right answer is known by construction."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from spacil.descriptions import select_guidance, spherical_kmeans


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def arc(degrees: list[float], dim: int = 3) -> np.ndarray:
    """Unit vectors in the e1-e2 plane at the given angles."""
    out = np.zeros((len(degrees), dim))
    for i, d in enumerate(degrees):
        out[i, 0], out[i, 1] = math.cos(math.radians(d)), math.sin(math.radians(d))
    return out


def test_circle_with_outlier_centroid_and_farthest_point():
    # arc points shuffled so that index order and angle order differ; the outlier points along e3
    angles = [20, -40, 0, 40, -20]
    x = np.vstack([arc(angles), [[0.0, 0.0, 1.0]]])
    sel = select_guidance(x, n_representative=1, n_diverse=3, seed=0)
    # mean = (1 + 2cos20 + 2cos40, 0, 1)/6 -> the 0-degree point (index 2) is the most central
    assert sel.representative == [2]
    # farthest from the centre: the outlier (dot 1/6 vs >= cos40 * 4.41 / 6 for arc points)
    assert sel.diverse[0] == 5
    # then the arc ends (+-40 degrees, indices 1 and 3; tie broken by the lower index), not the +-20 ones
    assert sel.diverse[1:] == [1, 3]
    assert sel.indices == [2, 5, 1, 3]


def test_farthest_point_picks_opposite_ends_then_the_middle():
    angles = [45, 15, 90, 60, 0, 30, 75]  # 0..90 in steps of 15, shuffled
    x = arc(angles, dim=4)
    sel = select_guidance(x, n_representative=0, n_diverse=3, seed=0)
    ends = {angles.index(0), angles.index(90)}
    assert set(sel.diverse[:2]) == ends
    assert sel.diverse[0] == min(ends)  # equally far from the 45-degree centre: lower index starts
    assert sel.diverse[2] == angles.index(45)  # farthest from both ends

    with_rep = select_guidance(x, n_representative=1, n_diverse=2, seed=0)
    assert with_rep.representative == [angles.index(45)]
    assert set(with_rep.diverse) == ends


def test_farthest_point_agrees_with_brute_force_max_min():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sel = select_guidance(x, n_representative=4, n_diverse=6, seed=1)
    centre = x.mean(axis=0)
    sims_to_centre = x @ centre
    chosen = list(sel.representative)
    # representative = the 4 largest similarities to the mean
    assert sorted(sel.representative) == sorted(np.argsort(-sims_to_centre)[:4].tolist())
    candidates = [i for i in range(40) if i not in chosen]
    assert sel.diverse[0] == min(candidates, key=lambda i: sims_to_centre[i])
    chosen.append(sel.diverse[0])
    for pick in sel.diverse[1:]:
        def min_dist(i):
            return min(1.0 - float(x[i] @ x[j]) for j in chosen)
        best = max((i for i in range(40) if i not in chosen), key=min_dist)
        assert math.isclose(min_dist(pick), min_dist(best), rel_tol=1e-9)
        chosen.append(pick)
    assert len(set(sel.indices)) == 10


def clustered(sizes=(8, 6, 4), dim=8, eps=0.05):
    """Clusters around e0, e1, e2; each has one member exactly at its centre and symmetric +- pairs,
    so the member nearest each cluster's mean is known: the exact centre point."""
    rows, centre_rows, labels = [], [], []
    for c, size in enumerate(sizes):
        u = np.zeros(dim)
        u[c] = 1.0
        centre_rows.append(len(rows))
        rows.append(u)
        labels.append(c)
        for j in range((size - 1) // 2):
            v = np.zeros(dim)
            v[3 + (j % (dim - 3))] = 1.0
            rows += [unit(u + eps * (j + 1) * v), unit(u - eps * (j + 1) * v)]
            labels += [c, c]
    x = np.array(rows)
    perm = np.random.default_rng(0).permutation(len(x))
    inverse = np.argsort(perm)
    return x[perm], [int(inverse[i]) for i in centre_rows], np.array(labels)[perm]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_kmeans_representatives_are_the_cluster_centres(seed):
    x, centres, labels = clustered(sizes=(9, 7, 5))
    sel = select_guidance(x, n_representative=3, n_diverse=2, seed=seed, method="kmeans")
    assert sel.representative == centres  # one per cluster, largest cluster first
    assert not set(sel.diverse) & set(sel.representative)
    km_labels, _ = spherical_kmeans(x, 3, seed=seed)
    # the clustering equals the construction up to renaming the clusters
    assert len({(a, b) for a, b in zip(km_labels, labels)}) == 3


def test_centroid_method_on_clusters_prefers_the_largest_cluster():
    x, centres, labels = clustered(sizes=(9, 3, 3))
    sel = select_guidance(x, n_representative=1, n_diverse=0, seed=0)
    assert labels[sel.representative[0]] == 0


def test_deterministic_for_a_seed_and_same_for_torch_input():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(50, 12)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for method in ("centroid", "kmeans"):
        a = select_guidance(x, 5, 5, seed=7, method=method)
        b = select_guidance(x, 5, 5, seed=7, method=method)
        c = select_guidance(torch.from_numpy(x), 5, 5, seed=7, method=method)
        assert a == b == c
        assert len(set(a.indices)) == 10


def test_more_images_asked_than_the_class_has(caplog):
    x = arc([0, 30, 60, 90], dim=3)
    with caplog.at_level(logging.WARNING, logger="spacil.descriptions.guidance"):
        sel = select_guidance(x, n_representative=3, n_diverse=5, seed=0)
    assert len(sel.representative) == 3 and len(sel.diverse) == 1
    assert sorted(sel.indices) == [0, 1, 2, 3]
    assert any("only 4" in r.getMessage() for r in caplog.records)

    all_rep = select_guidance(x, n_representative=6, n_diverse=2, seed=0, method="kmeans")
    assert sorted(all_rep.representative) == [0, 1, 2, 3] and all_rep.diverse == []


def test_duplicate_images_still_give_distinct_picks():
    x = np.vstack([np.tile(unit([1, 0, 0]), (5, 1)), [unit([0, 1, 0])]])
    sel = select_guidance(x, n_representative=3, n_diverse=2, seed=0, method="kmeans")
    assert len(set(sel.indices)) == 5
    assert 5 in sel.indices  # the one different image is kept


@pytest.mark.parametrize("bad", [np.zeros((0, 4)), np.ones(4), np.array([[1.0, 0.0], [0.0, 0.0]]),
                                 np.array([[np.nan, 1.0]])])
def test_bad_inputs_raise(bad):
    with pytest.raises(ValueError):
        select_guidance(bad, 1, 1, seed=0)


def test_bad_arguments_raise():
    x = arc([0, 10], dim=3)
    with pytest.raises(ValueError):
        select_guidance(x, -1, 1, seed=0)
    with pytest.raises(ValueError):
        select_guidance(x, 1, 1, seed=0, method="medoid")
