"""Class-incremental metrics, all derived from per-stage predictions.

Definitions (T stages, labels in order of appearance, task j owns a contiguous label range):
- ``R[t, j]``: top-1 accuracy (%) on the test samples of task j after training task t (NaN for j > t).
- stage accuracy ``acc[t]``: top-1 (%) on *all* test samples of classes seen after stage t. It is
  sample-weighted, so with ``init_cls != increment`` it is not the mean of row t of R.
- average accuracy ``A-bar = mean_t acc[t]``; last accuracy ``A_B = acc[T-1]``.
- forgetting, as PyCIL computes it (``trainer.py``: ``np.mean((np.max(acctable, axis=1) -
  acctable[:, task])[:task])``): mean over j < T-1 of ``max_{t <= T-1} R[t, j] - R[T-1, j]``. The max
  runs over *every* stage, the last included, so a task whose best accuracy is the last one counts 0
  (never negative); Chaudhry et al.'s variant, which stops the max before the last stage, can go below 0.
- BWT (Lopez-Paz & Ranzato): mean over j < T-1 of ``R[T-1, j] - R[j, j]``.
- old / new accuracy at stage t: top-1 on samples of tasks < t and of task t.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StageResult:
    """What one evaluation after stage ``t`` produced."""

    stage: int
    accuracy: float  # all seen classes, %
    per_task: list[float]  # R[t, 0..t]
    old_accuracy: float | None  # tasks < t (None at stage 0)
    new_accuracy: float  # task t
    n_samples: int


def stage_row(result: StageResult, prefix: str = "", count_key: str = "n_test") -> dict:
    """The ``metrics.jsonl`` fields of one stage; ``prefix`` tells splits apart (``val_`` for validation)."""
    return {f"{prefix}accuracy": result.accuracy, f"{prefix}per_task": result.per_task,
            f"{prefix}old_accuracy": result.old_accuracy, f"{prefix}new_accuracy": result.new_accuracy,
            count_key: result.n_samples}


def stage_from_row(row: dict, prefix: str = "", count_key: str = "n_test") -> StageResult:
    """Rebuild a :class:`StageResult` from a ``metrics.jsonl`` row (resuming a run); inverse of :func:`stage_row`."""
    return StageResult(row["stage"], row[f"{prefix}accuracy"], row[f"{prefix}per_task"], row[f"{prefix}old_accuracy"],
                       row[f"{prefix}new_accuracy"], row[count_key])


def _acc(correct: np.ndarray) -> float:
    return float(100.0 * correct.mean()) if correct.size else float("nan")


def evaluate_stage(stage: int, predictions: np.ndarray, targets: np.ndarray, task_of_label: np.ndarray) -> StageResult:
    """Per-task and all-seen accuracies for one stage.

    ``targets`` are new labels of the seen classes; ``task_of_label[c]`` is the task of label ``c``.
    """
    predictions = np.asarray(predictions)
    targets = np.asarray(targets)
    if predictions.shape != targets.shape:
        raise ValueError("predictions and targets differ in shape")
    correct = predictions == targets
    target_task = np.asarray(task_of_label)[targets]
    per_task = [_acc(correct[target_task == j]) for j in range(stage + 1)]
    old = _acc(correct[target_task < stage]) if stage > 0 else None
    return StageResult(stage, _acc(correct), per_task, old, _acc(correct[target_task == stage]), int(targets.size))


@dataclass
class IncrementalMetrics:
    """Accumulates stage results into the accuracy matrix and summary metrics."""

    n_tasks: int
    stages: list[StageResult] = field(default_factory=list)

    def add(self, result: StageResult) -> None:
        if result.stage != len(self.stages):
            raise ValueError(f"stage {result.stage} added after {len(self.stages)} stages")
        self.stages.append(result)

    @property
    def accuracy_matrix(self) -> np.ndarray:
        """R[t, j] over the stages recorded so far (NaN above the diagonal)."""
        t = len(self.stages)
        matrix = np.full((t, self.n_tasks), np.nan)
        for s in self.stages:
            matrix[s.stage, : s.stage + 1] = s.per_task
        return matrix

    @property
    def stage_accuracies(self) -> list[float]:
        return [s.accuracy for s in self.stages]

    def summary(self) -> dict:
        return summarize(self.accuracy_matrix, self.stage_accuracies)


def forgetting(matrix: np.ndarray) -> float | None:
    """Average forgetting of the tasks before the last recorded stage (None with one stage).

    PyCIL's definition, so our numbers compare with the LAMDA line's: the best accuracy of task j over
    all stages (the last included) minus its last accuracy, averaged over j < T-1.
    """
    t = matrix.shape[0]
    if t < 2:
        return None
    last = matrix[t - 1]
    drops = [np.nanmax(matrix[:, j]) - last[j] for j in range(t - 1)]
    return float(np.mean(drops))


def backward_transfer(matrix: np.ndarray) -> float | None:
    """BWT of the tasks before the last recorded stage (None with one stage)."""
    t = matrix.shape[0]
    if t < 2:
        return None
    return float(np.mean([matrix[t - 1, j] - matrix[j, j] for j in range(t - 1)]))


def summarize(matrix: np.ndarray, stage_accuracies: list[float]) -> dict:
    """Average and last accuracy, forgetting and BWT."""
    return {
        "average_accuracy": float(np.mean(stage_accuracies)) if stage_accuracies else None,
        "last_accuracy": float(stage_accuracies[-1]) if stage_accuracies else None,
        "forgetting": forgetting(matrix),
        "bwt": backward_transfer(matrix),
        "stage_accuracies": [float(a) for a in stage_accuracies],
        "n_stages": len(stage_accuracies),
    }
