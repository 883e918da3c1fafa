"""Batched, masked, log-domain entropic optimal transport (Sinkhorn) in torch.

SPA scores every (image, class) pair by transporting the image's selected patch tokens onto the
class's semantic tokens. That is B x C small OT problems at once, with ragged sizes (classes have
different numbers of description tokens, images may contribute a padded number of patches), so the
solver works on padded tensors and treats zero-mass entries as absent.

Convention (same as POT's ``ot.sinkhorn(a, b, M, reg)``): the plan solves

    min_P <P, C> + eps * sum_ij P_ij log P_ij   s.t.  P 1 = a,  P^T 1 = b,

so ``P = diag(e^f) exp(-C / eps) diag(e^g)`` with dual log-scalings ``f`` and ``g``.
"""

from __future__ import annotations

import itertools
import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["ot_score", "sinkhorn_log", "sinkhorn_loop_reference", "uniform_masses"]


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 when an input already is: half precision never reaches the iterations."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_args(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int) -> torch.Size:
    """Validate shapes and scalars (never tensor values: no host sync); return the broadcast batch shape."""
    if cost.dim() < 2:
        raise ValueError(f"cost must be [..., M, N], got shape {tuple(cost.shape)}")
    if a.dim() < 1 or a.shape[-1] != cost.shape[-2]:
        raise ValueError(f"a must be [..., M={cost.shape[-2]}], got shape {tuple(a.shape)}")
    if b.dim() < 1 or b.shape[-1] != cost.shape[-1]:
        raise ValueError(f"b must be [..., N={cost.shape[-1]}], got shape {tuple(b.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if n_iters < 0:
        raise ValueError(f"n_iters must be >= 0, got {n_iters}")
    try:
        return torch.broadcast_shapes(cost.shape[:-2], a.shape[:-1], b.shape[:-1])
    except RuntimeError as err:
        raise ValueError(
            f"leading dims do not broadcast: cost {tuple(cost.shape)}, a {tuple(a.shape)}, b {tuple(b.shape)}"
        ) from err


def _broadcast_problems(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int
                        ) -> tuple[Tensor, Tensor, Tensor, torch.Size]:
    """Validated inputs in the compute dtype, expanded to the common batch shape (call with autocast off)."""
    batch = _check_args(cost, a, b, eps, n_iters)
    m, n = cost.shape[-2:]
    dtype = _compute_dtype(cost, a, b)
    return cost.to(dtype).expand(*batch, m, n), a.to(dtype).expand(*batch, m), b.to(dtype).expand(*batch, n), batch


def _safe_log(masses: Tensor, valid: Tensor) -> Tensor:
    """log of the valid masses, 0 elsewhere; log is never evaluated at 0 so backward stays finite."""
    return torch.log(torch.where(valid, masses, torch.ones_like(masses)))


def sinkhorn_log(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int) -> Tensor:
    """Entropic OT plans for a batch of padded problems, by a fixed number of log-domain Sinkhorn steps.

    Args:
        cost: [..., M, N] cost matrices.
        a: [..., M] source masses; entries with mass 0 are padding (absent rows).
        b: [..., N] target masses; entries with mass 0 are padding (absent columns).
            Leading dims of ``a`` and ``b`` broadcast against those of ``cost``
            (e.g. cost [B, C, M, N], a [B, C, M], b [C, N] or [1, C, N]).
        eps: entropic regularisation, plan ∝ exp(-cost / eps) (POT's ``reg``).
        n_iters: number of (row, column) scaling steps; fixed, with no convergence check, so the
            loop never synchronises with the device.

    Returns:
        [..., M, N] plans (float32, or float64 for float64 inputs). Padded rows/columns are exactly
        zero, and the valid block equals the plan of the unpadded problem. Each step updates the row
        potential then the column potential, so the column marginals are exact and the row marginals
        converge with ``n_iters``.

    Zero masses are excluded by masking rather than log(0) = -inf, which keeps all-padding problems
    (plan = 0) and every gradient finite. Autocast is disabled inside: small eps makes exp/logsumexp
    unusable in bf16/fp16.
    """
    with torch.autocast(device_type=cost.device.type, enabled=False):
        cost, a, b, _ = _broadcast_problems(cost, a, b, eps, n_iters)
        dtype = cost.dtype
        valid_a = a > 0
        valid_b = b > 0
        valid = valid_a.unsqueeze(-1) & valid_b.unsqueeze(-2)
        # A finite sentinel (not -inf): far below any reachable log-kernel value, yet with room for
        # additions without overflow, and logsumexp over an all-sentinel row stays finite.
        sentinel = torch.finfo(dtype).min / 4
        log_k = torch.where(valid, -cost / eps, torch.full_like(cost, sentinel))
        log_a = _safe_log(a, valid_a)
        log_b = _safe_log(b, valid_b)
        zeros_a = torch.zeros_like(log_a)
        zeros_b = torch.zeros_like(log_b)
        f = zeros_a
        g = zeros_b
        for _ in range(n_iters):
            f = torch.where(valid_a, log_a - torch.logsumexp(log_k + g.unsqueeze(-2), dim=-1), zeros_a)
            g = torch.where(valid_b, log_b - torch.logsumexp(log_k + f.unsqueeze(-1), dim=-2), zeros_b)
        log_plan = log_k + f.unsqueeze(-1) + g.unsqueeze(-2)
        return torch.where(valid, torch.exp(log_plan), torch.zeros_like(log_plan))


def ot_score(
    sim: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int, detach_plan: bool = True
) -> tuple[Tensor, Tensor]:
    """Transport-weighted similarity sum_mn P_mn * sim_mn with P the OT plan for cost = 1 - sim.

    Args:
        sim: [..., M, N] similarities (e.g. cosine of patch tokens and semantic tokens).
        a, b, eps, n_iters: as in :func:`sinkhorn_log`.
        detach_plan: True computes the plan without autograd, so backward memory does not grow with
            ``n_iters`` and the gradient reaches ``sim`` only through the final weighted sum
            (d score / d sim = plan). False backpropagates through the unrolled iterations.

    Returns:
        (score [...], plan [..., M, N]), both float32 (float64 for float64 inputs).
    """
    with torch.autocast(device_type=sim.device.type, enabled=False):
        # upcast before 1 - sim: in bf16 that subtraction alone would round the costs
        sim = sim.to(_compute_dtype(sim, a, b))
        cost = 1.0 - sim
        if detach_plan:
            with torch.no_grad():
                plan = sinkhorn_log(cost.detach(), a.detach(), b.detach(), eps, n_iters)
        else:
            plan = sinkhorn_log(cost, a, b, eps, n_iters)
        score = (plan * sim).sum(dim=(-2, -1))
    return score, plan


def uniform_masses(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform masses over the True entries of a [..., K] validity mask, 0 elsewhere (all-False rows -> 0)."""
    weights = mask.to(dtype)
    count = weights.sum(dim=-1, keepdim=True)
    return weights / count.clamp_min(1.0)


def _sinkhorn_single(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int) -> Tensor:
    """One unpadded [M, N] problem with strictly positive masses; same updates as :func:`sinkhorn_log`."""
    log_k = -cost / eps
    log_a = torch.log(a)
    log_b = torch.log(b)
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    for _ in range(n_iters):
        f = log_a - torch.logsumexp(log_k + g[None, :], dim=1)
        g = log_b - torch.logsumexp(log_k + f[:, None], dim=0)
    return torch.exp(log_k + f[:, None] + g[None, :])


def sinkhorn_loop_reference(cost: Tensor, a: Tensor, b: Tensor, eps: float, n_iters: int) -> Tensor:
    """Slow reference for :func:`sinkhorn_log`: a Python loop over the leading dims.

    Each problem is cut down to its valid rows/columns (mass > 0) and solved unpadded by a plain
    single-problem log-domain Sinkhorn, then scattered back into a zero plan. It synchronises with the
    device on every problem and exists only to check the batched solver and to benchmark it against.
    Same arguments, dtype rules and return value as :func:`sinkhorn_log`.
    """
    m, n = cost.shape[-2:]
    with torch.autocast(device_type=cost.device.type, enabled=False):
        cost, a, b, batch = _broadcast_problems(cost, a, b, eps, n_iters)
        plans = []
        for idx in itertools.product(*(range(size) for size in batch)):
            rows = torch.nonzero(a[idx] > 0).squeeze(1)
            cols = torch.nonzero(b[idx] > 0).squeeze(1)
            plan = cost.new_zeros(m, n)
            if rows.numel() and cols.numel():
                sub = _sinkhorn_single(cost[idx][rows][:, cols], a[idx][rows], b[idx][cols], eps, n_iters)
                plan = plan.index_put((rows[:, None], cols[None, :]), sub)
            plans.append(plan)
        return torch.stack(plans).reshape(*batch, m, n)
