"""Zero-shot CLIP (Continual-CLIP): nothing is trained; images are matched to class prompts."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..schema import StrictModel
from .base import FeatureBatch, Learner, TaskContext
from .registry import register_method


class ZeroShotConfig(StrictModel):
    """Continual-CLIP: classify by similarity of the image to the class prompts; nothing is trained."""

    logit_scale: float = Field(100.0, gt=0)


@register_method("zeroshot", config=ZeroShotConfig, features=("global", "prompts"))
class ZeroShotCLIP(Learner):
    """Zero-shot CLIP (Continual-CLIP): cosine of the frozen [CLS] to each seen class's prompt."""

    def __init__(self, config: ZeroShotConfig) -> None:
        self.config = config
        self.prompts: Tensor | None = None

    def learn_task(self, ctx: TaskContext, train: FeatureBatch) -> dict:
        self.prompts = F.normalize(ctx.texts.prompt_embeddings.to(ctx.device), dim=-1)
        return {}

    def logits(self, batch: FeatureBatch, n_seen: int) -> Tensor:
        assert self.prompts is not None, "learn_task must run before logits"
        image = F.normalize(batch.global_, dim=-1)
        return self.config.logit_scale * image @ self.prompts[:n_seen].T

    def load_trainable_state(self, state, ctx: TaskContext) -> None:
        super().load_trainable_state(state, ctx)
        self.learn_task(ctx, None)  # type: ignore[arg-type]
