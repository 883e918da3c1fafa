"""Per-class Gaussians of frozen features, and pseudo-features drawn from them (RAPF, CLG-CBM).

With a frozen encoder the statistics of an old class never go stale, so ``N(mu_c, Sigma_c + eps I)``
stands in for its images in later tasks. Sampling is ``mu + L z`` with ``L L^T = Sigma + eps I``
(Cholesky) and ``z ~ N(0, I)`` from the caller's generator; ``eps = 1e-4`` in both references.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ClassGaussians:
    """Means ``[C, D]`` and Cholesky factors ``[C, D, D]`` of the classes added so far, in label order."""

    def __init__(self, eps: float) -> None:
        self.eps = eps
        self.means: Tensor | None = None
        self.chol: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.means is None else int(self.means.shape[0])

    def add(self, features: Tensor, labels: Tensor, classes: range) -> None:
        """Fit one Gaussian per class of ``classes`` (sample covariance, ``n - 1``) and append it."""
        means, chols = [], []
        for c in classes:
            x = features[labels == c].double()
            if len(x) < 2:
                raise ValueError(f"class {c}: a covariance needs at least 2 samples, got {len(x)}")
            cov = torch.cov(x.T) + self.eps * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
            means.append(x.mean(0))
            chols.append(torch.linalg.cholesky(cov))
        new_m, new_l = torch.stack(means).float(), torch.stack(chols).float()
        self.means = new_m if self.means is None else torch.cat([self.means, new_m])
        self.chol = new_l if self.chol is None else torch.cat([self.chol, new_l])

    def sample(self, classes: Tensor, generator: torch.Generator) -> Tensor:
        """One pseudo-feature per entry of ``classes`` (repeat a label to draw several)."""
        assert self.means is not None and self.chol is not None
        z = torch.randn(len(classes), self.means.shape[1], generator=generator, device=generator.device)
        z = z.to(self.means.device)
        return self.means[classes] + torch.einsum("nij,nj->ni", self.chol[classes], z)

    def state(self, prefix: str) -> dict[str, Tensor]:
        return {} if self.means is None else {f"{prefix}means": self.means.cpu(), f"{prefix}chol": self.chol.cpu()}

    def load(self, state: dict[str, Tensor], prefix: str, device: torch.device) -> None:
        if f"{prefix}means" in state:
            self.means = state[f"{prefix}means"].to(device)
            self.chol = state[f"{prefix}chol"].to(device)
