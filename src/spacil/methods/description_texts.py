"""Description phrases through the frozen text encoder, for the baselines that read them (ENGINE, CLG-CBM).

Both take the same description files as SPA (``descriptions.*``: the dataset folder's
``descriptions.json``, else the shipped file, else prompt templates). Each phrase is written into a
method-specific template (ENGINE: ``"{name} with {phrase}"``; CLG-CBM: the phrase alone, a concept) and
encoded once in the ``prepare`` hook; the normalised [EOS] embeddings are kept in
``ClassTexts.extras[key]`` as a padded ``[C, N, D]`` table with a validity mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..names import readable

if TYPE_CHECKING:
    from ..backbone import FrozenCLIP
    from ..config import Config
    from ..text.class_texts import ClassTexts


@dataclass
class DescriptionEmbeddings:
    """Per class, the embeddings of its phrases (normalised; zero rows where ``mask`` is False)."""

    embeddings: Tensor  # [C, N, D]
    mask: Tensor  # [C, N] bool
    phrases: list[list[str]]

    def to(self, device: torch.device | str) -> "DescriptionEmbeddings":
        return DescriptionEmbeddings(self.embeddings.to(device), self.mask.to(device), self.phrases)

    def mean(self) -> Tensor:
        """``[C, D]``: the normalised mean phrase embedding of each class."""
        total = (self.embeddings * self.mask[..., None]).sum(1)
        return F.normalize(total / self.mask.sum(1, keepdim=True).clamp_min(1), dim=-1)


def check_descriptions(config: "Config") -> None:
    """Read and validate the description file before any feature is extracted (fail fast)."""
    from ..text.class_phrases import find_description_set

    find_description_set(config)


@torch.no_grad()
def add_description_embeddings(config: "Config", backbone: "FrozenCLIP", texts: "ClassTexts", key: str,
                               template: str, batch_size: int = 256) -> dict:
    """Encode every class's phrases with ``template`` (``{name}``, ``{phrase}``) into ``texts.extras[key]``."""
    from ..text.class_phrases import resolve_class_phrases

    resolved = resolve_class_phrases(config, texts.class_names)
    strings = [template.format(name=readable(n), phrase=p) for n, ps in zip(texts.class_names, resolved.phrases)
               for p in ps]
    eos = torch.cat([F.normalize(backbone.encode_texts(strings[i:i + batch_size]).eos.float(), dim=-1).cpu()
                     for i in range(0, len(strings), batch_size)])
    n_max = max(len(p) for p in resolved.phrases)
    table = torch.zeros(len(resolved.phrases), n_max, eos.shape[1])
    mask = torch.zeros(len(resolved.phrases), n_max, dtype=torch.bool)
    offset = 0
    for c, ps in enumerate(resolved.phrases):
        table[c, :len(ps)] = eos[offset:offset + len(ps)]
        mask[c, :len(ps)] = True
        offset += len(ps)
    texts.extras[key] = DescriptionEmbeddings(table, mask, [list(p) for p in resolved.phrases])
    return {"source": resolved.source, "fallback_classes": resolved.fallback_classes}


class ReadsDescriptionPhrases:
    """The ``check``/``prepare`` hooks of a learner that reads every description phrase through the frozen text
    encoder (ENGINE, CLG-CBM): mix in before :class:`Learner`; set ``extras_key`` and ``phrase_template``."""

    extras_key: str

    @classmethod
    def phrase_template(cls, config: "Config") -> str:
        raise NotImplementedError

    @classmethod
    def check(cls, config: "Config") -> None:
        check_descriptions(config)

    @classmethod
    def prepare(cls, config: "Config", backbone: "FrozenCLIP", texts: "ClassTexts") -> dict:
        return add_description_embeddings(config, backbone, texts, cls.extras_key, cls.phrase_template(config))


def description_embeddings(texts: "ClassTexts", key: str, method: str) -> DescriptionEmbeddings:
    """The table ``prepare`` stored, or a one-line error when the learner was built without it."""
    from ..errors import UsageError

    found = texts.extras.get(key)
    if found is None:
        raise UsageError(f"{method} needs description embeddings; run it through the harness (its prepare hook)")
    return found
