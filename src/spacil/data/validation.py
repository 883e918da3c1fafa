"""A validation split carved from the training images, so settings are chosen without looking at test.

Which images are held out depends on nothing but the seed and each image's sample id: every image is
ranked inside its class by ``sha256(seed, sample id)`` and the first ``round(fraction * n_c)`` of its class
(at least one) are held out. So the split is stratified per class, the same whatever the class order, and
a class keeps its split when other classes are added, removed or relabelled. No random generator is used.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from ..errors import UsageError


def held_out_count(n_images: int, fraction: float) -> int:
    """Validation images of a class of ``n_images``: ``round(fraction * n)``, at least 1 when ``fraction > 0``."""
    if fraction <= 0:
        return 0
    return max(1, int(round(fraction * n_images)))


def _rank_key(seed: int, sample_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{sample_id}".encode()).digest()


def validation_mask(labels: np.ndarray, sample_ids: Sequence[str], fraction: float, seed: int,
                    class_names: Sequence[str] | None = None) -> np.ndarray:
    """Boolean mask over the training rows: True for the rows held out for validation.

    ``labels`` are the dataset's own labels (any order of classes gives the same rows); ``class_names``
    only name a class in an error. A class too small to keep a training image is a :class:`UsageError`.
    """
    labels = np.asarray(labels)
    if len(sample_ids) != len(labels):
        raise ValueError(f"{len(sample_ids)} sample ids for {len(labels)} labels")
    mask = np.zeros(len(labels), dtype=bool)
    if fraction <= 0:
        return mask
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        n_val = held_out_count(len(rows), fraction)
        if n_val >= len(rows):
            name = class_names[int(label)] if class_names is not None else f"label {int(label)}"
            raise UsageError(f"data.validation_fraction={fraction} leaves class {name!r} ({len(rows)} training "
                             "image(s)) with none to train on; lower data.validation_fraction or set it to 0")
        ranked = sorted(rows, key=lambda r: (_rank_key(seed, sample_ids[r]), sample_ids[r]))
        mask[np.asarray(ranked[:n_val])] = True
    return mask
