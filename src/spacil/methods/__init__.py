"""Learners that run in the shared harness: SPA and the baselines it is compared with."""

from __future__ import annotations

from ..config import Config
from .base import FeatureBatch, Learner, TaskContext
from .simplecil import SimpleCIL
from .zeroshot import ZeroShotCLIP


def make_learner(config: Config) -> Learner:
    """The learner named by ``config.method.name`` with its section of the config."""
    name = config.method.name
    if name == "spa":
        from ..spa.learner import SPALearner

        return SPALearner(config.method.spa, config.train, chunk_size=config.train.eval_batch_size)
    if name == "zeroshot":
        return ZeroShotCLIP(config.method.zeroshot)
    if name == "simplecil":
        return SimpleCIL(config.method.simplecil)
    raise ValueError(f"unknown method {name!r}")


__all__ = ["FeatureBatch", "Learner", "SimpleCIL", "TaskContext", "ZeroShotCLIP", "make_learner"]
