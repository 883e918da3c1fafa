"""Run folders: resolved config, metrics, accuracy matrix, checkpoints, plots, environment."""

from .run_folder import RunFolder, read_metrics

__all__ = ["RunFolder", "read_metrics"]
