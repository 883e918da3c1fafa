"""RAPF (Huang et al., "Class-Incremental Learning with CLIP: Adaptive Representation Adjustment and
Parameter Fusion", ECCV 2024) on frozen features.

One bias-free linear adapter ``A`` maps the frozen [CLS] ``x`` before the cosine to the frozen class-text
features ``t_c``: ``logit_c = s · <normalize(A x), t_c>``. After each task every new class keeps a Gaussian
``N(mu_c, Sigma_c + 1e-4 I)`` of its frozen features. While a later task trains, each batch adds
``10·beta`` pseudo-features of two old classes (cross-entropy) and, for every *hard pair* (old class k,
new class j with ``||t_k - t_j|| < threshold``), ``20·beta`` samples of k with the hinge
``relu(<f, t_j> - <f, t_k> + 0.1)`` that pushes them from the close new text. After training, old
``W_o = U S V^T`` (SVD) and new ``W_n`` weights are fused in the old singular basis::

    P = U^T W_n,   D = |P - S V^T|,   M = min(D / max(D) + mix_bias, 1),   W = U (M ∘ P + (1 - M) ∘ S V^T)

so directions where the new weights moved little (small ``D``) keep the old weights.

Followed: LAMDA-CL/C3Box ``models/rapf.py`` (``adaptation``, ``_train``, ``mix_matrix``,
``analyze_mean_cov``, ``sample``), ``exps/rapf.json`` (defaults below); linlany/RAPF ``main.py`` and
``configs/class/cifar100_10-10.yaml`` (milestones ``[4, 10]``). The authors hand-set the old classes per
batch per dataset (2 on CIFAR, 5 on ImageNet-R, 10 on CUB) so that "an epoch traverses all classes at least
once"; :func:`replay_classes_per_batch` computes that number for any task size (a fixed 2 replayed only 10
of 40 old classes per epoch on parts world's 5-batch tasks: forgetting 44 instead of 30). Their config also
says to size ``beta`` so that about 2,000 pseudo-features are drawn per epoch.
The reference schedule (10-15 epochs) assumes ~40-50 batches per epoch; on parts world's 5-batch tasks it
is 50 steps and leaves the first task at zero-shot accuracy, so the demo preset sets epochs, lr and beta
chosen on validation of tuning worlds (``configs/partsworld_demo.yaml``).
Deviations: class texts are our prompt embeddings (``text.templates``; the reference uses ``"a good photo
of a {}."``); the old-class order of the pseudo-feature batches is drawn from the task seed.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..schema import StrictModel
from .base import FeatureBatch, Learner, TaskContext
from .class_gaussians import ClassGaussians
from .registry import register_method
from .seeded import linear, make_generator, minibatches

logger = logging.getLogger(__name__)


class RAPFConfig(StrictModel):
    """RAPF: linear adapter vs frozen class texts, Gaussian and hinge replay, SVD weight fusion."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (init_lr).")
    milestones: list[int] = Field(default_factory=lambda: [4, 10], description="Epochs where lr drops 10x.")
    beta: float = Field(2.0, gt=0, description="Pseudo-features per old class and batch: 10·beta (CE), "
                        "20·beta (hinge).")
    old_classes_per_batch: int | None = Field(
        None, ge=1, description="Old classes replayed per batch. None: the authors' rule, enough that every "
        "epoch visits each old class at least once (and at least 2, their CIFAR value).")
    mix_bias: float = Field(0.6, ge=0, le=1, description="Added to the normalised SVD distance mask.")
    threshold: float = Field(0.55, ge=0, description="Hard pair when the class texts are closer (L2) than this.")
    hinge_margin: float = Field(0.1, ge=0)
    logit_scale: float = Field(100.0, gt=0, description="CLIP's exp(logit_scale).")
    covariance_eps: float = Field(1e-4, gt=0, description="Added to each class covariance before sampling.")


def svd_fusion(old: Tensor, new: Tensor, mix_bias: float) -> Tensor:
    """RAPF's fusion of old and new adapter weights ``[out, in]`` in the old weights' singular basis."""
    u, s, vh = torch.linalg.svd(old)
    old_part = torch.diag(s) @ vh
    projected = u.T @ new
    dist = (projected - old_part).abs()
    mask = (dist / dist.max() + mix_bias).clamp(max=1.0)
    return u @ (projected * mask + old_part * (1 - mask))


def replay_classes_per_batch(n_old: int, n_batches: int, fixed: int | None) -> int:
    """How many old classes each batch replays: ``fixed``, else ``max(2, ceil(n_old / n_batches))``.

    The authors hand-set 2 (CIFAR, ~50 batches/epoch), 5 (ImageNet-R) or 10 (CUB) per dataset so that "an
    epoch traverses all classes at least once"; this computes that number for any task size.
    """
    if fixed is not None:
        return fixed
    return max(2, -(-n_old // max(n_batches, 1)))


def hard_pairs(texts: Tensor, n_old: int, threshold: float) -> Tensor:
    """``[P, 2]`` (old class, new class) pairs whose normalised class texts lie closer than ``threshold``."""
    dist = torch.cdist(texts[:n_old], texts[n_old:])
    pairs = torch.nonzero(dist < threshold)
    pairs[:, 1] += n_old
    return pairs


@register_method("rapf", config=RAPFConfig, features=("global", "prompts"))
class RAPF(Learner):
    """RAPF: linear adapter against frozen class texts, Gaussian + hinge replay, SVD fusion of old/new weights."""

    def __init__(self, config: RAPFConfig) -> None:
        self.config = config
        self.adapter: nn.Linear | None = None
        self.gaussians = ClassGaussians(config.covariance_eps)
        self.texts: Tensor | None = None

    def _logits(self, x: Tensor, n_seen: int) -> Tensor:
        return self.config.logit_scale * F.normalize(self.adapter(x), dim=-1) @ self.texts[:n_seen].T

    def learn_task(self, ctx: TaskContext, train: FeatureBatch) -> dict:
        cfg = self.config
        generator = make_generator(ctx.seed, ctx.device)
        self.texts = F.normalize(ctx.texts.prompt_embeddings.to(ctx.device).float(), dim=-1)
        x, y = train.global_.float(), train.labels
        n_old = ctx.new_classes.start
        if self.adapter is None:
            self.adapter = linear(x.shape[1], x.shape[1], generator, bias=False).to(ctx.device)
        old_adapter = copy.deepcopy(self.adapter) if n_old else None
        pairs = hard_pairs(self.texts[:ctx.n_seen], n_old, cfg.threshold) if n_old else None
        optimizer = torch.optim.Adam(self.adapter.parameters(), lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, gamma=0.1)
        n_ce, n_hinge = int(10 * cfg.beta), int(20 * cfg.beta)
        per_batch = replay_classes_per_batch(n_old, -(-len(y) // cfg.batch_size), cfg.old_classes_per_batch)
        offsets = torch.arange(per_batch, device=ctx.device)
        for _ in range(cfg.epochs):
            order = (torch.randperm(n_old, generator=generator, device=generator.device).to(ctx.device)
                     if n_old else None)
            for step, idx in enumerate(minibatches(len(y), cfg.batch_size, generator)):
                inputs, targets = x[idx], y[idx]
                if n_old:  # per_batch old classes per batch, cycling through a shuffled order
                    olds = order[(per_batch * step + offsets) % n_old]
                    labels = olds.repeat_interleave(n_ce)
                    inputs = torch.cat([inputs, self.gaussians.sample(labels, generator)])
                    targets = torch.cat([targets, labels])
                loss = F.cross_entropy(self._logits(inputs, ctx.n_seen), targets)
                if pairs is not None and len(pairs):
                    loss = loss + self._hinge(pairs, n_hinge, generator)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
        self.gaussians.add(x, y, ctx.new_classes)
        if old_adapter is not None:
            with torch.no_grad():
                self.adapter.weight.copy_(svd_fusion(old_adapter.weight, self.adapter.weight, cfg.mix_bias))
        return {"hard_pairs": 0 if pairs is None else len(pairs),
                "replayed_classes_per_batch": per_batch if n_old else 0}

    def _hinge(self, pairs: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """Samples of the old class of each hard pair must be closer to its own text than to the new one's."""
        own, close = pairs[:, 0].repeat_interleave(n), pairs[:, 1].repeat_interleave(n)
        f = F.normalize(self.adapter(self.gaussians.sample(own, generator)), dim=-1)
        margin = (f * self.texts[close]).sum(-1) - (f * self.texts[own]).sum(-1) + self.config.hinge_margin
        return F.relu(margin).mean()

    @torch.no_grad()
    def logits(self, batch: FeatureBatch, n_seen: int) -> Tensor:
        assert self.adapter is not None, "learn_task must run before logits"
        return self._logits(batch.global_.float(), n_seen)

    def trainable_state(self) -> dict[str, Tensor]:
        if self.adapter is None:
            return {}
        return {"adapter": self.adapter.weight.detach().cpu().clone(), **self.gaussians.state("gauss.")}

    def load_trainable_state(self, state: dict[str, Tensor], ctx: TaskContext) -> None:
        weight = state["adapter"]
        self.adapter = linear(weight.shape[1], weight.shape[0], make_generator(0), bias=False).to(ctx.device)
        with torch.no_grad():
            self.adapter.weight.copy_(weight)
        self.gaussians.load(state, "gauss.", ctx.device)
        self.texts = F.normalize(ctx.texts.prompt_embeddings.to(ctx.device).float(), dim=-1)
