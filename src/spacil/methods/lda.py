"""Linear discriminant analysis over classes that arrive in tasks, as ENGINE's inference uses it.

With a frozen encoder the pooled within-class scatter ``S = sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T``
and the sample count only grow, so the LDA of all classes seen so far is exact without old data.
ENGINE's covariance estimate (C3Box ``utils/inc_net.py``, ``Engine.update_stat``) with ``n`` samples::

    Sigma^-1 = d · pinv( S + tr(S / (n - 1)) I )        (S / (n - 1): the pooled sample covariance)
    logit_c(x) = x^T Sigma^-1 mu_c - mu_c^T Sigma^-1 mu_c / 2 + log(1 / C)

This is scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=d / (n - 1 + d))`` with
uniform priors, up to the positive factor on the class-dependent part (``d`` times scikit-learn's
covariance scale), which changes no argmax.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class IncrementalLDA:
    """Class means and pooled within-class scatter, added task by task (float64)."""

    def __init__(self) -> None:
        self.means: Tensor | None = None  # [C, d]
        self.scatter: Tensor | None = None  # [d, d]
        self.count = 0
        self.weight: Tensor | None = None  # [d, C]
        self.bias: Tensor | None = None  # [C]

    def add(self, features: Tensor, labels: Tensor, classes: range) -> None:
        x = features.double()
        means = torch.stack([x[labels == c].mean(0) for c in classes])
        centred = torch.cat([x[labels == c] - means[i] for i, c in enumerate(classes)])
        scatter = centred.T @ centred
        self.means = means if self.means is None else torch.cat([self.means, means])
        self.scatter = scatter if self.scatter is None else self.scatter + scatter
        self.count += len(centred)
        self._solve()

    def _solve(self) -> None:
        d = self.scatter.shape[0]
        eye = torch.eye(d, dtype=self.scatter.dtype, device=self.scatter.device)
        shrunk = self.scatter + torch.trace(self.scatter) / (self.count - 1) * eye
        precision = d * torch.linalg.pinv(shrunk)
        self.weight = precision @ self.means.T
        self.bias = math.log(1.0 / len(self.means)) - 0.5 * (self.means * self.weight.T).sum(-1)

    def logits(self, x: Tensor) -> Tensor:
        """``[N, C]`` discriminant scores (float32)."""
        return (x.double() @ self.weight + self.bias).float()

    def state(self) -> dict[str, Tensor]:
        if self.means is None:
            return {}
        return {"lda.means": self.means.cpu(), "lda.scatter": self.scatter.cpu(),
                "lda.count": torch.tensor(self.count)}

    def load(self, state: dict[str, Tensor], device: torch.device) -> None:
        self.means, self.scatter = state["lda.means"].to(device), state["lda.scatter"].to(device)
        self.count = int(state["lda.count"])
        self._solve()
