"""The SPA learner: global [CLS]-text alignment fused with description-guided patch-level OT.

Score of image b for class c (all features L2-normalised, projectors applied)::

    global[b, c] = <g_b, t_c> + w_p <g_b, m_c>      g: adapted [CLS], t: adapted class prompt,
                                                    m: adapted class mean of frozen [CLS] features
    patch[b, c]  = sum_mn  plan_mn * <p_bm, s_cn>   p: k patches of b selected for c, s: c's semantic tokens
    logit[b, c]  = scale * (global[b, c] + fusion_weight * patch[b, c])

Per task a new projector (visual and, optionally, text) is trained with cross-entropy over every seen
class, on the real features of the new classes plus Gaussian pseudo-features of the old ones.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import UsageError
from ...ot import ot_score, uniform_masses
from ..base import FeatureBatch, Learner, TaskContext
from ..registry import register_method
from .config import SPAConfig
from .gaussian_replay import GaussianBank
from .patch_selection import patch_relevance, select_top_k
from .projectors import ProjectorStack

if TYPE_CHECKING:
    from ...backbone import FrozenCLIP
    from ...config import Config, TrainConfig
    from ...text.class_texts import ClassTexts
    from ...text.semantic_tokens import SemanticTokens

logger = logging.getLogger(__name__)


@register_method(
    "spa", config=SPAConfig,
    variants={"clsonly": ["patch_branch=false"], "spa": [], "spa_no_ot": ["ot.aggregation=mean"],
              "spa_no_replay": ["replay.enabled=false"], "spa_shared_projector": ["projector.per_task=false"],
              "spa_random_selection": ["selection.rule=random"]},
    extra_variants={"spa_no_patch_replay": ["replay.patch_mode=none"]},
)
class SPALearner(Learner):
    """SPA: global [CLS]-text alignment fused with description-guided patch-level OT."""

    def __init__(self, config: SPAConfig, train: "TrainConfig", chunk_size: int = 256) -> None:
        self.config = config
        self.train_config = train
        self.chunk_size = chunk_size
        self.visual: ProjectorStack | None = None
        self.text: ProjectorStack | None = None
        self.global_bank = GaussianBank(config.replay.shrinkage)
        self.patch_bank = GaussianBank(config.replay.shrinkage)
        self.prompts: Tensor | None = None
        self.prototypes: dict[int, Tensor] = {}  # class mean of frozen normalised [CLS] features
        self.semantic: "SemanticTokens | None" = None
        self.device = torch.device("cpu")
        self.tasks_learned = 0

    @classmethod
    def from_config(cls, config: "Config") -> "SPALearner":
        return cls(config.method.spa, config.train, chunk_size=config.train.eval_batch_size)

    @classmethod
    def check(cls, config: "Config") -> None:
        """The description file is read and validated before feature extraction (fail fast)."""
        from ...text.class_phrases import find_description_set

        find_description_set(config)

    @classmethod
    def prepare(cls, config: "Config", backbone: "FrozenCLIP", texts: "ClassTexts") -> dict:
        """Class descriptions through the frozen text encoder: the semantic tokens of the patch branch."""
        from ...text.class_phrases import resolve_class_phrases
        from ...text.semantic_tokens import build_semantic_tokens

        resolved = resolve_class_phrases(config, texts.class_names)
        sem = config.method.spa.semantic
        texts.semantic = build_semantic_tokens(backbone, texts.class_names, resolved.phrases, sem.kind,
                                               sem.phrase_template)
        return {"source": resolved.source, "fallback_classes": resolved.fallback_classes}

    @property
    def variant(self) -> str:
        return "spa" if self.config.patch_branch else "clsonly"

    # ------------------------------------------------------------------ set-up
    def _attach(self, ctx: TaskContext) -> None:
        """Move text features to the device and create the projector stacks on first use."""
        self.device = ctx.device
        self.prompts = ctx.texts.prompt_embeddings.to(ctx.device)
        if self.config.patch_branch:
            if ctx.texts.semantic is None:
                raise UsageError("SPA's patch branch needs semantic tokens (class descriptions)")
            self.semantic = ctx.texts.semantic.to(ctx.device)
        if self.visual is None:
            dim = self.prompts.shape[1]
            p = self.config.projector
            self.visual = ProjectorStack(dim, p.hidden_dim, p.per_task).to(ctx.device)
            self.text = ProjectorStack(dim, p.hidden_dim, p.per_task).to(ctx.device) if p.text else None

    def _add_projectors(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        assert self.visual is not None
        self.visual.add_task(generator)
        if self.text is not None:
            self.text.add_task(generator)
        self.visual.to(self.device)
        if self.text is not None:
            self.text.to(self.device)

    # ------------------------------------------------------------------ scoring
    def _text(self, x: Tensor) -> Tensor:
        return self.text(x) if self.text is not None else F.normalize(x, dim=-1)

    def class_side(self, n_seen: int) -> dict[str, Tensor]:
        """Adapted text features of the seen classes (computed once per scoring call, not per chunk)."""
        out = {"prompts": self._text(self.prompts[:n_seen])}
        if self.config.prototype_weight > 0:
            protos = torch.stack([self.prototypes[c] for c in range(n_seen)]).to(self.prompts.device)
            out["prototypes"] = self.visual(protos)
        if self.config.patch_branch:
            sem = self.semantic
            mask = sem.mask[:n_seen]
            out["tokens"] = self._text(sem.tokens[:n_seen]) * mask[..., None]
            out["token_mask"] = mask
            out["description"] = self._text(sem.description[:n_seen])
        return out

    def patch_scores(self, patches: Tensor, side: dict[str, Tensor], generator: torch.Generator | None = None
                     ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Patch-level scores ``[B, C]`` for adapted patches ``[B, P, D]``; also the plan and selection."""
        cfg = self.config
        relevance = patch_relevance(patches, cfg.selection.rule, side["description"], side["tokens"],
                                    side["token_mask"], generator)
        k = patches.shape[1] if cfg.selection.rule == "all" else cfg.selection.k
        selected, index = select_top_k(patches, relevance, k)  # [B, C, k, D]
        tokens, mask = side["tokens"], side["token_mask"]
        if cfg.ot.aggregation == "mean":
            pooled = F.normalize(selected.mean(dim=2), dim=-1)  # [B, C, D]
            token_mean = F.normalize((tokens * mask[..., None]).sum(1), dim=-1)  # [C, D]
            return (pooled * token_mean[None]).sum(-1), None, index
        sim = torch.einsum("bckd,cnd->bckn", selected, tokens)
        a = torch.full(selected.shape[:3], 1.0 / selected.shape[2], device=sim.device)
        b = uniform_masses(mask)[None]  # [1, C, N]
        score, plan = ot_score(sim, a, b, cfg.ot.eps, cfg.ot.iterations, detach_plan=cfg.ot.detach_plan)
        return score, plan, index

    def _logits(self, global_: Tensor, patches: Tensor | None, side: dict[str, Tensor],
                generator: torch.Generator | None = None) -> Tensor:
        g = self.visual(global_)
        score = g @ side["prompts"].T
        if "prototypes" in side:
            score = score + self.config.prototype_weight * (g @ side["prototypes"].T)
        if self.config.patch_branch and patches is not None:
            p = self.visual(patches.float())
            score = score + self.config.fusion_weight * self.patch_scores(p, side, generator)[0]
        return self.config.logit_scale * score

    def logits(self, batch: FeatureBatch, n_seen: int) -> Tensor:
        side = self.class_side(n_seen)
        # only used by rule=random
        generator = torch.Generator(device=batch.global_.device).manual_seed(self.config.selection.eval_seed)
        chunks = [self._logits(batch.global_[i:i + self.chunk_size], batch.patches[i:i + self.chunk_size], side,
                               generator)
                  for i in range(0, len(batch), self.chunk_size)]
        return torch.cat(chunks)

    @torch.no_grad()
    def alignment(self, patches: Tensor, labels: list[int], n_seen: int) -> list[dict]:
        """Per image: the patches its true class's descriptions select, the phrase each is transported to
        (its largest plan entry; the most similar token under ``ot.aggregation=mean``), and the patch score."""
        side = self.class_side(n_seen)
        adapted = self.visual(patches.float())
        score, plan, index = self.patch_scores(adapted, side)
        sem = self.semantic
        out = []
        for i, c in enumerate(labels):
            entry = {"label": int(c), "patches": index[i, c].tolist(), "phrases": [], "weights": []}
            for j in range(index.shape[2]):
                if plan is None:
                    sims = adapted[i, index[i, c, j]] @ side["tokens"][c].T
                    token = int(sims.masked_fill(~side["token_mask"][c], -2).argmax())
                    weight = float("nan")
                else:
                    token = int(plan[i, c, j].argmax())
                    weight = float(plan[i, c, j].sum())
                entry["phrases"].append(sem.phrases[c][int(sem.token_phrase[c, token])])
                entry["weights"].append(weight)
            entry["patch_score"] = float(score[i, c])
            out.append(entry)
        return out

    # ------------------------------------------------------------------ training
    def learn_task(self, ctx: TaskContext, train: FeatureBatch) -> dict:
        self._attach(ctx)
        self._add_projectors(ctx.seed)
        self._add_prototypes(ctx, train)
        cfg, tc = self.config, self.train_config
        params = self.visual.trainable_parameters() + (self.text.trainable_parameters() if self.text else [])
        old = [c for c in range(ctx.new_classes.start) if c in self.global_bank.means]
        replay = cfg.replay.enabled and bool(old)
        stats = {"loss": None, "replay_classes": len(old) if replay else 0}
        if tc.epochs > 0 and params:
            stats["loss"] = self._train(ctx, train, params, old if replay else [])
        for module in (self.visual, self.text):
            if module is not None:
                module.requires_grad_(False)
        self._remember_classes(ctx, train)
        self.tasks_learned = ctx.task + 1
        return stats

    def _train(self, ctx: TaskContext, train: FeatureBatch, params: list, old: list[int]) -> float:
        cfg, tc = self.config, self.train_config
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        cpu_gen = torch.Generator().manual_seed(ctx.seed)
        dev_gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + cfg.sampling_seed_offset)
        n = len(train)
        steps_per_epoch = max(1, -(-n // tc.batch_size))
        total_steps = steps_per_epoch * tc.epochs
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
        replay_patches = cfg.patch_branch and cfg.replay.patch_mode == "selected_tokens"
        last_loss = 0.0
        for _epoch in range(tc.epochs):
            order = torch.randperm(n, generator=cpu_gen).to(ctx.device)
            if old:
                pg, py = self.global_bank.sample(old, cfg.replay.samples_per_class, dev_gen, ctx.device)
                pp = None
                if replay_patches:
                    pp, _ = self.patch_bank.sample(old, cfg.replay.samples_per_class, dev_gen, ctx.device,
                                                   tokens_per_sample=cfg.selection.k)
                pseudo_order = torch.randperm(len(py), generator=cpu_gen).to(ctx.device)
                pseudo_per_step = -(-len(py) // steps_per_epoch)
            for step in range(steps_per_epoch):
                idx = order[step * tc.batch_size:(step + 1) * tc.batch_size]
                side = self.class_side(ctx.n_seen)
                logits = self._logits(train.global_[idx], train.patches[idx], side, dev_gen)
                loss = F.cross_entropy(logits, train.labels[idx])
                if old:
                    j = pseudo_order[step * pseudo_per_step:(step + 1) * pseudo_per_step]
                    if len(j):
                        pseudo_logits = self._logits(pg[j], pp[j] if pp is not None else None, side, dev_gen)
                        loss = loss + cfg.replay.loss_weight * F.cross_entropy(pseudo_logits, py[j])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                last_loss = loss.detach()
        return float(last_loss)

    @torch.no_grad()
    def _add_prototypes(self, ctx: TaskContext, train: FeatureBatch) -> None:
        g = F.normalize(train.global_.float(), dim=-1)
        for c in ctx.new_classes:
            rows = train.labels == c
            if not bool(rows.any()):
                raise UsageError(f"task {ctx.task}: no training samples for class {c}")
            self.prototypes[c] = F.normalize(g[rows].mean(0), dim=-1)

    @torch.no_grad()
    def _remember_classes(self, ctx: TaskContext, train: FeatureBatch) -> None:
        """Store Gaussian statistics of the new classes (frozen, normalised features)."""
        if not self.config.replay.enabled:
            return
        g = F.normalize(train.global_.float(), dim=-1)
        want_patches = self.config.patch_branch and self.config.replay.patch_mode == "selected_tokens"
        for c in ctx.new_classes:
            rows = torch.nonzero(train.labels == c).flatten()
            self.global_bank.add_class(c, g[rows])
            if want_patches:
                self.patch_bank.add_class(c, self._own_selected_tokens(train.patches[rows], c))

    def _own_selected_tokens(self, patches: Tensor, label: int) -> Tensor:
        """The k frozen patch tokens per image that class ``label``'s description selects, stacked [n*k, D]."""
        p = F.normalize(patches.float(), dim=-1)
        sem = self.semantic
        rel = patch_relevance(p, "description" if self.config.selection.rule in {"random", "all"} else
                              self.config.selection.rule, sem.description[label:label + 1],
                              sem.tokens[label:label + 1], sem.mask[label:label + 1])
        selected, _ = select_top_k(p, rel, self.config.selection.k)
        return selected[:, 0].reshape(-1, p.shape[-1])

    # ------------------------------------------------------------------ state
    def trainable_state(self) -> dict[str, Tensor]:
        state = {f"visual.{k}": v.cpu() for k, v in self.visual.state_dict().items()} if self.visual else {}
        if self.text is not None:
            state.update({f"text.{k}": v.cpu() for k, v in self.text.state_dict().items()})
        if self.prototypes:
            state["prototypes"] = torch.stack([self.prototypes[c] for c in sorted(self.prototypes)]).cpu()
        state.update(self.global_bank.state("bank.global"))
        state.update(self.patch_bank.state("bank.patch"))
        return state

    def load_trainable_state(self, state: dict[str, Tensor], ctx: TaskContext) -> None:
        self._attach(ctx)
        n_adapters = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("visual.adapters."))
        while len(self.visual.adapters) < n_adapters:
            self._add_projectors(0)
        self.visual.load_state_dict({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")})
        if self.text is not None:
            self.text.load_state_dict({k[len("text."):]: v for k, v in state.items() if k.startswith("text.")})
        for module in (self.visual, self.text):
            if module is not None:
                module.requires_grad_(False).to(ctx.device)
        self.prototypes = {c: v.to(ctx.device) for c, v in enumerate(state["prototypes"])} if "prototypes" in state else {}
        self.global_bank.load_state(state, "bank.global")
        self.patch_bank.load_state(state, "bank.patch")
        self.tasks_learned = ctx.task + 1
