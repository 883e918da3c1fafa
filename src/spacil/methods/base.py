"""The interface every learner implements, so SPA and its baselines share one harness.

A learner sees frozen features only (the encoder ran once, in the feature cache). Per task it receives
the training features of the new classes; after each task it scores test features against every class
seen so far. Labels are new labels (order of appearance), so task t owns a contiguous label range.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # the schema imports this module to collect method sections; keep the arrows one way
    from ..backbone import FrozenCLIP
    from ..config import Config
    from ..text.class_texts import ClassTexts


@dataclass
class FeatureBatch:
    """Frozen features of a set of images on one device (float32 unless stated)."""

    global_: Tensor  # [N, D]
    patches: Tensor  # [N, P, D]
    labels: Tensor  # [N] new labels (long)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> "FeatureBatch":
        return FeatureBatch(self.global_.to(device), self.patches.to(device), self.labels.to(device))

    def index(self, idx: Tensor) -> "FeatureBatch":
        return FeatureBatch(self.global_[idx], self.patches[idx], self.labels[idx])


@dataclass
class TaskContext:
    """What a learner knows about the task it is about to learn."""

    task: int
    new_classes: range  # new labels introduced by this task
    n_seen: int  # classes seen after this task (labels 0..n_seen-1)
    texts: ClassTexts  # text features of every class of the scenario, in new-label order
    device: torch.device
    seed: int  # task-specific seed (derived from train.seed and task)


class Learner(ABC):
    """A class-incremental learner on frozen features."""

    #: Name shown in tables and run folders (set by :func:`~spacil.methods.registry.register_method`).
    name: str = "learner"

    @classmethod
    def from_config(cls, config: "Config") -> "Learner":
        """The learner for a run; by default built from its own ``method.<name>`` section only."""
        return cls(getattr(config.method, cls.name))  # type: ignore[call-arg]

    @classmethod
    def check(cls, config: "Config") -> None:
        """Hook run before any feature is extracted: raise on bad input files the method will read, so a
        broken file fails in seconds, not after hours of encoding (SPA: its description file)."""

    @classmethod
    def prepare(cls, config: "Config", backbone: "FrozenCLIP", texts: "ClassTexts") -> dict | None:
        """Hook run once per run before the first task, with the backbone still loaded.

        A method that needs more than class prompts adds it to ``texts`` here (SPA: description tokens).
        What it returns is recorded in ``summary.json`` under ``descriptions`` (where they came from).
        """
        return None

    @abstractmethod
    def learn_task(self, ctx: TaskContext, train: FeatureBatch) -> dict:
        """Learn the new classes of ``ctx`` from ``train``; return training statistics for the log."""

    @abstractmethod
    def logits(self, batch: FeatureBatch, n_seen: int) -> Tensor:
        """Scores [N, n_seen] of ``batch`` for the classes seen so far."""

    def trainable_state(self) -> dict[str, Tensor]:
        """Everything learned so far, as named tensors (saved as a per-task checkpoint)."""
        return {}

    def load_trainable_state(self, state: dict[str, Tensor], ctx: TaskContext) -> None:
        """Restore what :meth:`trainable_state` returned after the task of ``ctx``."""
        if state:
            raise ValueError(f"{self.name} has no trainable state but a checkpoint holds {sorted(state)[:3]}")
