"""Task-specific projectors: small trainable adapters on top of frozen CLIP features.

Each task adds a residual bottleneck adapter ``x -> x + up(gelu(down(x)))`` whose ``up`` starts at
zero, so a new projector starts as the identity and the model starts from frozen CLIP. Older
projectors are frozen; the adapted feature is ``normalize(x + sum_t delta_t(x))``. With
``per_task=False`` a single shared adapter keeps training across tasks (ablation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResidualAdapter(nn.Module):
    """``x -> up(gelu(down(x)))`` (the residual is added by :class:`ProjectorStack`)."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        with torch.no_grad():
            nn.init.normal_(self.down.weight, std=dim ** -0.5, generator=generator)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.gelu(self.down(x)))


class ProjectorStack(nn.Module):
    """The adapters of all tasks so far for one modality (visual or text)."""

    def __init__(self, dim: int, hidden: int, per_task: bool) -> None:
        super().__init__()
        self.dim, self.hidden, self.per_task = dim, hidden, per_task
        self.adapters = nn.ModuleList()

    def add_task(self, generator: torch.Generator) -> None:
        """Freeze what exists and add a new adapter; shared mode adds one the first time and then keeps
        training that same adapter on every task."""
        if self.per_task or not self.adapters:
            for adapter in self.adapters:
                adapter.requires_grad_(False)
            self.adapters.append(ResidualAdapter(self.dim, self.hidden, generator))
        else:
            self.adapters[0].requires_grad_(True)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised adapted features; the input is L2-normalised first."""
        x = F.normalize(x, dim=-1)
        out = x
        for adapter in self.adapters:
            out = out + adapter(x)
        return F.normalize(out, dim=-1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
