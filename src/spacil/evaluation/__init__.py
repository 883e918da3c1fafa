"""Class-incremental metrics computed from one accuracy matrix and per-stage predictions."""

from .metrics import IncrementalMetrics, StageResult, backward_transfer, evaluate_stage, forgetting, summarize

__all__ = ["IncrementalMetrics", "StageResult", "backward_transfer", "evaluate_stage", "forgetting", "summarize"]
