"""Entropic optimal transport between patch tokens and semantic tokens (batched Sinkhorn)."""

from __future__ import annotations

from .sinkhorn import ot_score, sinkhorn_log, sinkhorn_loop_reference, uniform_masses

__all__ = ["ot_score", "sinkhorn_log", "sinkhorn_loop_reference", "uniform_masses"]
