"""Shared fixtures: a tiny random-init backbone and small image folders written to temp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_backbone():
    from spacil.backbone import load_backbone

    return load_backbone("tiny-test", device="cpu")


PALETTE = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [30, 230, 230], [230, 30, 230],
                    [128, 128, 128], [250, 250, 250]])


def write_image_folder(root: Path, n_classes: int = 4, n_train: int = 6, n_test: int = 3, size: int = 36,
                       seed: int = 0) -> Path:
    """Images whose colour depends on the class, so even a random encoder separates them a bit."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(n_classes):
            folder = root / split / f"class_{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            base = PALETTE[c % len(PALETTE)]
            for i in range(n):
                noise = rng.integers(-15, 16, size=(size, size, 3))
                arr = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"img_{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "data")
