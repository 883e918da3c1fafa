"""Learners that run in the shared harness: SPA and the baselines it is compared with.

Importing a method module registers it (:mod:`spacil.methods.registry`); the import order below is
the order of ``spa-cil info``, of the config's ``method`` sections and of the default comparison.
"""

from __future__ import annotations

from .base import FeatureBatch, Learner, TaskContext
from .registry import MethodEntry, Variant, all_variants, default_variants, get_method, list_methods, make_learner
from .registry import register_method
from .zeroshot import ZeroShotCLIP
from .simplecil import SimpleCIL
from .spa import SPALearner
from .ranpac import RanPAC
from .proof import PROOF
from .rapf import RAPF
from .engine import ENGINE
from .clg_cbm import CLGCBM

__all__ = ["CLGCBM", "ENGINE", "FeatureBatch", "Learner", "MethodEntry", "PROOF", "RAPF", "RanPAC", "SPALearner",
           "SimpleCIL", "TaskContext", "Variant", "ZeroShotCLIP", "all_variants", "default_variants", "get_method",
           "list_methods", "make_learner", "register_method"]
