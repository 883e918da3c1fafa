"""Description-guided patch selection: which patch tokens of an image speak for a class.

For every (image b, class c) pair we score each patch by its relevance to class c's descriptions and
keep the top-k. Everything is batched over images x classes (one matmul and one top-k), no Python
loop over pairs. The selected tokens are gathered into ``[B, C, k, D]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def patch_relevance(patches: Tensor, rule: str, description: Tensor | None = None, tokens: Tensor | None = None,
                    token_mask: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Relevance ``[B, C, P]`` of each patch to each class.

    patches: [B, P, D] L2-normalised; description: [C, D] normalised class description embeddings;
    tokens/token_mask: [C, N, D] / [C, N] semantic tokens (rule ``token_max``). ``random`` draws
    scores from ``generator`` (ablation: selection that ignores the descriptions).
    """
    if rule == "description":
        assert description is not None
        return torch.einsum("bpd,cd->bcp", patches, description)
    if rule == "token_max":
        assert tokens is not None and token_mask is not None
        sim = torch.einsum("bpd,cnd->bcpn", patches, tokens)
        return sim.masked_fill(~token_mask[None, :, None, :], float("-inf")).amax(dim=-1)
    if rule in {"random", "all"}:
        b, p, _ = patches.shape
        c = description.shape[0] if description is not None else tokens.shape[0]  # type: ignore[union-attr]
        if rule == "all":
            return torch.zeros(b, c, p, device=patches.device, dtype=patches.dtype)
        return torch.rand(b, c, p, generator=generator, device=patches.device, dtype=patches.dtype)
    raise ValueError(f"unknown selection rule {rule!r}")


def select_top_k(patches: Tensor, relevance: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Gather the ``k`` most relevant patches per (image, class): ``([B, C, k, D], [B, C, k] indices)``."""
    b, p, d = patches.shape
    k = min(k, p)
    index = relevance.topk(k, dim=-1, sorted=False).indices  # [B, C, k]
    c = relevance.shape[1]
    gathered = torch.gather(patches.unsqueeze(1).expand(b, c, p, d), 2, index.unsqueeze(-1).expand(b, c, k, d))
    return gathered, index
