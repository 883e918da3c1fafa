"""The SPA learner: global [CLS]-text alignment fused with description-guided patch-level OT.

Score of image b for class c (all features L2-normalised)::

    global[b, c] = <g_b, t_c> + w_p <g_b, m_c>      g: adapted [CLS], t: adapted class prompt,
                                                    m: adapted class mean of frozen [CLS] features
    patch[b, c]  = sum_mn  plan_mn * <p_bm, s_cn>   p: k patches of b selected for c, s: c's semantic tokens
    logit[b, c]  = scale * (global[b, c] + fusion_weight * patch[b, c]) + bias[task(c)]

Per task a new projector (visual and, optionally, text) is trained with cross-entropy over every seen
class, on the real features of the new classes plus Gaussian pseudo-features of the old ones. With
``projector.scope=global`` (default) the projectors adapt the global branch only and the patch branch
runs on frozen features, so its scores are computed once per task rather than once per step. After each
task, ``bias`` (one offset per task) is fitted on balanced pseudo-features of every seen class
(``replay.calibration``).
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
from .calibration import fit_task_offsets, task_of_class
from .config import SPAConfig
from .gaussian_replay import GaussianBank
from .patch_selection import (gather_selected, patch_relevance, random_directions, selected_mean,
                              subtract_context, token_max_relevance, token_similarities, top_k_indices)
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
              "spa_random_selection": ["selection.rule=random"],
              "spa_no_context_selection": ["selection.context_weight=0"],
              "spa_no_calibration": ["replay.calibration=none"],
              "spa_adapted_patches": ["projector.scope=all"],
              "spa_token_replay": ["replay.patch_mode=selected_tokens"]},
    extra_variants={"spa_no_patch_replay": ["replay.patch_mode=none"],
                    "spa_plain": ["selection.context_weight=0", "replay.calibration=none", "projector.scope=all",
                                  "replay.patch_mode=selected_tokens"]},
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
        self.patch_bank = GaussianBank(config.replay.shrinkage)  # per class: its description-selected tokens
        self.context_bank = GaussianBank(config.replay.shrinkage)  # per class: its other tokens
        self.prompts: Tensor | None = None
        self.prototypes: dict[int, Tensor] = {}  # class mean of frozen normalised [CLS] features
        self.semantic: "SemanticTokens | None" = None
        self.device = torch.device("cpu")
        self.tasks_learned = 0
        self.n_patches = 0
        self.task_starts: list[int] = []  # first label of every task learned so far
        self.task_bias: Tensor | None = None  # [tasks] logit offsets from the calibration

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

    @property
    def _frozen_patch_branch(self) -> bool:
        return self.config.projector.scope == "global"

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

    def _patch_text(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self._frozen_patch_branch else self._text(x)

    def _patch_input(self, patches: Tensor) -> Tensor:
        """Patch tokens as the patch branch sees them: frozen (scope=global) or adapted (scope=all)."""
        return F.normalize(patches.float(), dim=-1) if self._frozen_patch_branch else self.visual(patches.float())

    def class_side(self, n_seen: int) -> dict[str, Tensor]:
        """Class-side features of the seen classes (computed once per scoring call, not per chunk)."""
        out = {"prompts": self._text(self.prompts[:n_seen])}
        if self.config.prototype_weight > 0:
            protos = torch.stack([self.prototypes[c] for c in range(n_seen)]).to(self.prompts.device)
            out["prototypes"] = self.visual(protos)
        if self.config.patch_branch:
            sem = self.semantic
            mask = sem.mask[:n_seen]
            out["tokens"] = self._patch_text(sem.tokens[:n_seen]) * mask[..., None]
            out["token_mask"] = mask
            out["description"] = self._patch_text(sem.description[:n_seen])
            if self.config.selection.rule == "random":
                out["description"] = random_directions(n_seen, sem.tokens.shape[-1],
                                                       self.config.selection.random_seed).to(sem.tokens.device)
        return out

    def patch_scores(self, patches: Tensor, side: dict[str, Tensor]) -> tuple[Tensor, Tensor | None, Tensor]:
        """Patch-level scores ``[B, C]`` of patches ``[B, P, D]`` as the branch sees them; also the plans
        ``[B, C, k, N]`` (None for mean aggregation) and the selected patch indices ``[B, C, k]``."""
        cfg = self.config
        tokens, mask, rule = side["tokens"], side["token_mask"], cfg.selection.rule
        sim = token_similarities(patches, tokens) if cfg.ot.aggregation == "ot" or rule == "token_max" else None
        if rule == "token_max":
            relevance = subtract_context(patches, token_max_relevance(sim, mask), cfg.selection.context_weight)
        else:
            relevance = patch_relevance(patches, rule, side["description"], None, None, cfg.selection.context_weight)
        index = top_k_indices(relevance, patches.shape[1] if rule == "all" else cfg.selection.k)
        if cfg.ot.aggregation == "mean":
            pooled = F.normalize(selected_mean(patches, index), dim=-1)  # [B, C, D]
            token_mean = F.normalize((tokens * mask[..., None]).sum(1), dim=-1)  # [C, D]
            return (pooled * token_mean[None]).sum(-1), None, index
        selected = gather_selected(sim, index)  # [B, C, k, N]
        a = torch.full(selected.shape[:3], 1.0 / selected.shape[2], device=selected.device)
        b = uniform_masses(mask)[None]  # [1, C, N]
        score, plan = ot_score(selected, a, b, cfg.ot.eps, cfg.ot.iterations, detach_plan=cfg.ot.detach_plan,
                               domain=cfg.ot.domain, check_convergence=cfg.ot.check_convergence,
                               tol=cfg.ot.convergence_tol, compile=cfg.ot.compile)
        return score, plan, index

    @torch.no_grad()
    def _patch_score_table(self, patches: Tensor, side: dict[str, Tensor]) -> Tensor:
        """Patch scores ``[n, C]`` of many images, chunk by chunk (no graph: the frozen branch's constants)."""
        return torch.cat([self.patch_scores(self._patch_input(patches[i:i + self.chunk_size]), side)[0]
                          for i in range(0, len(patches), self.chunk_size)])

    def _logits(self, global_: Tensor, side: dict[str, Tensor], patch: Tensor | None) -> Tensor:
        """Uncalibrated logits from global features and (optionally) the patch scores ``[B, C]``."""
        g = self.visual(global_)
        score = g @ side["prompts"].T
        if "prototypes" in side:
            score = score + self.config.prototype_weight * (g @ side["prototypes"].T)
        if patch is not None:
            score = score + self.config.fusion_weight * patch
        return self.config.logit_scale * score

    def _scored(self, global_: Tensor, patches: Tensor | None, side: dict[str, Tensor]) -> Tensor:
        patch = None
        if self.config.patch_branch and patches is not None:
            patch = self.patch_scores(self._patch_input(patches), side)[0]
        return self._logits(global_, side, patch)

    def logits(self, batch: FeatureBatch, n_seen: int) -> Tensor:
        side = self.class_side(n_seen)
        chunks = [self._scored(batch.global_[i:i + self.chunk_size], batch.patches[i:i + self.chunk_size], side)
                  for i in range(0, len(batch), self.chunk_size)]
        return self._calibrated(torch.cat(chunks))

    def _calibrated(self, logits: Tensor) -> Tensor:
        if self.task_bias is None:
            return logits
        task = task_of_class(self.task_starts, logits.shape[1], logits.device)
        return logits + self.task_bias.to(logits.device)[task]

    @torch.no_grad()
    def patch_evidence(self, patches: Tensor, n_seen: int) -> tuple[Tensor, Tensor | None, Tensor]:
        """What the patch branch does with raw patches ``[B, P, D]``: scores ``[B, C]``, plans ``[B, C, k, N]``
        (None under mean aggregation) and selected patch indices ``[B, C, k]`` (for mechanism metrics)."""
        return self.patch_scores(self._patch_input(patches), self.class_side(n_seen))

    @torch.no_grad()
    def alignment(self, patches: Tensor, labels: list[int], n_seen: int) -> list[dict]:
        """Per image: the patches its true class's descriptions select, the phrase each is transported to
        (its largest plan entry; the most similar token under ``ot.aggregation=mean``), and the patch score."""
        side = self.class_side(n_seen)
        seen_by_branch = self._patch_input(patches)
        score, plan, index = self.patch_scores(seen_by_branch, side)
        sem = self.semantic
        out = []
        for i, c in enumerate(labels):
            entry = {"label": int(c), "patches": index[i, c].tolist(), "phrases": [], "weights": []}
            for j in range(index.shape[2]):
                if plan is None:
                    sims = seen_by_branch[i, index[i, c, j]] @ side["tokens"][c].T
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
        self.task_starts = self.task_starts[:ctx.task] + [ctx.new_classes.start]
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
        if cfg.replay.calibration == "task_bias":
            self._fit_task_bias(ctx.n_seen, ctx.seed + cfg.replay.calibration_seed_offset)
            stats["task_bias"] = [round(float(b), 4) for b in self.task_bias]
        self.tasks_learned = ctx.task + 1
        return stats

    def _train(self, ctx: TaskContext, train: FeatureBatch, params: list, old: list[int]) -> float:
        cfg, tc = self.config, self.train_config
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        cpu_gen = torch.Generator().manual_seed(ctx.seed)
        dev_gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + cfg.sampling_seed_offset)
        n = len(train)
        steps_per_epoch = max(1, -(-n // tc.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_per_epoch * tc.epochs)
        # the frozen patch branch gives constants: score real images once, and a pool of pseudo images once
        fixed = cfg.patch_branch and self._frozen_patch_branch
        real_patch = pool_patch = None
        if fixed:
            side = self.class_side(ctx.n_seen)
            real_patch = self._patch_score_table(train.patches, side)
            if old and cfg.replay.patch_mode != "none":
                pool_patch = self._pseudo_patch_scores(old, cfg.replay.samples_per_class, side, dev_gen)
        last_loss = torch.zeros(())
        for _epoch in range(tc.epochs):
            order = torch.randperm(n, generator=cpu_gen).to(ctx.device)
            if old:
                # global and patch Gaussians are independent, so fresh global draws paired with the pooled
                # patch scores of the same class are distributed like fresh (global, patch) draws
                pg, py = self.global_bank.sample(old, cfg.replay.samples_per_class, dev_gen, ctx.device)
                pseudo_order = torch.randperm(len(py), generator=cpu_gen).to(ctx.device)
                pseudo_per_step = -(-len(py) // steps_per_epoch)
            for step in range(steps_per_epoch):
                idx = order[step * tc.batch_size:(step + 1) * tc.batch_size]
                side = self.class_side(ctx.n_seen)
                if fixed:
                    logits = self._logits(train.global_[idx], side, real_patch[idx])
                else:
                    logits = self._scored(train.global_[idx], train.patches[idx], side)
                loss = F.cross_entropy(logits, train.labels[idx])
                if old:
                    j = pseudo_order[step * pseudo_per_step:(step + 1) * pseudo_per_step]
                    if len(j):
                        if fixed:
                            patch = pool_patch[j] if pool_patch is not None else None
                            pseudo_logits = self._logits(pg[j], side, patch)
                        else:
                            # drawn per step for this step's labels: all pseudo patch sets of an epoch at
                            # once would be [old classes x samples, P, D]
                            patches = self._pseudo_patches(py[j].tolist(), 1, dev_gen)
                            pseudo_logits = self._scored(pg[j], patches, side)
                        loss = loss + cfg.replay.loss_weight * F.cross_entropy(pseudo_logits, py[j])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                last_loss = loss.detach()
        return float(last_loss)

    # ------------------------------------------------------------------ old-class calibration
    def _pseudo_patches(self, classes: list[int], per_class: int, generator: torch.Generator) -> Tensor | None:
        """Pseudo patch sets ``[len(classes) * per_class, T, D]`` (class-major), or None without patch replay."""
        mode = self.config.replay.patch_mode if self.config.patch_branch else "none"
        if mode == "none" or not classes:
            return None
        k = min(self.config.selection.k, self.n_patches)
        own, _ = self.patch_bank.sample(classes, per_class, generator, self.device, tokens_per_sample=k)
        if mode == "selected_tokens" or not len(self.context_bank):
            return own
        rest, _ = self.context_bank.sample(classes, per_class, generator, self.device,
                                           tokens_per_sample=self.n_patches - k)
        return torch.cat([own, rest], dim=1)

    @torch.no_grad()
    def _pseudo_patch_scores(self, classes: list[int], per_class: int, side: dict[str, Tensor],
                             generator: torch.Generator) -> Tensor:
        """Patch scores ``[len(classes) * per_class, C]`` of pseudo images (class-major). Drawn one class at a
        time (the random stream does not depend on ``chunk_size``) and scored a chunk at a time, so the
        pseudo patch sets never all sit in memory."""
        scores, pending, n_pending = [], [], 0
        for i, c in enumerate(classes):
            pending.append(self._pseudo_patches([c], per_class, generator))
            n_pending += per_class
            if n_pending >= self.chunk_size or i == len(classes) - 1:
                scores.append(self._patch_score_table(torch.cat(pending), side))
                pending, n_pending = [], 0
        return torch.cat(scores)

    @torch.no_grad()
    def _fit_task_bias(self, n_seen: int, seed: int) -> None:
        """One logit offset per task, fitted by cross-entropy on balanced pseudo-features of all seen classes."""
        per_class = self.config.replay.calibration_samples
        generator = torch.Generator(device=self.device).manual_seed(seed)
        classes = list(range(n_seen))
        side = self.class_side(n_seen)
        g, y = self.global_bank.sample(classes, per_class, generator, self.device)
        patch = None
        if self.config.patch_branch and self.config.replay.patch_mode != "none":
            patch = self._pseudo_patch_scores(classes, per_class, side, generator)
        logits = torch.cat([self._logits(g[i:i + self.chunk_size], side,
                                         None if patch is None else patch[i:i + self.chunk_size])
                            for i in range(0, len(y), self.chunk_size)])
        task = task_of_class(self.task_starts, n_seen, self.device)
        self.task_bias = fit_task_offsets(logits, y, task, len(self.task_starts))

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
        if not self.config.replay.enabled and self.config.replay.calibration == "none":
            return
        g = F.normalize(train.global_.float(), dim=-1)
        mode = self.config.replay.patch_mode if self.config.patch_branch else "none"
        self.n_patches = int(train.patches.shape[1])
        for c in ctx.new_classes:
            rows = torch.nonzero(train.labels == c).flatten()
            self.global_bank.add_class(c, g[rows])
            if mode != "none":
                own, rest = self._own_tokens(train.patches[rows], c)
                self.patch_bank.add_class(c, own)
                if mode == "image" and len(rest):
                    self.context_bank.add_class(c, rest)

    def _own_tokens(self, patches: Tensor, label: int) -> tuple[Tensor, Tensor]:
        """Frozen patch tokens of class ``label``'s images: the k its descriptions select and the rest,
        each stacked ``[n * k, D]`` / ``[n * (P - k), D]`` (random/all rules select by description)."""
        p = F.normalize(patches.float(), dim=-1)
        sem = self.semantic
        rule = "description" if self.config.selection.rule in {"random", "all"} else self.config.selection.rule
        relevance = patch_relevance(p, rule, sem.description[label:label + 1], sem.tokens[label:label + 1],
                                    sem.mask[label:label + 1], context_weight=self.config.selection.context_weight)
        order = relevance[:, 0].argsort(dim=1, descending=True)[..., None].expand(-1, -1, p.shape[-1])
        k = min(self.config.selection.k, p.shape[1])
        d = p.shape[-1]
        return (torch.gather(p, 1, order[:, :k]).reshape(-1, d), torch.gather(p, 1, order[:, k:]).reshape(-1, d))

    # ------------------------------------------------------------------ state
    def trainable_state(self) -> dict[str, Tensor]:
        state = {f"visual.{k}": v.cpu() for k, v in self.visual.state_dict().items()} if self.visual else {}
        if self.text is not None:
            state.update({f"text.{k}": v.cpu() for k, v in self.text.state_dict().items()})
        if self.prototypes:
            state["prototypes"] = torch.stack([self.prototypes[c] for c in sorted(self.prototypes)]).cpu()
        state["task_starts"] = torch.tensor(self.task_starts, dtype=torch.long)
        state["n_patches"] = torch.tensor(self.n_patches, dtype=torch.long)
        if self.task_bias is not None:
            state["task_bias"] = self.task_bias.cpu()
        state.update(self.global_bank.state("bank.global"))
        state.update(self.patch_bank.state("bank.patch"))
        state.update(self.context_bank.state("bank.context"))
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
        self.task_starts = state["task_starts"].tolist() if "task_starts" in state else []
        self.n_patches = int(state["n_patches"]) if "n_patches" in state else 0
        self.task_bias = state["task_bias"].to(ctx.device) if "task_bias" in state else None
        self.global_bank.load_state(state, "bank.global", ctx.device)
        self.patch_bank.load_state(state, "bank.patch", ctx.device)
        self.context_bank.load_state(state, "bank.context", ctx.device)
        self.tasks_learned = ctx.task + 1
