"""Toy frozen features and class texts shared by the baseline tests (not a test module)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spacil.methods import FeatureBatch, TaskContext
from spacil.methods.description_texts import DescriptionEmbeddings
from spacil.text.class_texts import ClassTexts

DIM, N_CLASSES, PER_TASK = 16, 8, 4


def toy_features(seed: int, per_class: int = 30) -> FeatureBatch:
    """Class centres on a shared offset (like CLIP features of one domain) plus noise."""
    centres = torch.randn(N_CLASSES, DIM, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N_CLASSES).repeat_interleave(per_class)
    glob = 3.0 + centres[labels] + 0.8 * torch.randn(len(labels), DIM, generator=g)
    return FeatureBatch(glob, torch.zeros(len(labels), 1, DIM), labels)


def toy_texts() -> ClassTexts:
    """Prompts near each class's centre direction; three phrases per class (two shared across classes)."""
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(N_CLASSES, DIM, generator=torch.Generator().manual_seed(0))
    prompts = F.normalize(3.0 + centres + 0.5 * torch.randn(N_CLASSES, DIM, generator=g), dim=-1)
    phrases = [[f"part {c}", f"shape {c % 2}", "common"] for c in range(N_CLASSES)]
    # phrase embeddings point along the class's own direction (no shared offset), as parts do
    emb = F.normalize(centres[:, None] + 0.3 * torch.randn(N_CLASSES, 3, DIM, generator=g), dim=-1)
    mask = torch.ones(N_CLASSES, 3, dtype=torch.bool)
    extras = {key: DescriptionEmbeddings(emb, mask, phrases) for key in ("engine.descriptions", "clg_cbm.concepts")}
    return ClassTexts([f"c{i}" for i in range(N_CLASSES)], prompts, extras=extras)


def toy_ctx(task: int, texts: ClassTexts, seed: int = 10) -> TaskContext:
    start = PER_TASK * task
    return TaskContext(task, range(start, start + PER_TASK), start + PER_TASK, texts, torch.device("cpu"),
                       seed=seed + task)


def learn(learner, train: FeatureBatch, texts: ClassTexts, tasks=(0, 1), seed: int = 10) -> None:
    for task in tasks:
        ctx = toy_ctx(task, texts, seed)
        rows = torch.isin(train.labels, torch.tensor(list(ctx.new_classes)))
        learner.learn_task(ctx, train.index(rows))


def accuracy(learner, batch: FeatureBatch, n_seen: int) -> float:
    keep = batch.labels < n_seen
    return float((learner.logits(batch.index(keep), n_seen).argmax(-1) == batch.labels[keep]).float().mean())
