"""Entropic optimal transport between patch tokens and semantic tokens (batched Sinkhorn)."""

from __future__ import annotations

from .sinkhorn import (
    EXP_DOMAIN_MAX_EXPONENT,
    SinkhornConvergenceError,
    choose_domain,
    marginal_error,
    ot_score,
    reset_convergence_warnings,
    sinkhorn_plan,
    sinkhorn_exp,
    sinkhorn_log,
    sinkhorn_loop_reference,
    uniform_masses,
)

__all__ = [
    "EXP_DOMAIN_MAX_EXPONENT",
    "SinkhornConvergenceError",
    "choose_domain",
    "marginal_error",
    "ot_score",
    "reset_convergence_warnings",
    "sinkhorn_plan",
    "sinkhorn_exp",
    "sinkhorn_log",
    "sinkhorn_loop_reference",
    "uniform_masses",
]
