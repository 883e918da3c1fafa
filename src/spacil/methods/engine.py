"""ENGINE (Zhou et al., "External Knowledge Injection for CLIP-Based Class-Incremental Learning", ICCV 2025)
on frozen features.

Per task a linear adapter is added on each modality (older ones frozen); a feature is the sum of all
adapters, ``A(x) = sum_t A_t(x)``. Training minimises, per batch::

    CLIP(A_img(x), A_txt(t_y))  +  text_des · CE(A_txt(t_y) · d_y^T)  +  image_aug · CE(A_img(x) · x~^T)

with ``d_y`` the frozen embedding of ``"<class> with <one of its descriptions>"`` (drawn per sample),
``x~`` a noise-augmented frozen feature, and old classes replayed as ``mu_c + sample_noise · z`` (one
per old class and batch, ``mu_c`` the class mean of frozen features). Inference mixes three scores::

    stat · normalize(LDA(x))  +  (1 - stat) · (rerank · R(x) + (1 - rerank) · <A_img(x), A_txt(t)>)

where LDA is :class:`~spacil.methods.lda.IncrementalLDA` on normalised frozen features and ``R`` re-scores
the ``rerank_top`` best classes of the adapted score by the cosine of the frozen image feature to each
candidate's mean description embedding (zero elsewhere).

Followed: LAMDA-CL/C3Box ``models/engine.py`` (``train``, ``_eval_cnn``), ``utils/inc_net.py``
(``Engine``: ``update_task``, ``update_stat``, ``rerank``), ``backbone/linears.py`` (``MLP_Adapter``),
``utils/loss.py`` (``contrastive_loss``), ``exps/engine.json`` (defaults below).

Deviations: (1) the LDA runs on the cached *projected* [CLS] (normalised); ENGINE uses the pooled
feature before CLIP's projection (768-d for ViT-B/16), which our cache does not hold. (2) The LDA
accumulates the exact pooled within-class scatter over tasks (frozen features make this exact); ENGINE
merges per-task inverse covariances by a weighted average. (3) The image augmentation adds Gaussian
noise to the normalised feature (``image_noise``, relative to its unit norm) instead of to the pixels
(std 0.25) before re-encoding, which a feature cache cannot do. (4) Re-ranking uses each candidate's
mean embedding over its own description phrases; ENGINE draws, three times, descriptions written for
each pair of top candidates ("what tells A from B"), which our description files do not have.
(5) Class texts are our prompt embeddings (normalised) instead of raw encoder outputs.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..schema import StrictModel
from .base import FeatureBatch, Learner, TaskContext
from .description_texts import ReadsDescriptionPhrases, description_embeddings
from .lda import IncrementalLDA
from .proof_parts import clip_loss
from .registry import register_method
from .seeded import linear, make_generator, minibatches, set_cosine_lr

if TYPE_CHECKING:
    from ..backbone import FrozenCLIP
    from ..config import Config
    from ..text.class_texts import ClassTexts

logger = logging.getLogger(__name__)
EXTRAS_KEY = "engine.descriptions"


class EngineConfig(StrictModel):
    """ENGINE: per-task adapters, description and noise contrasts, prototype replay, LDA + re-ranking."""

    epochs: int = Field(10, ge=0, description="Epochs per task (tuned_epoch).")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0, description="SGD learning rate (init_lr), cosine-annealed to min_lr per task.")
    min_lr: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    text_des: float = Field(2.0, ge=0, description="Weight of the template-vs-description contrast.")
    image_aug: float = Field(2.0, ge=0, description="Weight of the noise-augmented image contrast.")
    image_noise: float = Field(0.25, ge=0, description="Std of the feature noise of the augmented image "
                               "(relative to the unit-norm feature; ENGINE: 0.25 on pixels).")
    sample_noise: float = Field(0.3, ge=0, description="Std of the noise added to old-class prototypes.")
    sample_num: int = Field(0, ge=0, description="Old classes replayed per batch; 0 = every old class.")
    stat: float = Field(0.99, ge=0, le=1, description="Weight of the LDA score at inference.")
    rerank: float = Field(0.8, ge=0, le=1, description="Weight of the description score within the rest.")
    rerank_top: int = Field(5, ge=1, description="Candidates re-scored by their descriptions.")
    clip_loss_scale: float = Field(math.log(100.0), gt=0, description="Scale of the CLIP contrastive loss: "
                                   "ENGINE passes CLIP's logit_scale parameter (ln 100), not its exp.")
    description_template: str = Field("{name} with {phrase}", description="How a description is written "
                                      "for the text encoder ({name}, {phrase}).")


@register_method("engine", config=EngineConfig, features=("global", "prompts", "descriptions"))
class ENGINE(ReadsDescriptionPhrases, Learner):
    """ENGINE: per-task adapters with description and noise contrasts; LDA + description re-ranking."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.adapt_img = nn.ModuleList()
        self.adapt_text = nn.ModuleList()
        self.lda = IncrementalLDA()
        self.prototypes: Tensor | None = None  # [n_seen, D] class means of frozen [CLS]
        self.prompts: Tensor | None = None
        self.descriptions = None

    extras_key = EXTRAS_KEY

    @classmethod
    def phrase_template(cls, config: "Config") -> str:
        """How each phrase goes to the frozen text encoder (``"<class> with <phrase>"``), once per run."""
        return config.method.engine.description_template

    def _attach(self, ctx: TaskContext) -> None:
        self.prompts = ctx.texts.prompt_embeddings.to(ctx.device).float()
        self.descriptions = description_embeddings(ctx.texts, EXTRAS_KEY, self.name).to(ctx.device)

    @staticmethod
    def _adapt(stack: nn.ModuleList, x: Tensor) -> Tensor:
        return F.normalize(torch.stack([a(x) for a in stack]).sum(0), dim=-1)

    def learn_task(self, ctx: TaskContext, train: FeatureBatch) -> dict:
        cfg = self.config
        generator = make_generator(ctx.seed, ctx.device)
        self._attach(ctx)
        x, y = train.global_.float(), train.labels
        dim = x.shape[1]
        for stack in (self.adapt_img, self.adapt_text):
            stack.requires_grad_(False)
            stack.append(linear(dim, dim, generator).to(ctx.device))
        self.lda.add(F.normalize(x, dim=-1), y, ctx.new_classes)
        params = [p for s in (self.adapt_img, self.adapt_text) for p in s.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        n_old = ctx.new_classes.start
        loss_sum, steps = 0.0, 0
        for epoch in range(cfg.epochs):
            set_cosine_lr(optimizer, epoch, cfg.epochs, cfg.lr, cfg.min_lr)
            for idx in minibatches(len(y), cfg.batch_size, generator):
                loss = self._loss(x[idx], y[idx], n_old, generator)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss_sum, steps = loss_sum + loss.item(), steps + 1
        means = torch.stack([x[y == c].mean(0) for c in ctx.new_classes])
        self.prototypes = means if self.prototypes is None else torch.cat([self.prototypes, means])
        return {"loss": loss_sum / max(steps, 1)}

    def _loss(self, x: Tensor, y: Tensor, n_old: int, generator: torch.Generator) -> Tensor:
        cfg = self.config
        image = self._adapt(self.adapt_img, x)
        labels = y
        if n_old:
            old = torch.arange(n_old, device=x.device)
            if cfg.sample_num:
                old = old[torch.randint(n_old, (cfg.sample_num,), generator=generator,
                                        device=generator.device).to(x.device)]
            noise = torch.randn(len(old), x.shape[1], generator=generator, device=generator.device).to(x.device)
            image = torch.cat([image, self._adapt(self.adapt_img, self.prototypes[old] + cfg.sample_noise * noise)])
            labels = torch.cat([y, old])
        text = self._adapt(self.adapt_text, self.prompts[labels])
        loss = clip_loss(image, text, cfg.clip_loss_scale)
        if cfg.text_des > 0:
            loss = loss + cfg.text_des * _contrast(text @ self._draw_descriptions(labels, generator).T)
        if cfg.image_aug > 0:
            loss = loss + cfg.image_aug * _contrast(image[:len(x)] @ self.augment(x, generator).T)
        return loss

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Noise-augmented frozen image features (normalised), the positives of the image contrast."""
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
        return F.normalize(F.normalize(x, dim=-1) + self.config.image_noise * noise / math.sqrt(x.shape[1]), dim=-1)

    def _draw_descriptions(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """One description embedding of each sample's class, drawn uniformly among the class's phrases."""
        counts = self.descriptions.mask[labels].sum(1)
        u = torch.rand(len(labels), generator=generator, device=generator.device).to(labels.device)
        pick = (u * counts).long().clamp(max=counts.max() - 1)
        return self.descriptions.embeddings[labels, pick]

    @torch.no_grad()
    def scores(self, batch: FeatureBatch, n_seen: int) -> dict[str, Tensor]:
        """The three scores inference mixes: adapted cosine, LDA (normalised over classes), re-ranking."""
        frozen = F.normalize(batch.global_.float(), dim=-1)
        adapted = self._adapt(self.adapt_img, batch.global_.float()) @ self._adapt(
            self.adapt_text, self.prompts[:n_seen]).T
        lda = F.normalize(self.lda.logits(frozen)[:, :n_seen], dim=-1)
        top = adapted.topk(min(self.config.rerank_top, n_seen), dim=-1).indices
        desc = self.descriptions.mean()[:n_seen]
        rerank = torch.zeros_like(adapted).scatter_(1, top, (frozen[:, None] * desc[top]).sum(-1))
        return {"adapted": adapted, "lda": lda, "rerank": rerank}

    def logits(self, batch: FeatureBatch, n_seen: int) -> Tensor:
        assert self.prototypes is not None, "learn_task must run before logits"
        cfg = self.config
        s = self.scores(batch, n_seen)
        return cfg.stat * s["lda"] + (1 - cfg.stat) * (cfg.rerank * s["rerank"] + (1 - cfg.rerank) * s["adapted"])

    def trainable_state(self) -> dict[str, Tensor]:
        if self.prototypes is None:
            return {}
        state = {f"adapt_img.{k}": v for k, v in self.adapt_img.state_dict().items()}
        state.update({f"adapt_text.{k}": v for k, v in self.adapt_text.state_dict().items()})
        state.update(self.lda.state())
        state["prototypes"] = self.prototypes
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, Tensor], ctx: TaskContext) -> None:
        dim = state["prototypes"].shape[1]
        generator = make_generator(0, ctx.device)  # shapes only; values are overwritten
        for name, stack in (("adapt_img", self.adapt_img), ("adapt_text", self.adapt_text)):
            stack.extend(linear(dim, dim, generator).to(ctx.device) for _ in range(ctx.task + 1))
            stack.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")})
        self.lda.load(state, ctx.device)
        self.prototypes = state["prototypes"].to(ctx.device)
        self._attach(ctx)


def _contrast(logits: Tensor) -> Tensor:
    """ENGINE's ``contrastive_loss``: row i's positive is column i (no temperature)."""
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))

