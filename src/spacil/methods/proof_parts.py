"""PROOF's building blocks: herding exemplar selection, the cross-modal fusion attention, the CLIP loss.

Herding (Rebuffi et al., iCaRL; the LAMDA toolboxes' ``_construct_exemplar_unified``): on L2-normalised
frozen features ``v_i`` of one class with mean ``mu``, pick greedily ``i_k = argmin_i || mu - (S_{k-1} +
v_i) / k ||`` over the not yet picked ``i``, where ``S_{k-1}`` is the sum of the ``k - 1`` picked vectors.

Fusion attention (PROOF's ``MultiHeadAttention`` with one head): per image the token set
``[image, class texts, class prototypes, context prompts]`` goes through
``LN(x + W_o softmax(Q K^T / sqrt(d)) V)`` with bias-free ``Q, K, V`` maps (dropout on the attention
weights and on the output while training, as the reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .seeded import dropout, linear


def herding(features: Tensor, m: int) -> Tensor:
    """Indices of ``m`` exemplars of one class, in the order herding picks them."""
    v = F.normalize(features.double(), dim=-1)
    mu = v.mean(0)
    picked: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(v), dtype=torch.bool, device=v.device)
    for k in range(1, min(m, len(v)) + 1):
        dist = ((mu - (running + v) / k) ** 2).sum(-1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        picked.append(i)
        available[i] = False
        running = running + v[i]
    return torch.tensor(picked, dtype=torch.long, device=features.device)


class FusionAttention(nn.Module):
    """One-head self-attention over a token set with residual and LayerNorm, initialised as PROOF does
    (``N(0, 2 / (2d))`` for ``Q, K, V``, Xavier-normal output map)."""

    def __init__(self, dim: int, dropout_p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.dim, self.dropout_p = dim, dropout_p
        std = math.sqrt(2.0 / (2 * dim))
        self.q, self.k, self.v = (linear(dim, dim, generator, bias=False) for _ in range(3))
        self.out = linear(dim, dim, generator)
        self.norm = nn.LayerNorm(dim, device=generator.device)
        with torch.no_grad():
            for layer in (self.q, self.k, self.v):
                layer.weight.normal_(0.0, std, generator=generator)
            self.out.weight.normal_(0.0, math.sqrt(2.0 / (2 * dim)), generator=generator)  # Xavier normal

    def forward(self, tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``tokens [B, L, d]`` -> ``[B, L, d]``; ``generator`` draws the dropout masks in training mode."""
        scores = self.q(tokens) @ self.k(tokens).transpose(1, 2) / math.sqrt(self.dim)
        attn = dropout(scores.softmax(-1), self.dropout_p, self.training, generator)
        mixed = dropout(self.out(attn @ self.v(tokens)), self.dropout_p, self.training, generator)
        return self.norm(mixed + tokens)


def clip_loss(image: Tensor, text: Tensor, scale: float) -> Tensor:
    """CLIP's symmetric contrastive loss over a batch of matched (image, text) pairs (row i with row i)."""
    logits = scale * image @ text.T
    target = torch.arange(len(image), device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
