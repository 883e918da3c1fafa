"""Plots of a run: accuracy after each stage and the accuracy-matrix heatmap.

Figures are drawn on their own Agg canvas, never through pyplot, so plotting from the library changes
no global matplotlib state (backend, open figures) of the program that imported it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def new_figure(**kwargs):
    """A matplotlib figure attached to an Agg canvas (file output only; no display, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def plot_stage_curves(path: Path, curves: Mapping[str, Sequence[float]], title: str = "Accuracy on all seen classes") -> Path:
    """One line per method: top-1 (%) after each stage."""
    fig = new_figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.set_xticks(range(1, max((len(v) for v in curves.values()), default=1) + 1))
    ax.set_xlabel("stage (tasks learned)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_accuracy_matrix(path: Path, matrix: np.ndarray, title: str = "R[t, j]: accuracy on task j after task t") -> Path:
    t, n = matrix.shape
    fig = new_figure(figsize=(1.0 + 0.6 * n, 1.0 + 0.55 * t), dpi=120)
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=100, cmap="viridis")
    for i in range(t):
        for j in range(n):
            if not np.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] < 60 else "black")
    ax.set_xlabel("task j")
    ax.set_ylabel("after task t")
    ax.set_xticks(range(n))
    ax.set_yticks(range(t))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_run(folder: Path, matrix: np.ndarray, stage_accuracies: Sequence[float]) -> None:
    plots = Path(folder) / "plots"
    plots.mkdir(exist_ok=True)
    plot_stage_curves(plots / "accuracy_per_stage.png", {"top-1": stage_accuracies})
    plot_accuracy_matrix(plots / "accuracy_matrix.png", matrix)
