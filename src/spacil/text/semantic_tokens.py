"""Semantic tokens: the text features that stand for a class on SPA's patch-level side.

Each class has a few visual-cue phrases ("long upright ears", "fluffy round tail"). The frozen text
encoder turns them into tokens in the joint space, either one token per phrase (its projected [EOS])
or every projected word-token output, or both. Classes have different numbers of tokens, so the result
is padded to ``[C, N_max, D]`` with a validity mask (padded tokens later get zero transport mass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbone import FrozenCLIP
from ..names import readable


@dataclass
class SemanticTokens:
    """Padded per-class token sets (L2-normalised; zero rows where ``mask`` is False)."""

    tokens: Tensor  # [C, N, D]
    mask: Tensor  # [C, N] bool
    description: Tensor  # [C, D] normalised mean of the class's phrase embeddings
    phrases: list[list[str]]  # the phrases behind each class
    token_phrase: Tensor  # [C, N] index of the phrase each token came from (-1 for padding)

    def to(self, device: torch.device | str) -> "SemanticTokens":
        return SemanticTokens(self.tokens.to(device), self.mask.to(device), self.description.to(device),
                              self.phrases, self.token_phrase.to(device))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@torch.no_grad()
def build_semantic_tokens(backbone: FrozenCLIP, class_names: Sequence[str], phrases: Sequence[Sequence[str]],
                          kind: str = "phrase", phrase_template: str = "{phrase}",
                          batch_size: int = 256) -> SemanticTokens:
    """Encode every phrase of every class once and pad the token sets."""
    if len(class_names) != len(phrases):
        raise ValueError("one phrase list per class is needed")
    if kind not in {"phrase", "word", "phrase+word"}:
        raise ValueError(f"unknown semantic token kind {kind!r}")
    empty = [n for n, p in zip(class_names, phrases) if not p]
    if empty:
        raise ValueError(f"classes without phrases: {empty[:5]}")
    texts = [phrase_template.format(phrase=p, name=readable(n)) for n, ps in zip(class_names, phrases) for p in ps]
    eos, words, masks = [], [], []
    for start in range(0, len(texts), batch_size):
        out = backbone.encode_texts(texts[start:start + batch_size])
        eos.append(F.normalize(out.eos, dim=-1).cpu())
        words.append(F.normalize(out.tokens, dim=-1).cpu())
        masks.append(out.mask.cpu())
    eos_all, words_all, mask_all = torch.cat(eos), torch.cat(words), torch.cat(masks)

    per_class: list[tuple[Tensor, Tensor]] = []
    description = []
    offset = 0
    for ps in phrases:
        n = len(ps)
        sets, owners = [], []
        if kind in {"phrase", "phrase+word"}:
            sets.append(eos_all[offset:offset + n])
            owners.append(torch.arange(n))
        if kind in {"word", "phrase+word"}:
            for i in range(n):
                valid = mask_all[offset + i]
                sets.append(words_all[offset + i][valid])
                owners.append(torch.full((int(valid.sum()),), i))
        per_class.append((torch.cat(sets), torch.cat(owners)))
        description.append(F.normalize(eos_all[offset:offset + n].mean(0), dim=-1))
        offset += n

    n_max = max(t.shape[0] for t, _ in per_class)
    dim = eos_all.shape[-1]
    tokens = torch.zeros(len(phrases), n_max, dim)
    mask = torch.zeros(len(phrases), n_max, dtype=torch.bool)
    owner = torch.full((len(phrases), n_max), -1, dtype=torch.long)
    for c, (t, o) in enumerate(per_class):
        tokens[c, : t.shape[0]] = t
        mask[c, : t.shape[0]] = True
        owner[c, : t.shape[0]] = o
    return SemanticTokens(tokens, mask, torch.stack(description), [list(p) for p in phrases], owner)
