"""Gaussian old-class calibration: class statistics now, pseudo-features later.

After a task, each new class's features are summarised by a mean and a shrunk covariance. While a
later task trains, pseudo-features of the old classes are sampled from these Gaussians and pass through
the current projectors, so the classifier keeps seeing the old classes without storing images.

Which features are modelled: the L2-normalised *frozen* CLIP features (the projectors' inputs). The
backbone never changes, so these statistics never go stale, unlike statistics of adapted features.
For the patch branch we model, per class, the patch tokens its own descriptions select (top-k); a
pseudo image is then k tokens drawn from that Gaussian (``replay.patch_mode``).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ...errors import UsageError

logger = logging.getLogger(__name__)


def shrunk_covariance(x: Tensor, shrinkage: float) -> tuple[Tensor, Tensor]:
    """Mean and ``(1 - a) * S + a * (tr(S) / D) * I`` of samples ``x`` [n, D] (float64 for stability)."""
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    n, d = x.shape
    cov = centred.T @ centred / max(n - 1, 1)
    target = torch.eye(d, dtype=x.dtype, device=x.device) * (torch.trace(cov) / d).clamp_min(1e-12)
    return mean, (1 - shrinkage) * cov + shrinkage * target


def safe_cholesky(cov: Tensor, max_tries: int = 8) -> Tensor:
    """Cholesky factor, adding growing diagonal jitter until the matrix is positive definite."""
    jitter = 0.0
    scale = float(torch.diagonal(cov).mean().clamp_min(1e-12))
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    for attempt in range(max_tries):
        factor, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if int(info) == 0:
            if jitter:
                logger.debug("cholesky needed jitter %.2e", jitter)
            return factor
        jitter = scale * 10.0 ** (attempt - 6)
    raise FloatingPointError("covariance is not positive definite even with jitter")


class GaussianBank:
    """Per-class Gaussians over feature vectors (global features, or single patch tokens)."""

    def __init__(self, shrinkage: float) -> None:
        self.shrinkage = shrinkage
        self.means: dict[int, Tensor] = {}
        self.factors: dict[int, Tensor] = {}  # Cholesky factors

    def __len__(self) -> int:
        return len(self.means)

    @property
    def classes(self) -> list[int]:
        return sorted(self.means)

    def add_class(self, label: int, samples: Tensor) -> None:
        if samples.shape[0] < 2:
            raise UsageError(f"class {label}: at least 2 samples are needed for a covariance")
        mean, cov = shrunk_covariance(samples, self.shrinkage)
        self.means[label] = mean.float()
        self.factors[label] = safe_cholesky(cov).float()

    def sample(self, labels: list[int], per_class: int, generator: torch.Generator, device: torch.device,
               tokens_per_sample: int | None = None) -> tuple[Tensor, Tensor]:
        """Pseudo-features ``[n, D]`` (or ``[n, tokens_per_sample, D]``) and their labels ``[n]``.

        ``labels`` may repeat a class (one entry per pseudo-sample): each class's Cholesky factor is then
        used once for all its entries instead of being stacked per entry (``[n, D, D]``: 1 MB per entry at
        D = 512). The random stream is the same either way: one normal draw shaped by ``len(labels)``.
        """
        classes = list(dict.fromkeys(labels))  # first appearance order
        means = torch.stack([self.means[c] for c in classes]).to(device)  # [U, D]
        factors = torch.stack([self.factors[c] for c in classes]).to(device)  # [U, D, D]
        shape = (len(labels), per_class * (tokens_per_sample or 1), means.shape[1])
        z = torch.randn(shape, generator=generator, device=device)
        if len(classes) == len(labels):
            x = means[:, None, :] + torch.einsum("cij,cnj->cni", factors, z)
        else:
            x = torch.empty_like(z)
            for i, c in enumerate(classes):
                rows = torch.tensor([j for j, label in enumerate(labels) if label == c], device=device)
                x[rows] = means[i] + z[rows] @ factors[i].T
        y = torch.tensor(labels, device=device).repeat_interleave(per_class)
        if tokens_per_sample:
            return x.reshape(len(labels) * per_class, tokens_per_sample, -1), y
        return x.reshape(len(labels) * per_class, -1), y

    def state(self, prefix: str) -> dict[str, Tensor]:
        if not self.means:
            return {}
        labels = self.classes
        return {f"{prefix}.labels": torch.tensor(labels),
                f"{prefix}.means": torch.stack([self.means[c] for c in labels]).cpu(),
                f"{prefix}.factors": torch.stack([self.factors[c] for c in labels]).cpu()}

    def load_state(self, state: dict[str, Tensor], prefix: str, device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state` onto ``device``: the classes a later task adds are computed there, and one
        bank must not mix devices (sampling stacks all of its classes)."""
        self.means, self.factors = {}, {}
        if f"{prefix}.labels" not in state:
            return
        means, factors = state[f"{prefix}.means"].to(device), state[f"{prefix}.factors"].to(device)
        for i, c in enumerate(state[f"{prefix}.labels"].tolist()):
            self.means[c] = means[i]
            self.factors[c] = factors[i]
