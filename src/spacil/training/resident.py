"""A split's frozen features copied onto the training device once, for every stage's evaluation.

Evaluation scores every seen test image after every task. Read from the memory-mapped cache each time,
that is the whole seen test split through the host at every stage (about 33 GB for a 30k-image, 10-task
ViT-B/16 run) for a few milliseconds of GPU work per batch. Held on the device (patches in their storage
dtype, fp16 by default: ~200 KB per ViT-B/16 image) it is read and checked for NaN/inf once per run.
``train.eval_features=stream`` keeps the old behaviour where device memory is short.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..features import FeatureSet
from ..methods import FeatureBatch

logger = logging.getLogger(__name__)


@dataclass
class ResidentFeatures:
    """Rows of a feature set on one device: global float32, patches in their storage dtype, new labels."""

    global_: Tensor  # [N, D]
    patches: Tensor  # [N, P, D]
    labels: Tensor  # [N] long

    @classmethod
    def load(cls, features: FeatureSet, new_labels: np.ndarray, device: torch.device,
             chunk_rows: int = 1024) -> "ResidentFeatures":
        """Copy every row of ``features`` to ``device`` chunk by chunk, checking each chunk finite once."""
        n = len(features)
        pin = device.type == "cuda"
        storage = torch.from_numpy(np.zeros(0, dtype=features.patches.dtype)).dtype
        global_ = torch.empty((n, features.embed_dim), dtype=torch.float32, device=device)
        patches = torch.empty((n, features.num_patches, features.embed_dim), dtype=storage, device=device)
        for start in range(0, n, chunk_rows):
            rows = np.arange(start, min(start + chunk_rows, n))
            g = np.asarray(features.global_[start:rows[-1] + 1], dtype=np.float32)
            p = np.array(features.patches[start:rows[-1] + 1])  # a writable copy of the memory-mapped rows
            features.check_finite(rows, (g, p))
            for host, target in ((g, global_), (p, patches)):
                block = torch.from_numpy(host)
                target[start:start + len(rows)].copy_(block.pin_memory() if pin else block, non_blocking=pin)
        labels = torch.from_numpy(np.asarray(new_labels, dtype=np.int64)).to(device)
        logger.debug("%d rows of %s held on %s", n, features.location or "features", device)
        return cls(global_, patches, labels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, rows: Tensor) -> FeatureBatch:
        """The rows ``rows`` (a long tensor on this device) as a feature batch."""
        return FeatureBatch(self.global_[rows], self.patches[rows], self.labels[rows])
