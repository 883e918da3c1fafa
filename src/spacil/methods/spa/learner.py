"""The SPA learner: global [CLS]-text alignment fused with description-guided patch-level OT.

Score of image b for class c (all features L2-normalised)::

    global[b, c] = <g_b, t_c> + w_p <g_b, m_c>      g: adapted [CLS], t: adapted class prompt,
                                                    m: adapted class mean of frozen [CLS] features
    patch[b, c]  = sum_mn  plan_mn * <p_bm, s_cn>   p: k patches of b selected for c, projected by the patch
                                                    projector (trained in the first task); s: c's semantic
                                                    tokens (its phrase embeddings plus offsets learned in c's task)
    logit[b, c]  = scale * (global[b, c] + fusion_weight * patch[b, c]) + bias[task(c)]

(With ``projector.patch=per_task`` each task has its own patch projector, and the patch term can be centred
per task and gated by the global branch's probability mass on c's task: ``patch_centering``, ``patch_gate``.)

Per task a new projector (visual and, optionally, text) is trained with cross-entropy over every seen
class, on the real features of the new classes plus Gaussian pseudo-features of the old ones. These shared
projectors adapt the global branch only (``projector.scope=global``). The patch branch learns through
a patch projector trained in the first task (``projector.patch=first_task``) and each task's token offsets
for its classes (``projector.tokens=learned``), trained through the OT score with the fused loss plus a
cross-entropy over the task's classes on the patch score alone; an old class's patch score never moves, so
what cannot change is scored once per task, not per step. After each task, ``bias``
(one offset per task) is fitted on balanced pseudo-features of every seen class (``replay.calibration``).
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UsageError
from ...ot import ot_score, uniform_masses
from ..base import FeatureBatch, Learner, TaskContext
from ..registry import register_method
from .calibration import fit_task_offsets, task_of_class
from .config import SPAConfig
from .gaussian_replay import GaussianBank
from .patch_selection import (gather_selected, patch_relevance, random_directions, selected_mean,
                              subtract_context, token_max_relevance, token_similarities, top_k_indices)
from .projectors import ProjectorStack, ResidualAdapter

if TYPE_CHECKING:
    from ...backbone import FrozenCLIP
    from ...config import Config, TrainConfig
    from ...text.class_texts import ClassTexts
    from ...text.semantic_tokens import SemanticTokens

logger = logging.getLogger(__name__)


@register_method(
    "spa", config=SPAConfig, features=("global", "patches", "prompts", "descriptions"),
    # default rows: the controls, SPA, and one ablation per component of the default path
    variants={"clsonly": ["patch_branch=false"], "clsonly_desc": ["patch_branch=false", "global_descriptions=true"],
              "spa": [], "spa_fixed_tokens": ["projector.tokens=frozen"],
              "spa_per_task_patches": ["projector.patch=per_task", "patch_centering=task",
                                       "patch_gate=task_probability"],
              "spa_frozen_patches": ["projector.patch=frozen"],
              "spa_no_patch_loss": ["patch_loss_weight=0"],
              "spa_no_ot": ["ot.aggregation=mean"], "spa_random_selection": ["selection.rule=random"],
              "spa_no_replay": ["replay.enabled=false"], "spa_no_calibration": ["replay.calibration=none"]},
    # named on demand (`--variants`): choices measured before, kept reachable
    extra_variants={"spa_centred_patches": ["patch_centering=task"],
                    "spa_gated_patches": ["patch_gate=task_probability"],
                    "spa_shared_projector": ["projector.per_task=false"],
                    "spa_no_context_selection": ["selection.context_weight=0"],
                    "spa_adapted_patches": ["projector.scope=all"],
                    "spa_random_tokens": ["projector.token_init=random"],
                    "spa_token_replay": ["replay.patch_mode=selected_tokens"],
                    "spa_no_patch_replay": ["replay.patch_mode=none"],
                    "spa_plain": ["selection.context_weight=0", "replay.calibration=none", "projector.scope=all",
                                  "replay.patch_mode=selected_tokens", "projector.patch=frozen",
                                  "patch_centering=none"]},
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
        self.patch_projectors: nn.ModuleList | None = None  # learned patch branch: one adapter (per task if per_task)
        self.token_offsets: nn.ParameterList | None = None  # projector.tokens=learned: [n_new, N, D] per task
        self.pool_seed: int | None = None  # seeds every class's calibration pool (fixed at the first task)
        self._pool_scores: dict[int, Tensor] = {}  # class -> patch scores of its pool vs classes 0..m-1

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
        """No projector shared by all classes acts on the patch branch (scope=global): an old class's patch
        score never moves once its task is learned (frozen, or scored through its own task's projector)."""
        return self.config.projector.scope == "global"

    @property
    def learns_patch_alignment(self) -> bool:
        """A patch projector (and, by default, class tokens) trained through the OT score: the default
        patch branch. Read by scripts/forgetting_anatomy.py for the branch's background rates."""
        p = self.config.projector
        return self.config.patch_branch and p.scope == "global" and p.patch in {"per_task", "first_task"}

    @property
    def _learned_tokens(self) -> bool:
        return self.learns_patch_alignment and self.config.projector.tokens == "learned"

    # ------------------------------------------------------------------ set-up
    def _attach(self, ctx: TaskContext) -> None:
        """Move text features to the device and create the projector stacks on first use."""
        self.device = ctx.device
        self.prompts = ctx.texts.prompt_embeddings.to(ctx.device)
        if self.config.patch_branch or self.config.global_descriptions:
            if ctx.texts.semantic is None:
                raise UsageError("SPA's patch branch and global_descriptions need semantic tokens (class descriptions)")
            self.semantic = ctx.texts.semantic.to(ctx.device)
        if self.config.global_descriptions:
            self.prompts = F.normalize(F.normalize(self.prompts.float(), dim=-1) + self.semantic.description, dim=-1)
        if self.visual is None:
            dim = self.prompts.shape[1]
            p = self.config.projector
            self.visual = ProjectorStack(dim, p.hidden_dim, p.per_task).to(ctx.device)
            self.text = ProjectorStack(dim, p.hidden_dim, p.per_task).to(ctx.device) if p.text else None
            self.patch_projectors = nn.ModuleList() if self.learns_patch_alignment else None
            self.token_offsets = nn.ParameterList() if self._learned_tokens else None

    def _add_projectors(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        assert self.visual is not None
        self.visual.add_task(generator)
        if self.text is not None:
            self.text.add_task(generator)
        self.visual.to(self.device)
        if self.text is not None:
            self.text.to(self.device)
        one_per_task = self.config.projector.patch == "per_task"
        if self.patch_projectors is not None and (one_per_task or not self.patch_projectors):
            self.patch_projectors.requires_grad_(False)
            dim = self.prompts.shape[1]
            self.patch_projectors.append(ResidualAdapter(dim, self.config.projector.hidden_dim, generator).to(self.device))

    def _add_token_offsets(self, classes: range, seed: int) -> None:
        """Offsets for the new classes' semantic tokens (the older tasks' offsets are frozen): zero, or under
        ``token_init=random`` whatever moves each phrase token onto a seeded random unit vector."""
        if self.token_offsets is None:
            return
        self.token_offsets.requires_grad_(False)
        phrases = self.semantic.tokens[classes.start:classes.stop]
        offsets = torch.zeros_like(phrases)
        if self.config.projector.token_init == "random":
            noise = torch.randn(phrases.shape, generator=torch.Generator().manual_seed(seed)).to(phrases.device)
            mask = self.semantic.mask[classes.start:classes.stop, :, None]
            offsets = (F.normalize(noise, dim=-1) - phrases) * mask
        self.token_offsets.append(nn.Parameter(offsets))

    def _semantic_side(self, n_seen: int) -> tuple[Tensor, Tensor]:
        """Semantic tokens ``[n_seen, N, D]`` and description embeddings ``[n_seen, D]`` as the patch branch
        matches them: the phrase embeddings, plus each class's learned offsets under projector.tokens=learned
        (the description then moves by the mean offset of the class's tokens)."""
        sem = self.semantic
        tokens, description, mask = sem.tokens[:n_seen], sem.description[:n_seen], sem.mask[:n_seen]
        if self.token_offsets is not None and len(self.token_offsets):
            offsets = torch.cat(list(self.token_offsets))[:n_seen]
            if offsets.shape[0] < n_seen:  # classes of a task not learned yet keep their phrases
                offsets = torch.cat([offsets, offsets.new_zeros(n_seen - offsets.shape[0], *offsets.shape[1:])])
            weights = uniform_masses(mask)[..., None]
            tokens, description = tokens + offsets, description + (offsets * weights).sum(1)
        return tokens, description

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
            tokens, description = self._semantic_side(n_seen)
            out["tokens"] = self._patch_text(tokens) * mask[..., None]
            out["token_mask"] = mask
            out["description"] = self._patch_text(description)
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

    def _task_ranges(self, n_seen: int) -> list[tuple[int, int, int]]:
        """(task, first class, end) of every task whose classes are among the first ``n_seen``."""
        starts = [c for c in self.task_starts if c < n_seen]
        return [(j, a, b) for j, (a, b) in enumerate(zip(starts, starts[1:] + [n_seen]))]

    @staticmethod
    def _side_slice(side: dict[str, Tensor], start: int, end: int) -> dict[str, Tensor]:
        return {k: side[k][start:end] for k in ("tokens", "token_mask", "description")}

    def branch_scores(self, patches: Tensor, side: dict[str, Tensor], classes: range | None = None,
                      ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Patch-branch scores ``[B, C']`` of raw patches ``[B, P, D]`` for ``classes`` (default: all in ``side``),
        with plans and selected indices as :meth:`patch_scores`. With per-task patch projectors the classes of
        task j are scored on patches projected by task j's projector."""
        n = side["tokens"].shape[0]
        classes = classes if classes is not None else range(n)
        if not self.learns_patch_alignment:
            part = self._side_slice(side, classes.start, classes.stop)
            return self.patch_scores(self._patch_input(patches), part)
        x = F.normalize(patches.float(), dim=-1)
        scores, plans, indices = [], [], []
        for j, a, b in self._task_ranges(n):
            a, b = max(a, classes.start), min(b, classes.stop)
            if a >= b:
                continue
            projector = self.patch_projectors[min(j, len(self.patch_projectors) - 1)]  # first_task: one for all
            projected = F.normalize(x + projector(x), dim=-1)
            score, plan, index = self.patch_scores(projected, self._side_slice(side, a, b))
            scores.append(score)
            plans.append(plan)
            indices.append(index)
        plan = torch.cat(plans, dim=1) if plans and plans[0] is not None else None
        return torch.cat(scores, dim=1), plan, torch.cat(indices, dim=1)

    @torch.no_grad()
    def _patch_score_table(self, patches: Tensor, side: dict[str, Tensor], classes: range | None = None) -> Tensor:
        """Patch scores ``[n, C']`` of many images, chunk by chunk (no graph: constants while a task trains)."""
        return torch.cat([self.branch_scores(patches[i:i + self.chunk_size], side, classes)[0]
                          for i in range(0, len(patches), self.chunk_size)])

    def _logits(self, global_: Tensor, side: dict[str, Tensor], patch: Tensor | None) -> Tensor:
        """Uncalibrated logits from global features and (optionally) the patch scores ``[B, C]``."""
        g = self.visual(global_)
        score = g @ side["prompts"].T
        if "prototypes" in side:
            score = score + self.config.prototype_weight * (g @ side["prototypes"].T)
        if patch is not None:
            score = score + self.config.fusion_weight * self._centred(patch) * self._task_gate(score)
        return self.config.logit_scale * score

    def _task_gate(self, global_score: Tensor) -> Tensor | float:
        """``[B, C]``: per image, the global branch's probability mass on each class's task (patch_gate)."""
        if self.config.patch_gate == "none":
            return 1.0
        with torch.no_grad():
            prob = torch.softmax(self.config.logit_scale * global_score, dim=-1)
            task, n_tasks = self._class_tasks(prob.shape[1], prob.device)
            mass = torch.zeros(prob.shape[0], n_tasks, dtype=prob.dtype, device=prob.device).index_add_(1, task, prob)
        return mass[:, task]

    def _class_tasks(self, n_classes: int, device: torch.device) -> tuple[Tensor, int]:
        """Task index ``[n_classes]`` of the first ``n_classes`` classes, and how many tasks they span
        (counted on the host: no device sync)."""
        return (task_of_class(self.task_starts, n_classes, device),
                len([c for c in self.task_starts if c < n_classes]))

    def _centred(self, patch: Tensor) -> Tensor:
        """Patch scores ``[B, C]`` minus, per image, the mean over the classes of each class's task."""
        if self.config.patch_centering == "none":
            return patch
        task, n_tasks = self._class_tasks(patch.shape[1], patch.device)
        counts = torch.bincount(task, minlength=n_tasks).to(patch.dtype)
        means = torch.zeros(patch.shape[0], n_tasks, dtype=patch.dtype, device=patch.device).index_add_(1, task, patch)
        return patch - (means / counts)[:, task]

    def _scored(self, global_: Tensor, patches: Tensor | None, side: dict[str, Tensor]) -> Tensor:
        patch = None
        if self.config.patch_branch and patches is not None:
            patch = self.branch_scores(patches, side)[0]
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
        return self.branch_scores(patches, self.class_side(n_seen))

    @torch.no_grad()
    def alignment(self, patches: Tensor, labels: list[int], n_seen: int) -> list[dict]:
        """Per image: the patches its true class's descriptions select, the phrase each is transported to
        (its largest plan entry; the most similar token under ``ot.aggregation=mean``), and the patch score."""
        side = self.class_side(n_seen)
        seen_by_branch = self._patch_input(patches)  # only read under mean aggregation (no plan)
        score, plan, index = self.branch_scores(patches, side)
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
        self._add_token_offsets(ctx.new_classes, ctx.seed)
        self._add_prototypes(ctx, train)
        self.task_starts = self.task_starts[:ctx.task] + [ctx.new_classes.start]
        cfg, tc = self.config, self.train_config
        if self.pool_seed is None:
            self.pool_seed = ctx.seed + cfg.replay.calibration_seed_offset
        params = [{"params": self.visual.trainable_parameters()
                   + (self.text.trainable_parameters() if self.text else [])}]
        if self.patch_projectors is not None and (cfg.projector.patch == "per_task" or ctx.task == 0):
            params.append({"params": list(self.patch_projectors[-1].parameters()),
                           "lr": tc.lr * cfg.projector.patch_lr_scale})
        if self.token_offsets is not None:
            params.append({"params": [self.token_offsets[-1]], "lr": tc.lr * cfg.projector.token_lr_scale})
        params = [group for group in params if group["params"]]
        old = [c for c in range(ctx.new_classes.start) if c in self.global_bank.means]
        replay = cfg.replay.enabled and bool(old)
        stats = {"loss": None, "replay_classes": len(old) if replay else 0}
        if tc.epochs > 0 and params:
            stats["loss"] = self._train(ctx, train, params, old if replay else [])
        for module in (self.visual, self.text, self.patch_projectors, self.token_offsets):
            if module is not None:
                module.requires_grad_(False)
        if self.token_offsets is not None:
            stats["token_phrase_cosine"] = round(self._token_phrase_cosine(ctx.new_classes), 4)
        self._remember_classes(ctx, train)
        if cfg.replay.calibration == "task_bias":
            self._fit_task_bias(ctx.n_seen, ctx.seed + cfg.replay.calibration_seed_offset)
            stats["task_bias"] = [round(float(b), 4) for b in self.task_bias]
        self.tasks_learned = ctx.task + 1
        return stats

    @torch.no_grad()
    def _token_phrase_cosine(self, classes: range) -> float:
        """Mean cosine of the classes' learned tokens to their phrase embeddings (1 = nothing moved)."""
        tokens, _ = self._semantic_side(classes.stop)
        mask = self.semantic.mask[classes.start:classes.stop]
        cos = F.cosine_similarity(tokens[classes.start:], self.semantic.tokens[classes.start:classes.stop], dim=-1)
        return float(cos[mask].mean())

    def _train(self, ctx: TaskContext, train: FeatureBatch, params: list, old: list[int]) -> float:
        """Cross-entropy over every seen class on the new images and on pseudo-features of the old classes.

        What cannot move while this task trains is scored once: with the patch branch free of shared
        projectors (scope=global), every class's patch score when frozen, the old classes' when each task has
        its own patch projector (then only the new classes' scores are recomputed, with gradients, per step).
        """
        cfg, tc = self.config, self.train_config
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        cpu_gen = torch.Generator().manual_seed(ctx.seed)
        dev_gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + cfg.sampling_seed_offset)
        n = len(train)
        steps_per_epoch = max(1, -(-n // tc.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_per_epoch * tc.epochs)
        new = range(ctx.new_classes.start, ctx.n_seen)
        learned, fixed = self.learns_patch_alignment, cfg.patch_branch and self._frozen_patch_branch
        patch_replay = cfg.patch_branch and cfg.replay.patch_mode != "none"
        real_fixed = pool_fixed = None
        if fixed:
            side = self.class_side(ctx.n_seen)
            constant = range(new.start) if learned else range(ctx.n_seen)
            if len(constant):
                real_fixed = self._patch_score_table(train.patches, side, constant)
            if old and patch_replay and not learned:
                pool_fixed = torch.cat([self._pool_rows(c, cfg.replay.samples_per_class, ctx.n_seen, side)
                                        for c in old])
        per_class = cfg.replay.samples_per_class
        # the pseudo-features' order and labels live on the host as Python ints (class-major like the draws):
        # choosing a step's pseudo-features never waits for the device
        pseudo_labels = [c for c in old for _ in range(per_class)]
        host_rng = random.Random(ctx.seed)
        last_loss = torch.zeros(())
        for _epoch in range(tc.epochs):
            order = torch.randperm(n, generator=cpu_gen).to(ctx.device)
            if old:
                # global and patch Gaussians are independent, so fresh global draws paired with the pooled
                # patch scores of the same class are distributed like fresh (global, patch) draws
                pg, py = self.global_bank.sample(old, per_class, dev_gen, ctx.device)
                pseudo_order = list(range(len(pseudo_labels)))
                host_rng.shuffle(pseudo_order)
                pseudo_per_step = min(cfg.replay.max_pseudo_per_step, -(-len(pseudo_order) // steps_per_epoch))
            for step in range(steps_per_epoch):
                idx = order[step * tc.batch_size:(step + 1) * tc.batch_size]
                side = self.class_side(ctx.n_seen)
                patch = None
                aux = None
                if learned:
                    fresh = self.branch_scores(train.patches[idx], side, new)[0]
                    patch = fresh if real_fixed is None else torch.cat([real_fixed[idx], fresh], dim=1)
                    if cfg.patch_loss_weight > 0:  # the alignment itself: the task's classes on patches alone
                        aux = F.cross_entropy(cfg.logit_scale * fresh, train.labels[idx] - new.start)
                elif fixed:
                    patch = real_fixed[idx]
                elif cfg.patch_branch:
                    patch = self.branch_scores(train.patches[idx], side)[0]
                loss = F.cross_entropy(self._logits(train.global_[idx], side, patch), train.labels[idx])
                if aux is not None:
                    loss = loss + cfg.patch_loss_weight * aux
                if old:
                    j = pseudo_order[step * pseudo_per_step:(step + 1) * pseudo_per_step]
                    if j:
                        loss = loss + cfg.replay.loss_weight * self._pseudo_loss(
                            pg, py, j, [pseudo_labels[i] for i in j], pool_fixed, side, new, dev_gen, patch_replay)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                last_loss = loss.detach()
        return float(last_loss)

    def _pseudo_loss(self, pg: Tensor, py: Tensor, j: list[int], labels: list[int], pool_fixed: Tensor | None,
                     side: dict[str, Tensor], new: range, generator: torch.Generator, patch_replay: bool) -> Tensor:
        """Cross-entropy of the pseudo-features ``j`` (of classes ``labels``) of old classes; they also serve as
        negatives of the new classes' patch projector."""
        j_dev = torch.tensor(j, device=py.device)
        patch = None
        if patch_replay:
            if pool_fixed is not None:
                patch = pool_fixed[j_dev]
            else:  # drawn per step for this step's labels: an epoch's pseudo patch sets at once would not fit
                pseudo = self._pseudo_patches(labels, 1, generator)
                if self.learns_patch_alignment:
                    with torch.no_grad():
                        old_part = self.branch_scores(pseudo, side, range(new.start))[0]
                    patch = torch.cat([old_part, self.branch_scores(pseudo, side, new)[0]], dim=1)
                else:
                    patch = self.branch_scores(pseudo, side)[0]
        return F.cross_entropy(self._logits(pg[j_dev], side, patch), py[j_dev])

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
    def _pool_patch_scores(self, label: int, n_seen: int, side: dict[str, Tensor]) -> Tensor:
        """Patch scores ``[pool, n_seen]`` of class ``label``'s pool of pseudo images.

        The pool is regenerated from a per-class seed whenever it is needed (nothing large is stored). When
        no shared projector acts on the patch branch, a score once computed cannot change: it is kept, and a
        later task scores the pool against its new classes only."""
        cached = self._pool_scores.get(label) if self._frozen_patch_branch else None
        done = 0 if cached is None else cached.shape[1]
        if done >= n_seen:
            return cached[:, :n_seen]
        size = self.config.replay.pool_size
        generator = torch.Generator(device=self.device).manual_seed(self.pool_seed * 100_003 + label)
        pool = self._pseudo_patches([label], size, generator)
        extra = self._patch_score_table(pool, side, range(done, n_seen))
        scores = extra if cached is None else torch.cat([cached, extra], dim=1)
        if self._frozen_patch_branch:
            self._pool_scores[label] = scores
        return scores

    def _pool_rows(self, label: int, n: int, n_seen: int, side: dict[str, Tensor]) -> Tensor:
        """``n`` rows of class ``label``'s pool scores, taken cyclically (pairs with ``n`` fresh global draws)."""
        scores = self._pool_patch_scores(label, n_seen, side)
        return scores[torch.arange(n, device=scores.device) % scores.shape[0]]

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
            patch = torch.cat([self._pool_rows(c, per_class, n_seen, side) for c in classes])
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
        if self.patch_projectors is not None:
            state.update({f"patch.{k}": v.cpu() for k, v in self.patch_projectors.state_dict().items()})
        if self.token_offsets is not None:
            state.update({f"tokens.{j}": v.detach().cpu() for j, v in enumerate(self.token_offsets)})
        if self.pool_seed is not None:
            state["pool_seed"] = torch.tensor(self.pool_seed, dtype=torch.long)
        state.update(self.global_bank.state("bank.global"))
        state.update(self.patch_bank.state("bank.patch"))
        state.update(self.context_bank.state("bank.context"))
        return state

    def load_trainable_state(self, state: dict[str, Tensor], ctx: TaskContext) -> None:
        self._attach(ctx)
        n_adapters = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("visual.adapters."))
        while len(self.visual.adapters) < n_adapters:
            self._add_projectors(0)
        if self.patch_projectors is not None:
            n_patch = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("patch.")), default=-1)
            dim = self.prompts.shape[1]
            while len(self.patch_projectors) < n_patch:
                self.patch_projectors.append(ResidualAdapter(dim, self.config.projector.hidden_dim,
                                                             torch.Generator().manual_seed(0)).to(self.device))
            del self.patch_projectors[n_patch:]
        self.visual.load_state_dict({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")})
        if self.text is not None:
            self.text.load_state_dict({k[len("text."):]: v for k, v in state.items() if k.startswith("text.")})
        if self.patch_projectors is not None:
            self.patch_projectors.load_state_dict({k[len("patch."):]: v for k, v in state.items()
                                                   if k.startswith("patch.")})
        if self.token_offsets is not None:
            n_offsets = len([k for k in state if k.startswith("tokens.")])
            self.token_offsets = nn.ParameterList([nn.Parameter(state[f"tokens.{j}"].to(ctx.device))
                                                   for j in range(n_offsets)])
        for module in (self.visual, self.text, self.patch_projectors, self.token_offsets):
            if module is not None:
                module.requires_grad_(False).to(ctx.device)
        self.pool_seed = int(state["pool_seed"]) if "pool_seed" in state else None
        self._pool_scores = {}
        self.prototypes = {c: v.to(ctx.device) for c, v in enumerate(state["prototypes"])} if "prototypes" in state else {}
        self.task_starts = state["task_starts"].tolist() if "task_starts" in state else []
        self.n_patches = int(state["n_patches"]) if "n_patches" in state else 0
        self.task_bias = state["task_bias"].to(ctx.device) if "task_bias" in state else None
        self.global_bank.load_state(state, "bank.global", ctx.device)
        self.patch_bank.load_state(state, "bank.patch", ctx.device)
        self.context_bank.load_state(state, "bank.context", ctx.device)
        self.tasks_learned = ctx.task + 1
