"""SPA (Semantic-guided Patch-level Alignment): one method among the others, registered as ``spa``.

Patch selection, task projectors and Gaussian replay are its parts; the learner fuses them.
"""

from .config import SPAConfig
from .learner import SPALearner

__all__ = ["SPAConfig", "SPALearner"]
