"""Text-side features of the classes of a scenario, computed once per run with the frozen text encoder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbone import FrozenCLIP
from ..names import readable

if TYPE_CHECKING:
    from .semantic_tokens import SemanticTokens

logger = logging.getLogger(__name__)


@dataclass
class ClassTexts:
    """Text features in new-label order (index i = the i-th class of the scenario)."""

    class_names: list[str]
    prompt_embeddings: Tensor  # [C, D] L2-normalised mean over prompt templates
    semantic: "SemanticTokens | None" = None  # description tokens (SPA's patch-level side), when needed
    extras: dict[str, Any] = field(default_factory=dict)  # other methods' text features, by "<method>.<what>"

    def __len__(self) -> int:
        return len(self.class_names)


@torch.no_grad()
def encode_prompts(backbone: FrozenCLIP, class_names: Sequence[str], templates: Sequence[str],
                   batch_size: int = 256) -> Tensor:
    """[C, D] normalised class embeddings averaged over ``templates`` (e.g. ``"a photo of a {}."``)."""
    if not templates:
        raise ValueError("at least one prompt template is needed")
    texts = [t.format(readable(n)) for n in class_names for t in templates]
    chunks = [backbone.encode_texts(texts[i:i + batch_size]).eos for i in range(0, len(texts), batch_size)]
    emb = F.normalize(torch.cat(chunks), dim=-1).reshape(len(class_names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1).cpu()


def build_class_texts(backbone: FrozenCLIP, class_names: Sequence[str], templates: Sequence[str]) -> ClassTexts:
    return ClassTexts(list(class_names), encode_prompts(backbone, class_names, templates))
