"""Entropic optimal transport between patch tokens and semantic tokens (batched Sinkhorn).

The public names are those of :mod:`spacil.ot.sinkhorn` (its ``__all__``), listed once there.
"""

from __future__ import annotations

from . import sinkhorn as _sinkhorn
from .sinkhorn import *  # noqa: F401,F403 - re-export exactly sinkhorn.__all__

__all__ = list(_sinkhorn.__all__)
