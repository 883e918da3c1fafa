"""Class-incremental metrics computed from one accuracy matrix and per-stage predictions, and table statistics."""

from .metrics import IncrementalMetrics, StageResult, backward_transfer, evaluate_stage, forgetting, summarize
from .statistics import PairedDifference, Spread, mean_std, paired_difference, student_t_quantile

__all__ = ["IncrementalMetrics", "PairedDifference", "Spread", "StageResult", "backward_transfer", "evaluate_stage",
           "forgetting", "mean_std", "paired_difference", "student_t_quantile", "summarize"]
