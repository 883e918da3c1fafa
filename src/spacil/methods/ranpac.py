"""RanPAC-style random-projection classifier on frozen features (McDonnell et al., NeurIPS 2023).

The frozen, L2-normalised [CLS] feature ``x`` is lifted by a fixed random projection with a ReLU,
``h = relu(x W)``, ``W ~ N(0, 1)^{D x M}``, where classes are closer to linearly separable; a ridge
regression onto one-hot targets is then solved in closed form from statistics that only grow::

    G = sum_i h_i h_i^T  [M, M]      Q = sum_i h_i y_i^T  [M, C]      W_o = (G + lambda I)^{-1} Q

Adding a task adds its samples to ``G`` and ``Q`` and re-solves: nothing old is stored but these sums,
and the result is the same as fitting all tasks' data at once, so it does not forget through training
order. ``lambda`` is chosen per task on a held-out part of the new data (as RanPAC does), unless fixed.
Defaults are the reference's: ``M = 10,000`` and ``lambda`` in ``10^-8 .. 10^13`` (RanPAC's
``RanPAC.py``, ``optimise_ridge_parameter``; C3Box ``utils/inc_net.py`` ``SimpleVitNet.RP_dim``). At
``M = 10,000`` every solve is a 10,000 x 10,000 system: the CPU demo preset sets ``projection_dim``
to 1,024. Not included: RanPAC's first-task adaptation of the backbone (ours stays frozen).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from ..schema import StrictModel
from .base import FeatureBatch, Learner, TaskContext
from .registry import register_method


class RanPACConfig(StrictModel):
    """RanPAC: fixed random ReLU projection, ridge-regression classifier from accumulated statistics."""

    projection_dim: int = Field(10_000, ge=1, description="M, width of the random projection (reference: "
                                "10,000; memory and time grow as M^2 and M^3).")
    ridge: float | None = Field(None, gt=0, description="Fixed ridge lambda; none = chosen per task from ridge_grid.")
    ridge_grid: list[float] = Field(default_factory=lambda: [10.0 ** e for e in range(-8, 14)],
                                    description="Candidate lambdas, scored by holdout mean squared error.")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the new task's samples held out to "
                                    "choose lambda (all samples are used for the final fit).")

    @field_validator("ridge_grid")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v):
            raise ValueError("ridge_grid needs at least one value, all > 0")
        return v


def _solve(gram: Tensor, targets: Tensor, ridge: float) -> Tensor:
    """``(G + lambda I)^{-1} Q`` in float64 (the Gram matrix is badly conditioned for small lambda)."""
    eye = torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    return torch.linalg.solve(gram.double() + ridge * eye, targets.double()).float()


@register_method("ranpac", config=RanPACConfig)
class RanPAC(Learner):
    """RanPAC-style: random ReLU projection of frozen [CLS] features, incremental ridge classifier."""

    def __init__(self, config: RanPACConfig) -> None:
        self.config = config
        self.projection: Tensor | None = None  # [D, M]
        self.gram: Tensor | None = None  # [M, M]
        self.targets: Tensor | None = None  # [M, n_seen]
        self.weights: Tensor | None = None  # [M, n_seen]
        self.ridges: list[float] = []

    def _lift(self, global_: Tensor) -> Tensor:
        return F.relu(F.normalize(global_.float(), dim=-1) @ self.projection)

    def _grow(self, n_seen: int, device: torch.device) -> None:
        m = self.config.projection_dim
        if self.gram is None:
            self.gram = torch.zeros(m, m, device=device)
            self.targets = torch.zeros(m, 0, device=device)
        extra = n_seen - self.targets.shape[1]
        self.targets = torch.cat([self.targets, torch.zeros(m, extra, device=device)], dim=1)

    def _choose_ridge(self, h: Tensor, y: Tensor, generator: torch.Generator) -> float:
        """Lambda with the least holdout squared error, fitting on earlier tasks plus the rest of this one."""
        if self.config.ridge is not None:
            return self.config.ridge
        n_hold = int(round(self.config.holdout_fraction * len(h)))
        if n_hold < 1 or n_hold >= len(h):
            return self.config.ridge_grid[len(self.config.ridge_grid) // 2]
        order = torch.randperm(len(h), generator=generator).to(h.device)
        hold, fit = order[:n_hold], order[n_hold:]
        gram = self.gram + h[fit].T @ h[fit]
        targets = self.targets + h[fit].T @ y[fit]
        errors = [float(((h[hold] @ _solve(gram, targets, lam) - y[hold]) ** 2).mean())
                  for lam in self.config.ridge_grid]
        return self.config.ridge_grid[min(range(len(errors)), key=errors.__getitem__)]

    def learn_task(self, ctx: TaskContext, train: FeatureBatch) -> dict:
        generator = torch.Generator().manual_seed(ctx.seed)
        if self.projection is None:  # drawn once, at the first task, then fixed
            dim = train.global_.shape[1]
            self.projection = torch.randn(dim, self.config.projection_dim, generator=generator).to(ctx.device)
        self._grow(ctx.n_seen, ctx.device)
        h = self._lift(train.global_.to(ctx.device))
        y = F.one_hot(train.labels.to(ctx.device), ctx.n_seen).float()
        ridge = self._choose_ridge(h, y, generator)
        self.gram += h.T @ h
        self.targets += h.T @ y
        self.ridges.append(ridge)
        self.weights = _solve(self.gram, self.targets, ridge)
        return {"ridge": ridge}

    def logits(self, batch: FeatureBatch, n_seen: int) -> Tensor:
        assert self.weights is not None, "learn_task must run before logits"
        return self._lift(batch.global_) @ self.weights[:, :n_seen]

    def trainable_state(self) -> dict[str, Tensor]:
        if self.projection is None:
            return {}
        return {"projection": self.projection.cpu(), "gram": self.gram.cpu(), "targets": self.targets.cpu(),
                "ridges": torch.tensor(self.ridges, dtype=torch.float64)}

    def load_trainable_state(self, state: dict[str, Tensor], ctx: TaskContext) -> None:
        self.projection = state["projection"].to(ctx.device)
        self.gram = state["gram"].to(ctx.device)
        self.targets = state["targets"].to(ctx.device)
        self.ridges = state["ridges"].tolist()
        self.weights = _solve(self.gram, self.targets, self.ridges[-1])
