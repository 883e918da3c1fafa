"""Description-guided patch selection: which patch tokens of an image speak for a class.

For every (image b, class c) pair each patch gets a relevance to class c's descriptions and the top-k
are kept. Everything is batched over images x classes (one matmul and one top-k), no Python loop over
pairs. The patch score never gathers features: it needs only the similarities of the selected patches
to the class's tokens, so we compute every patch-token similarity first (``[B, C, P, N]``, no feature
axis) and gather from that. Memory then grows with B x C x P x N instead of B x C x P x D, which is what
lets a 300-class step of ViT-B/16 (P = 196, D = 512) fit in a few hundred MB.

Relevance rules (``method.spa.selection.rule``)::

    description:  r[b, c, p] = <x_bp, d_c>                 d_c: mean of c's phrase embeddings
    token_max:    r[b, c, p] = max_n <x_bp, s_cn>           s_cn: c's semantic tokens
    random:       r[b, c, p] = frac(10^4 <x_bp, z_c>)       z_c: a fixed random direction per class (ablation)
    all:          every patch is kept

and, with ``context_weight`` = lambda > 0 (our addition), the image's own context is subtracted::

    r[b, c, p] -= lambda <x_bp, xbar_b>                     xbar_b: normalised mean patch of image b

Background and plain body cover most of an image, so they dominate its mean patch; subtracting it
prefers patches that stand out from their image (the local parts) over a backdrop whose colour happens to
match a colour phrase.
"""

from __future__ import annotations

import torch
from torch import Tensor


def patch_relevance(patches: Tensor, rule: str, description: Tensor | None = None, tokens: Tensor | None = None,
                    token_mask: Tensor | None = None, context_weight: float = 0.0) -> Tensor:
    """Relevance ``[B, C, P]`` of each patch to each class.

    patches: [B, P, D] L2-normalised; description: [C, D] normalised class description embeddings, or
    for rule ``random`` the classes' random directions (:func:`random_directions`): the relevance is then a
    pseudo-random number in [0, 1) per (image, patch, class) that ignores the descriptions, yet is the same
    for an image whatever batch it is scored in; tokens/token_mask:
    [C, N, D] / [C, N] semantic tokens (rule ``token_max``).
    """
    if rule in {"description", "random"}:
        assert description is not None
        relevance = torch.einsum("bpd,cd->bcp", patches, description)
        if rule == "random":  # a hash of the patch: uniform for selection, unrelated to its content's meaning
            return torch.frac((relevance.float() * 1e4).abs())
    elif rule == "token_max":
        assert tokens is not None and token_mask is not None
        relevance = token_max_relevance(token_similarities(patches, tokens), token_mask)
    elif rule == "all":
        b, p, _ = patches.shape
        c = description.shape[0] if description is not None else tokens.shape[0]  # type: ignore[union-attr]
        return torch.zeros(b, c, p, device=patches.device, dtype=patches.dtype)
    else:
        raise ValueError(f"unknown selection rule {rule!r}")
    return subtract_context(patches, relevance, context_weight)


def random_directions(n_classes: int, dim: int, seed: int) -> Tensor:
    """``[n_classes, dim]`` unit vectors; class c's depends only on ``(seed, c)``, so adding classes later
    never changes an old class's direction."""
    rows = [torch.randn(dim, generator=torch.Generator().manual_seed(seed * 1_000_003 + c)) for c in range(n_classes)]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def subtract_context(patches: Tensor, relevance: Tensor, weight: float) -> Tensor:
    """``relevance - weight * <x_bp, normalised mean patch of image b>`` (no-op for weight 0)."""
    if weight == 0:
        return relevance
    context = torch.nn.functional.normalize(patches.mean(dim=1), dim=-1)  # [B, D]
    return relevance - weight * torch.einsum("bpd,bd->bp", patches, context)[:, None]


def token_similarities(patches: Tensor, tokens: Tensor) -> Tensor:
    """Cosine of every patch to every class token, ``[B, C, P, N]`` (inputs normalised)."""
    return torch.einsum("bpd,cnd->bcpn", patches, tokens)


def token_max_relevance(similarities: Tensor, token_mask: Tensor) -> Tensor:
    """``[B, C, P]``: each patch's best similarity over the class's valid tokens."""
    return similarities.masked_fill(~token_mask[None, :, None, :], float("-inf")).amax(dim=-1)


def top_k_indices(relevance: Tensor, k: int) -> Tensor:
    """Indices ``[B, C, k]`` of the ``k`` most relevant patches per (image, class) (k clipped to P)."""
    return relevance.topk(min(k, relevance.shape[-1]), dim=-1, sorted=False).indices


def gather_selected(similarities: Tensor, index: Tensor) -> Tensor:
    """Similarities ``[B, C, k, N]`` of the selected patches, from ``[B, C, P, N]`` and ``[B, C, k]``."""
    return torch.gather(similarities, 2, index.unsqueeze(-1).expand(*index.shape, similarities.shape[-1]))


def selected_mean(patches: Tensor, index: Tensor) -> Tensor:
    """Mean selected patch feature per (image, class), ``[B, C, D]``, through a sparse selection matrix."""
    b, p, _ = patches.shape
    weights = torch.zeros(b, index.shape[1], p, device=patches.device, dtype=patches.dtype)
    weights.scatter_(2, index, 1.0 / index.shape[2])
    return torch.einsum("bcp,bpd->bcd", weights, patches)


def select_top_k(patches: Tensor, relevance: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Gather the ``k`` most relevant patch features per (image, class): ``([B, C, k, D], [B, C, k])``.

    Materialises ``[B, C, k, D]``: meant for inspection and small inputs, not for the scoring path.
    """
    b, p, d = patches.shape
    index = top_k_indices(relevance, k)
    c, k = relevance.shape[1], index.shape[2]
    gathered = torch.gather(patches.unsqueeze(1).expand(b, c, p, d), 2, index.unsqueeze(-1).expand(b, c, k, d))
    return gathered, index
