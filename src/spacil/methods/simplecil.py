"""SimpleCIL: class prototypes (mean frozen [CLS] features) as a cosine classifier.

It is the strongest training-free baseline of the LAMDA line: adding a class never changes the old
prototypes, so it cannot forget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..errors import UsageError
from ..schema import StrictModel
from .base import FeatureBatch, Learner, TaskContext
from .registry import register_method


class SimpleCILConfig(StrictModel):
    """SimpleCIL: a cosine classifier whose weights are class-mean frozen features (prototypes)."""

    logit_scale: float = Field(16.0, gt=0)


@register_method("simplecil", config=SimpleCILConfig)
class SimpleCIL(Learner):
    """SimpleCIL: cosine classifier on class-mean frozen [CLS] features (prototypes)."""

    def __init__(self, config: SimpleCILConfig) -> None:
        self.config = config
        self.prototypes: Tensor | None = None  # [n_seen, D], L2-normalised

    def learn_task(self, ctx: TaskContext, train: FeatureBatch) -> dict:
        feats = F.normalize(train.global_.to(ctx.device), dim=-1)
        labels = train.labels.to(ctx.device)
        n_new = len(ctx.new_classes)
        offset = ctx.new_classes.start
        sums = torch.zeros(n_new, feats.shape[1], device=ctx.device).index_add_(0, labels - offset, feats)
        counts = torch.bincount(labels - offset, minlength=n_new)
        if (counts == 0).any():
            missing = [offset + int(i) for i in torch.nonzero(counts == 0).flatten()]
            raise UsageError(f"task {ctx.task}: no training samples for classes {missing}")
        new = F.normalize(sums / counts[:, None], dim=-1)
        self.prototypes = new if self.prototypes is None else torch.cat([self.prototypes.to(ctx.device), new])
        return {"n_prototypes": int(self.prototypes.shape[0])}

    def logits(self, batch: FeatureBatch, n_seen: int) -> Tensor:
        assert self.prototypes is not None, "learn_task must run before logits"
        image = F.normalize(batch.global_, dim=-1)
        return self.config.logit_scale * image @ self.prototypes[:n_seen].T

    def trainable_state(self) -> dict[str, Tensor]:
        return {} if self.prototypes is None else {"prototypes": self.prototypes.detach().cpu()}

    def load_trainable_state(self, state, ctx: TaskContext) -> None:
        self.prototypes = state["prototypes"].to(ctx.device)
