"""Old-class calibration at the classifier: one logit offset per task.

A model trained on a new task's real images (and only pseudo-features of the old classes) scores the new
classes too high: recency bias. After each task we fit offsets ``o_t`` (one per task, the first fixed at
0) on balanced pseudo-features of every seen class, the model itself frozen::

    o = argmin_o  mean_i  CE(logits_i + o[task(c)]_c , y_i)

The pseudo-features of every class come from the same Gaussian model, so whatever that model gets wrong
it gets wrong for old and new classes alike, and the offsets only correct their difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def task_of_class(task_starts: list[int], n_classes: int, device: torch.device | str = "cpu") -> Tensor:
    """Task index ``[n_classes]`` of every label, given each task's first label (sorted)."""
    starts = torch.tensor(task_starts, device=device)
    return torch.bucketize(torch.arange(n_classes, device=device), starts, right=True) - 1


def fit_task_offsets(logits: Tensor, labels: Tensor, task: Tensor, n_tasks: int, max_iter: int = 50) -> Tensor:
    """Offsets ``[n_tasks]`` (first = 0) minimising the cross-entropy of ``logits + offsets[task]``."""
    logits, labels, task = logits.detach(), labels.detach(), task.detach()
    offsets = torch.zeros(n_tasks, device=logits.device, requires_grad=True)
    optimiser = torch.optim.LBFGS([offsets], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(logits + offsets[task], labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return (offsets - offsets[0]).detach()
