"""spacil: Semantic-guided Patch-level Alignment (SPA) for CLIP-based class-incremental learning.

The public API, for scripts and notebooks (the ``spa-cil`` command line is built on the same calls)::

    import spacil
    config = spacil.load_config("cifar100_b0_inc10", ["data.root=/data/cifar100"])
    result = spacil.run_experiment(config)          # one method over every task; writes a run folder
    print(result.summary["average_accuracy"], result.folder)

Names are imported on first use (PEP 562), so ``import spacil`` loads neither torch nor open_clip and changes
no global state (no logging set-up, no warnings filters, no RNG seeding); only the CLI configures logging.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module it lives in (relative to this package)
_PUBLIC = {
    # configuration: one typed schema, presets, --set style overrides
    "Config": ".config", "load_config": ".config", "list_presets": ".config",
    # running: one method over all tasks, several methods on the same features, re-evaluation of a run
    "run_experiment": ".training.harness", "evaluate_run": ".training.harness", "RunResult": ".training.harness",
    "run_comparison": ".training.compare",
    # the learner registry: what `method.name` and `compare --variants` accept, and how to add a method
    "Learner": ".methods", "register_method": ".methods", "list_methods": ".methods", "get_method": ".methods",
    "all_variants": ".methods",
    # metrics from one accuracy matrix
    "IncrementalMetrics": ".evaluation", "summarize": ".evaluation", "forgetting": ".evaluation",
    "backward_transfer": ".evaluation",
    # the one error type for problems a user can fix
    "SpacilError": ".errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'spacil' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .config import Config, list_presets, load_config
    from .errors import SpacilError
    from .evaluation import IncrementalMetrics, backward_transfer, forgetting, summarize
    from .methods import Learner, all_variants, get_method, list_methods, register_method
    from .training.compare import run_comparison
    from .training.harness import RunResult, evaluate_run, run_experiment
